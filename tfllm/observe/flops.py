"""Model FLOPs per token, the hardware's peak, and model FLOPs utilization (MFU).

FLOPs per token are counted two ways, as PaLM (Chowdhery et al. 2022, appendix B) and
Megatron-style causal accounting do:

    palm   = 6N + 12 * L * H * Q * T
    causal = 6N +  6 * L * H * Q * T   (a causal mask skips half of the attention matrix)

N counts parameters without position embeddings (rotary positions have none) and the tied
input/output embedding once; L is num_layers, H num_heads, Q the head dimension, T the
sequence length. MFU = flops_per_token * tokens_per_second / peak_flops, with the peak of all
devices of the run together.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import socket
import time

import tensorflow as tf

from tfllm.config import ModelConfig

# Dense (no sparsity) peak FLOP/s per device as TensorFlow sees it (one TPU chip, one GPU).
# The fp32 column of GPUs is TF32 on tensor cores, which TensorFlow enables by default on
# Ampere and newer; TPUs run float32 matmuls as bf16 passes at XLA's default precision, so
# their fp32 column is the bf16 peak.
PEAK_FLOPS = {
    "TPU v4": {"bf16": 275e12, "fp32": 275e12},
    "TPU v5e": {"bf16": 197e12, "fp32": 197e12},
    "TPU v5p": {"bf16": 459e12, "fp32": 459e12},
    "TPU v6e": {"bf16": 918e12, "fp32": 918e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "H100": {"bf16": 989e12, "fp32": 494.7e12},  # SXM; the PCIe card is about 25% lower
    "H200": {"bf16": 989e12, "fp32": 494.7e12},
}

# Cloud TPU VMs name their slice in TPU_ACCELERATOR_TYPE, e.g. "v5litepod-8" or "v4-32".
_TPU_PREFIXES = {
    "v4": "TPU v4",
    "v5litepod": "TPU v5e",
    "v5e": "TPU v5e",
    "v5p": "TPU v5p",
    "v6e": "TPU v6e",
}


def count_parameters(model: ModelConfig) -> int:
    """Trainable parameters of `TransformerLM(model)` that matmuls read: the tied embedding
    counted once, an untied head twice; biases, extra norms and learned positions left out."""
    d, f = model.hidden_dim, model.intermediate_dim
    gates = 1 if model.activation == "gelu" else 2
    heads = model.num_heads
    kv_heads, head_dim = model.num_key_value_heads or heads, model.head_dim or d // heads
    # QKV (H + 2 KV heads) and output projections, the MLP, and two norm scales per block.
    per_block = d * (2 * heads + 2 * kv_heads) * head_dim + (gates + 1) * d * f + 2 * d
    tables = 1 if model.tie_embeddings else 2
    return tables * model.vocabulary_size * d + model.num_layers * per_block + d


def flops_per_token(model: ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token (forward and backward): {"palm": ..., "causal": ...}."""
    dense = 6.0 * count_parameters(model)
    head_dim = model.head_dim or model.hidden_dim // model.num_heads
    attention = float(model.num_layers * model.num_heads * head_dim * seq_len)
    return {"palm": dense + 12.0 * attention, "causal": dense + 6.0 * attention}


def mfu(flops_per_token: float, tokens_per_second: float, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s as a fraction of the peak."""
    return flops_per_token * tokens_per_second / peak_flops


@dataclasses.dataclass(frozen=True)
class Peak:
    """The peak FLOP/s of one device, how many devices share the work, and where it came from."""

    per_device: float
    devices: int
    source: str

    @property
    def total(self) -> float:
        return self.per_device * self.devices

    def describe(self) -> str:
        return f"{self.per_device / 1e12:.3g} TFLOP/s x {self.devices} device(s) ({self.source})"


def precision_column(precision: str) -> str:
    """The peak-table column for a Keras dtype policy name: mixed_* runs matmuls in 16 bits."""
    return (
        "bf16" if precision.startswith("mixed") or precision in ("bfloat16", "float16") else "fp32"
    )


def accelerator_name() -> str | None:
    """The row of PEAK_FLOPS for this machine's accelerator, or None (CPU or unknown)."""
    accelerator = os.environ.get("TPU_ACCELERATOR_TYPE", "")
    if accelerator and tf.config.list_logical_devices("TPU"):
        return _TPU_PREFIXES.get(accelerator.split("-")[0])
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "")
        return next((row for row in PEAK_FLOPS if row in name), None)
    return None


def matmul_probe(n: int = 1024, repeats: int = 10, jit_compile: bool = True) -> float:
    """Measured float32 FLOP/s of an (n, n) matmul (XLA by default): the best of `repeats`."""
    a = tf.random.stateless_normal((n, n), seed=[1, 2])
    b = tf.random.stateless_normal((n, n), seed=[3, 4])
    chain = 8  # several dependent matmuls per call, so the call overhead does not dominate
    matmuls = tf.function(
        lambda a, b: tf.reduce_sum(
            tf.foldl(lambda x, _: tf.matmul(x, b) * 1e-3, tf.range(chain), initializer=a)
        ),
        jit_compile=jit_compile,
    )
    float(matmuls(a, b))  # compile
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        float(matmuls(a, b))
        best = min(best, time.perf_counter() - started)
    return 2.0 * n**3 * chain / best


def measured_cpu_peak(cache_dir: str | None = None) -> float:
    """The CPU matmul probe, cached per machine: it measures the host, not the run.

    On a shared machine the probe can catch a busy moment; delete the file to measure again.
    """
    directory = pathlib.Path(cache_dir or pathlib.Path.home() / ".cache" / "tfllm")
    path = directory / f"peak-{socket.gethostname()}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["float32_flops"])
    flops = matmul_probe()
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"float32_flops": flops, "probe": "xla matmul n=1024"}))
    return flops


def find_peak(
    configured: float, precision: str, devices: int, cache_dir: str | None = None
) -> Peak:
    """`runtime.peak_flops` when set, else the table row of the accelerator, else the probe."""
    if configured > 0:
        return Peak(configured, devices, "runtime.peak_flops")
    name, column = accelerator_name(), precision_column(precision)
    if name is not None:
        return Peak(PEAK_FLOPS[name][column], devices, f"{name} {column} table")
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        # An accelerator missing from the table: a CPU probe would make MFU meaningless.
        return Peak(0.0, devices, "unknown accelerator: set runtime.peak_flops for MFU")
    # Logical CPU devices share the same cores: the probe already measures all of them.
    return Peak(measured_cpu_peak(cache_dir), 1, "measured: float32 XLA matmul probe")
