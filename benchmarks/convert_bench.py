"""Importing a ~500M-parameter bfloat16 Llama-shaped checkpoint: seconds and peak memory.

    PYTHONPATH=. python -m benchmarks.convert_bench [--rounds 3] [--root DIR] [--layers 16]

Writes a synthetic Hugging Face directory once (config.json through tfllm's own exporter of the
config, random bfloat16 tensors in ~500 MB `model-*.safetensors` shards with the index), then
runs the user's command `python -m tfllm.convert --from_hf DIR --workdir W` as a subprocess,
round after round, each time into a fresh workdir. Per round: wall seconds and the child's peak
resident set (`wait4`'s ru_maxrss, the kernel's VmHWM of that process), reported relative to
the checkpoint's bytes and to the float32 model tfllm holds (4 bytes per parameter). The idle
footprint of the same interpreter with TensorFlow and tfllm imported is measured in the same
way and reported alongside, so the import's own share can be read off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import ml_dtypes
import numpy as np

from benchmarks.common import machine, versions

# Llama 3.2-style GQA shape with ~0.5B parameters (untied head).
SHAPE = {
    "vocabulary_size": 32000,
    "num_layers": 16,
    "num_heads": 12,
    "num_key_value_heads": 4,
    "hidden_dim": 1536,
    "intermediate_dim": 4096,
    "max_sequence_length": 2048,
    "tie_embeddings": False,
}
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", default=None, help="where the checkpoint is written (kept)")
    parser.add_argument("--layers", type=int, default=SHAPE["num_layers"])
    args = parser.parse_args()
    shape = {**SHAPE, "num_layers": args.layers}
    root = args.root or tempfile.mkdtemp(prefix="convert-bench-")
    source = os.path.join(root, "hf")
    load_before = os.getloadavg()
    if not os.path.exists(os.path.join(source, "config.json")):
        started = time.perf_counter()
        write_checkpoint(source, shape)
        print(f"wrote {source} in {time.perf_counter() - started:.1f}s", flush=True)
    checkpoint = sum(
        os.path.getsize(os.path.join(source, f))
        for f in os.listdir(source)
        if f.endswith(".safetensors")
    )
    params = sum(int(np.prod(s)) for s in hf_shapes(shape).values())
    idle = "import tensorflow, tfllm.hub.convert, tfllm.model.lm"
    rows = {"convert": [], "idle": []}
    for i in range(args.rounds):
        workdir = os.path.join(root, f"run-{i}")
        shutil.rmtree(workdir, ignore_errors=True)
        command = ["-m", "tfllm.convert", "--from_hf", source, "--workdir", workdir]
        rows["convert"].append(run(command)[:2])
        rows["idle"].append(run(["-c", idle])[:2])
        shutil.rmtree(workdir)
        print(f"round {i + 1}: convert {rows['convert'][-1]}, idle {rows['idle'][-1]}", flush=True)
    seconds = [s for s, _ in rows["convert"]]
    peaks = [p for _, p in rows["convert"]]
    idles = [p for _, p in rows["idle"]]
    result = {
        "parameters": params,
        "checkpoint_bytes": checkpoint,
        "float32_model_bytes": 4 * params,
        "seconds": {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)},
        "peak_rss_bytes": {
            "median": statistics.median(peaks),
            "min": min(peaks),
            "max": max(peaks),
        },
        "idle_rss_bytes": statistics.median(idles),
        "peak_over_checkpoint": statistics.median(peaks) / checkpoint,
        "peak_over_float32_model": statistics.median(peaks) / (4 * params),
        "peak_minus_idle_over_float32_model": (statistics.median(peaks) - statistics.median(idles))
        / (4 * params),
        "machine": {**machine(), "load_average_before": list(load_before)},
        "versions": versions(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
