"""Importing a ~500M-parameter bfloat16 Llama-shaped checkpoint: seconds and peak memory.

    python -m benchmarks convert [--rounds 3] [--quick]

Writes a synthetic Hugging Face directory once (config.json through tfllm's own exporter of the
config, random bfloat16 tensors in ~500 MB `model-*.safetensors` shards with the index), then
runs the user's command `python -m tfllm.convert --from_hf DIR --workdir W` as a subprocess,
round after round, each time into a fresh workdir. Per round: wall seconds and the child's peak
resident set (`wait4`'s ru_maxrss, the kernel's VmHWM of that process), reported relative to
the checkpoint's bytes and to the float32 model tfllm holds (4 bytes per parameter). The idle
footprint of the same interpreter with TensorFlow and tfllm imported is measured in the same
way and reported alongside, so the import's own share can be read off. `--quick` imports the
5M-parameter Llama shape of the training comparison instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

from benchmarks import shapes
from benchmarks.common import summarize

SHAPE = shapes.CONVERT
SHARD_BYTES = 500 << 20


def hf_shapes(shape: dict) -> dict[str, tuple]:
    d, f, v = shape["hidden_dim"], shape["intermediate_dim"], shape["vocabulary_size"]
    k = d // shape["num_heads"]
    kv = shape["num_key_value_heads"] * k
    out = {"model.embed_tokens.weight": (v, d), "lm_head.weight": (v, d), "model.norm.weight": (d,)}
    for i in range(shape["num_layers"]):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "input_layernorm.weight": (d,),
                p + "post_attention_layernorm.weight": (d,),
                p + "self_attn.q_proj.weight": (d, d),
                p + "self_attn.k_proj.weight": (kv, d),
                p + "self_attn.v_proj.weight": (kv, d),
                p + "self_attn.o_proj.weight": (d, d),
                p + "mlp.gate_proj.weight": (f, d),
                p + "mlp.up_proj.weight": (f, d),
                p + "mlp.down_proj.weight": (d, f),
            }
        )
    return out


def write_checkpoint(directory: str, shape: dict) -> int:
    """Writes the synthetic HF directory; returns the tensors' bytes."""
    from safetensors.numpy import save_file

    from tfllm.config import ModelConfig
    from tfllm.hub import hf_config

    os.makedirs(directory, exist_ok=True)
    config = hf_config.from_model_config(
        "llama", vars(ModelConfig(**shape)), {"torch_dtype": "bfloat16"}
    )
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    rng = np.random.default_rng(0)
    shards, shard, size, total = [], {}, 0, 0
    for name, tensor_shape in hf_shapes(shape).items():
        tensor = (rng.standard_normal(tensor_shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
        if shard and size + tensor.nbytes > SHARD_BYTES:
            shards.append(shard)
            shard, size = {}, 0
        shard[name] = tensor
        size += tensor.nbytes
        total += tensor.nbytes
    shards.append(shard)
    weight_map = {}
    for i, tensors in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, os.path.join(directory, file), {"format": "pt"})
        weight_map.update({name: file for name in tensors})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    return total


def run(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS bytes, stderr tail) of `python argv` in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    stderr = child.stderr.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {stderr.strip()[-500:]}")
    return seconds, usage.ru_maxrss * 1024, stderr


def case(rounds: int, quick: bool) -> dict:
    shape = shapes.model_keys(shapes.LLAMA) if quick else SHAPE
    root = tempfile.mkdtemp(prefix="convert-bench-")
    try:
        source = os.path.join(root, "hf")
        started = time.perf_counter()
        write_checkpoint(source, shape)
        print(f"wrote {source} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        checkpoint = sum(
            os.path.getsize(os.path.join(source, f))
            for f in os.listdir(source)
            if f.endswith(".safetensors")
        )
        params = sum(int(np.prod(s)) for s in hf_shapes(shape).values())
        idle = "import tensorflow, tfllm.hub.convert, tfllm.model.lm"
        rows = {"convert": [], "idle": []}
        for i in range(rounds):
            workdir = os.path.join(root, f"run-{i}")
            command = ["-m", "tfllm.convert", "--from_hf", source, "--workdir", workdir]
            rows["convert"].append(run(command)[:2])
            rows["idle"].append(run(["-c", idle])[:2])
            shutil.rmtree(workdir)
            print(f"round {i + 1}: {rows['convert'][-1]}, idle {rows['idle'][-1]}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peaks = summarize([p / 1e9 for _, p in rows["convert"]])
    idle_gb = summarize([p / 1e9 for _, p in rows["idle"]])["median"]
    model_gb = 4 * params / 1e9
    figures = {
        "tfllm.convert --from_hf": {
            "seconds": summarize([s for s, _ in rows["convert"]]),
            "peak RSS GB": peaks,
            "/ checkpoint": peaks["median"] * 1e9 / checkpoint,
            "/ float32 model": peaks["median"] / model_gb,
            "(peak - idle) / float32 model": (peaks["median"] - idle_gb) / model_gb,
        },
        "idle interpreter (TensorFlow and tfllm imported)": {"peak RSS GB": idle_gb},
    }
    notes = [f"{params:,} parameters, {checkpoint / 1e9:.2f} GB of bfloat16 safetensors"]
    return {"figures": figures, "notes": notes}
