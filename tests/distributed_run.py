"""Trains a tiny model for a few steps on fixed in-memory data under one strategy, in its own
process, and writes the trainable variables, losses and trace counts to `--out`.

Its own process because logical CPU devices (mirrored) and TF_CONFIG (multiworker) must be set
before TensorFlow starts its runtime. Used by tests/test_training_distribute.py:

    python tests/distributed_run.py --out run.npz --set runtime.strategy=mirrored [--set ...]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np
import tensorflow as tf
from conftest import shape_overrides

from tfllm.config import load_config
from tfllm.model import lora
from tfllm.model.lm import build_model
from tfllm.training import distribute
from tfllm.training.optim import completed_steps, make_optimizer
from tfllm.training.steps import Steps, evaluate
from tfllm.validation import LORA_TARGETS

# conftest's shape over 64 token ids and 16 positions: the in-memory windows count up mod 64.
TINY = [
    *shape_overrides(vocabulary_size=64, max_sequence_length=16),
    "data.seq_len=16",
    "train.global_batch_size=8",
    "train.learning_rate=0.001",
    "train.warmup_steps=0",
    "train.steps=100",
]


def windows(cfg, num_batches: int, seed: int) -> np.ndarray:
    """(num_batches * B, T + 1) token windows with learnable structure: runs of counting up."""
    rng = np.random.default_rng(seed)
    rows = num_batches * cfg.train.global_batch_size
    starts = rng.integers(0, cfg.model.vocabulary_size, size=(rows, 1))
    return ((starts + np.arange(cfg.data.seq_len + 1)) % cfg.model.vocabulary_size).astype("int32")


def train_tiny(
    overrides: list[str],
    loops: int = 2,
    loop_steps: int = 2,
    distinct_batches: int = 0,
    lora_rank: int = 0,
) -> tuple[dict[str, np.ndarray], dict, Steps]:
    """Trains `loops` host loops of `loop_steps` steps; returns (variables, summary, steps).
    `lora_rank` > 0 trains LoRA adapters on every projection of the (random, frozen) model."""
    cfg = load_config([], [*TINY, *overrides])
    strategy = distribute.make_strategy(cfg.runtime)
    tf.keras.utils.set_random_seed(cfg.train.seed)
    with strategy.scope():
        model = build_model(cfg.model, cfg.train.precision, cfg.train.remat)
        if lora_rank:
            targets = ",".join(LORA_TARGETS)
            lora.attach(model, replace(cfg.train, lora_rank=lora_rank, lora_targets=targets))
        optimizer = make_optimizer(cfg.train, lora.trainable_variables(model))
    steps = Steps(cfg, strategy, model, optimizer)

    batch = cfg.train.global_batch_size
    data = windows(cfg, distinct_batches or loops * loop_steps, cfg.train.seed)

    def batches(repeat: bool) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices(data)
        ds = ds.repeat() if repeat else ds
        return ds.batch(batch, drop_remainder=True).map(lambda w: (w[:, :-1], w[:, 1:]))

    iterator = iter(distribute.global_batches(strategy, lambda: batches(repeat=True), batch))
    losses, seconds = [], []
    for _ in range(loops):
        started = time.perf_counter()
        loss = steps.train_loop(iterator, tf.constant(loop_steps))["loss"]
        losses.append(float(loss))
        seconds.append(time.perf_counter() - started)
    eval_data = distribute.global_batches(strategy, lambda: batches(repeat=False), batch)
    summary = {
        "losses": losses,
        "eval_loss": evaluate(steps, eval_data),
        "seconds": seconds,
        "traces": dict(steps.traces),
        "replicas": strategy.num_replicas_in_sync,
        "steps": completed_steps(optimizer),
        "skipped_steps": completed_steps(optimizer) - int(optimizer.iterations.numpy()),
        "tokens_per_step": batch * cfg.data.seq_len,
    }
    return {v.path: v.numpy() for v in lora.trainable_variables(model)}, summary, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--loops", type=int, default=2, help="host loops to run")
    parser.add_argument("--loop_steps", type=int, default=2, help="steps per host loop")
    parser.add_argument("--distinct_batches", type=int, default=0, help="0: one per step")
    parser.add_argument("--lora_rank", type=int, default=0, help="train LoRA adapters only")
    args = parser.parse_args()
    variables, summary, _ = train_tiny(
        args.overrides, args.loops, args.loop_steps, args.distinct_batches, args.lora_rank
    )
    np.savez(args.out, **variables)
    with open(args.out + ".json", "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main()
