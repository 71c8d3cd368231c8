"""LoRA training speed and memory: tfllm LoRA vs tfllm full fine-tuning on the same model and
batch, and vs keras-hub's `enable_lora` + `fit` on the same Llama-shaped model.

    python -m benchmarks.lora_bench [--rounds 3] [--steps 20]      # the report (medians, spread)
    python -m benchmarks.lora_bench --worker CONTENDER STEPS        # one measurement

Each measurement is a fresh process (its own peak RSS); rounds alternate the contenders. Shape:
Llama layout (SwiGLU, RMSNorm, rotary, untied head in keras-hub, tied in tfllm), 4 layers,
hidden 256, 4 heads, intermediate 704, vocabulary 4096, 16 x 128 tokens per step, float32,
LoRA rank 8 on the query and value projections (keras-hub's `enable_lora` targets), AdamW.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

from benchmarks.common import emit, keras_hub_fit, machine, run_worker, summarize, versions

SHAPE = dict(num_layers=4, hidden_dim=256, num_heads=4, intermediate_dim=704, vocab=4096)
BATCH, SEQ, RANK = 16, 128, 8


def _windows() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, SHAPE["vocab"], size=(8, BATCH, SEQ + 1), dtype=np.int32)


def run_tfllm(steps: int, lora_rank: int):
    import dataclasses

    import tensorflow as tf

    from tfllm.config import load_config
    from tfllm.model import lora
    from tfllm.model.lm import build_model
    from tfllm.training.optim import make_optimizer
    from tfllm.training.steps import Steps

    s = SHAPE
    cfg = load_config(
        [],
        [
            f"model.num_layers={s['num_layers']}",
            f"model.hidden_dim={s['hidden_dim']}",
            f"model.num_heads={s['num_heads']}",
            f"model.intermediate_dim={s['intermediate_dim']}",
            f"model.vocabulary_size={s['vocab']}",
            f"model.max_sequence_length={SEQ}",
            f"data.seq_len={SEQ}",
            f"train.global_batch_size={BATCH}",
            "train.warmup_steps=0",
        ],
    )
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    if lora_rank:
        lora.attach(model, dataclasses.replace(cfg.train, lora_rank=lora_rank, lora_targets="q,v"))
    optimizer = make_optimizer(cfg.train, lora.trainable_variables(model))
    steps_fn = Steps(cfg, tf.distribute.get_strategy(), model, optimizer)
    ds = tf.data.Dataset.from_tensor_slices(_windows()).repeat()
    iterator = iter(ds.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(2))
    return lambda n: float(steps_fn.train_loop(iterator, tf.constant(n))["loss"])


def run_keras_hub(steps: int):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    s = SHAPE
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=s["vocab"],
        num_layers=s["num_layers"],
        num_query_heads=s["num_heads"],
        hidden_dim=s["hidden_dim"],
        intermediate_dim=s["intermediate_dim"],
        num_key_value_heads=s["num_heads"],
    )
    backbone.enable_lora(RANK)
    return keras_hub_fit(backbone, _windows())


CONTENDERS = {
    "tfllm-lora": lambda steps: run_tfllm(steps, RANK),
    "tfllm-full": lambda steps: run_tfllm(steps, 0),
    "keras-hub-lora": run_keras_hub,
}


def measure(contender: str, steps: int) -> dict:
    run = CONTENDERS[contender](steps)
    run(1)  # traces and compiles
    run(1)
    started = time.perf_counter()
    run(steps)
    seconds = time.perf_counter() - started
    return {
        "contender": contender,
        "tokens_per_second": steps * BATCH * SEQ / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("CONTENDER", "STEPS"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.worker:
        emit(measure(args.worker[0], int(args.worker[1])))
        return
    runs = {name: [] for name in CONTENDERS}
    for _ in range(args.rounds):  # alternate: load drifts hit every contender alike
        for name in CONTENDERS:
            runs[name].append(
                run_worker("benchmarks.lora_bench", ["--worker", name, str(args.steps)])
            )
    report = {"machine": machine(), "versions": versions(), "shape": SHAPE, "contenders": {}}
    for name, results in runs.items():
        errors = [r["error"] for r in results if "error" in r]
        report["contenders"][name] = {
            "tokens_per_second": summarize(
                [r["tokens_per_second"] for r in results if "error" not in r]
            ),
            "peak_rss_mb": summarize([r["peak_rss_mb"] for r in results if "error" not in r]),
            "errors": errors,
        }
    c = report["contenders"]
    medians = {k: v["tokens_per_second"]["median"] for k, v in c.items()}
    if medians["tfllm-lora"] and medians["keras-hub-lora"]:
        report["tfllm_lora_vs_keras_hub_lora"] = medians["tfllm-lora"] / medians["keras-hub-lora"]
    if medians["tfllm-lora"] and medians["tfllm-full"]:
        report["tfllm_lora_vs_full"] = medians["tfllm-lora"] / medians["tfllm-full"]
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
