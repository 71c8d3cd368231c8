"""LoRA training speed and memory on the Llama shape: tfllm LoRA vs tfllm full fine-tuning on
the same model and batch, and vs keras-hub's `enable_lora` + `fit` on the same shape.

    python -m benchmarks lora [--rounds 3] [--quick]

Each measurement is a fresh process (its own peak RSS); rounds alternate the contenders. Shape
`shapes.LLAMA` (GQA 4 query / 2 key-value heads, RMSNorm, SwiGLU 688, rotary, untied head),
4 layers, hidden 256, vocabulary 4096, 16 x 128 tokens per step, float32, LoRA rank 8 on the
query and value projections (keras-hub's `enable_lora` targets), AdamW. keras-hub's `fit` is
timed per step (`common.keras_hub_fit`).
"""

from __future__ import annotations

import sys
import time

from benchmarks import shapes
from benchmarks.common import emit, keras_hub_fit, paired_training, run_worker, summarize
from benchmarks.train_bench import measure

STEPS, QUICK_STEPS, CHUNKS = 10, 2, 3


def run_tfllm(steps: int, lora_rank: int):
    import dataclasses

    import tensorflow as tf

    from tfllm.config import load_config
    from tfllm.model import lora
    from tfllm.model.lm import build_model
    from tfllm.training.optim import make_optimizer
    from tfllm.training.steps import Steps

    cfg = load_config([], shapes.overrides(shapes.LLAMA))
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    if lora_rank:
        lora.attach(model, dataclasses.replace(cfg.train, lora_rank=lora_rank, lora_targets="q,v"))
    optimizer = make_optimizer(cfg.train, lora.trainable_variables(model))
    steps_fn = Steps(cfg, tf.distribute.get_strategy(), model, optimizer)
    ds = tf.data.Dataset.from_tensor_slices(shapes.token_batches(shapes.LLAMA)).repeat()
    iterator = iter(ds.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(2))
    return (
        lambda: float(steps_fn.train_loop(iterator, tf.constant(1))["loss"]),
        lambda: float(steps_fn.train_loop(iterator, tf.constant(steps))["loss"]),
    )


def run_keras_hub(steps: int):
    backbone = shapes.keras_hub_llama()
    backbone.enable_lora(shapes.LORA_RANK)
    fit_steps = keras_hub_fit(backbone, shapes.token_batches(shapes.LLAMA))
    return lambda: fit_steps(1), lambda: fit_steps(steps)


CONTENDERS = {
    "tfllm-lora": lambda steps: run_tfllm(steps, shapes.LORA_RANK),
    "tfllm-full": lambda steps: run_tfllm(steps, 0),
    "keras-hub-lora": run_keras_hub,
}


def worker(contender: str, steps: int, chunks: int) -> dict:
    started = time.perf_counter()
    first, many = CONTENDERS[contender](steps)
    tokens = shapes.tokens_per_step(shapes.LLAMA)
    return {"contender": contender, **measure(first, many, tokens, steps, chunks, started)}


def case(rounds: int, quick: bool) -> dict:
    steps = QUICK_STEPS if quick else STEPS
    names = list(CONTENDERS)
    runs = {name: [] for name in names}
    for r in range(rounds):  # alternate: load drifts hit every contender alike
        for name in names if r % 2 == 0 else reversed(names):
            result = run_worker("benchmarks.lora_bench", [name, str(steps), str(CHUNKS)])
            print(f"round {r + 1} {name}: {result}", file=sys.stderr, flush=True)
            runs[name].append(result)
    figures, medians = {}, {}
    for name, results in runs.items():
        ok = [r for r in results if "error" not in r]
        rates = [r["tokens_per_second"] for r in ok]
        if len(ok) == 1:  # one round: its chunks give the spread
            rates = ok[0]["chunks_tokens_per_second"]
        figures[name] = {
            "tokens/s": summarize(rates),
            "peak RSS MB": summarize([r["peak_rss_mb"] for r in ok])["median"],
            "errors": "; ".join(r["error"] for r in results if "error" in r)[:120] or None,
        }
        medians[name] = figures[name]["tokens/s"]["median"]
    notes = []
    if medians["tfllm-lora"] and medians["keras-hub-lora"]:
        notes.append(f"tfllm LoRA / keras-hub LoRA: "
                     f"{medians['tfllm-lora'] / medians['keras-hub-lora']:.3f}")  # fmt: skip
    if medians["tfllm-lora"] and medians["tfllm-full"]:
        lora_vs_full = medians["tfllm-lora"] / medians["tfllm-full"]
        notes.append(f"tfllm LoRA / tfllm full: {lora_vs_full:.3f}")
    return {"figures": figures, "notes": notes, "runs": runs}


def paired_case(rounds: int, quick: bool) -> dict:
    """The three contenders in one process, timed alternately chunk by chunk."""
    steps = QUICK_STEPS if quick else STEPS
    builders = {name: lambda name=name: CONTENDERS[name](steps) for name in CONTENDERS}
    tokens = shapes.tokens_per_step(shapes.LLAMA)
    return {"figures": paired_training(builders, "tfllm-lora", rounds, steps, tokens)}


if __name__ == "__main__":  # a worker: python -m benchmarks.lora_bench CONTENDER STEPS CHUNKS
    emit(worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
