"""B0 (matmul peak), B3 (input pipeline) and B4 (generation), each in its own process.

    python -m benchmarks.sections {peak,pipeline,generation} [--quick]

B3 and B4 reuse `benchmarks.data_bench` and `benchmarks.generate_bench`; this module only
picks their shapes for the harness and returns summaries instead of printing.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import tensorflow as tf

from benchmarks import data_bench, generate_bench
from benchmarks.common import emit, gpt2_backbone, never_end, summarize
from benchmarks.train_bench import shape_of
from tfllm.config import load_config
from tfllm.corpus import prepare
from tfllm.data import verify
from tfllm.model.lm import build_model
from tfllm.observe import flops
from tfllm.serve import generate

DATA_ROOT = pathlib.Path.home() / ".cache" / "tfllm" / "bench-data"


def peak(quick: bool) -> dict:
    """float32 (n, n) matmul FLOP/s, XLA and plain graph alternately."""
    rounds, repeats = (2, 3) if quick else (5, 10)
    runs = {"xla": [], "no_xla": []}
    for _ in range(rounds):
        for name in runs:
            gflops = flops.matmul_probe(repeats=repeats, jit_compile=name == "xla") / 1e9
            runs[name].append(gflops)
    return {f"{name}_gflops": summarize(values) for name, values in runs.items()}


def pipeline(quick: bool) -> dict:
    """Reader alone vs the step's consumption; the step fed from shards vs from memory."""
    rounds, steps, batches = (2, 5, 50) if quick else (3, 20, 300)
    cfg = load_config(
        [],
        [*data_bench.SMALL, "data.source=stdlib", "data.tokenizer_sample_mb=2"]
        + [f"data.root={DATA_ROOT}"],
    )
    manifest = prepare.ensure_prepared(cfg)
    shards = verify.check_split(prepare.data_dir(cfg), manifest, "train", "size", "error")
    reader = [data_bench.bench_reader(shards, cfg, batches) for _ in range(rounds)]
    rates = data_bench.bench_training(cfg, shards, rounds, steps)
    return {
        "reader_tokens_per_second": summarize(reader),
        "memory_tokens_per_second": summarize(rates["memory"]),
        "shards_tokens_per_second": summarize(rates["shards"]),
    }


def keras_hub_generate(shape: dict, prompt: np.ndarray, new_tokens: int):
    """keras-hub GPT2CausalLM.generate (greedy) on the same shapes, as a zero-arg callable."""
    import keras_hub

    backbone = gpt2_backbone(shape, 2 * shape["seq_len"])
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    width = prompt.shape[1] + new_tokens  # generation fills the padding after the prompt
    inputs = {
        "token_ids": np.pad(prompt, ((0, 0), (0, new_tokens))),
        "padding_mask": np.arange(width)[None, :] < prompt.shape[1],
    }
    return lambda: lm.generate(inputs, stop_token_ids=None)


def generation(quick: bool) -> dict:
    """ms/token at 128 new tokens, batch 1, greedy: first call and steady state."""
    repeats, new_tokens = (2, 128) if quick else (5, 128)
    shape = shape_of("small")
    cfg = load_config(
        [],
        [
            f"model.{key}={shape[key]}"
            for key in ("num_layers", "hidden_dim", "num_heads", "vocabulary_size")
        ]
        + [f"model.intermediate_dim={shape['intermediate_dim']}", "model.activation=gelu"]
        + [f"model.max_sequence_length={2 * shape['seq_len']}"],
    )
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    never_end(model, generate.EOS_ID)
    prompt = np.random.default_rng(0).integers(3, shape["vocabulary_size"], (1, 16), np.int32)
    ids, start, n = tf.constant(prompt), tf.zeros([1], tf.int32), tf.constant(new_tokens)
    greedy = (tf.constant(0.0), tf.constant(0), tf.constant(1.0), tf.constant(0, tf.int64))
    cached = tf.function(generate.decode)
    cached_xla = tf.function(generate.decode, jit_compile=True)
    uncached = tf.function(generate_bench.uncached_decode)
    contenders = {
        "tfllm cached (graph)": lambda: cached(model, ids, start, n, *greedy)[0].numpy(),
        "tfllm cached (XLA)": lambda: cached_xla(model, ids, start, n, *greedy)[0].numpy(),
        "tfllm uncached (graph)": lambda: uncached(model, ids, n).numpy(),
        "keras-hub GPT2CausalLM.generate": keras_hub_generate(shape, prompt, new_tokens),
    }
    first = {name: 1000 * generate_bench.timed(fn) / new_tokens for name, fn in contenders.items()}
    steady: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            steady[name].append(1000 * generate_bench.timed(fn) / new_tokens)
    return {
        "new_tokens": new_tokens,
        "first_call_ms_per_token": first,
        "ms_per_token": {name: summarize(values) for name, values in steady.items()},
    }


SECTIONS = {"peak": peak, "pipeline": pipeline, "generation": generation}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=sorted(SECTIONS))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    result = SECTIONS[args.section](args.quick)
    emit({**result, "seconds": time.perf_counter() - started})
