"""Data pipeline benchmark: can the data keep up with training?

    python -m benchmarks.data_bench [--rounds 3] [--steps 20] [--set section.key=value ...]

Measures, on one config (default: the built-in stdlib corpus at the small shapes: 4 layers,
hidden 256, 4 heads, intermediate 1024, vocabulary 4096, seq_len 128, batch 16):
    prepare   MB of text per second, cleaning + tokenizer training + tokenize + pack + write
    reader    tokens per second of the tf.data reader alone (decoded batches, nothing else)
    training  tokens per second of the training step fed from memory (one batch, repeated)
    shards    tokens per second of the same training step fed by the reader
and prints reader / training (the headroom; the target is >= 10) and shards / memory (the
reader's cost to training; the target is >= 0.97). Contenders alternate, medians are reported:
this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import tensorflow as tf

from tfllm.config import load_config
from tfllm.corpus import prepare
from tfllm.data import reader, verify
from tfllm.model.lm import build_model
from tfllm.training.optim import make_optimizer
from tfllm.training.steps import Steps

SMALL = [
    "model.num_layers=4",
    "model.hidden_dim=256",
    "model.num_heads=4",
    "model.intermediate_dim=1024",
    "model.vocabulary_size=4096",
    "data.seq_len=128",
    "train.global_batch_size=16",
]


def bench_reader(shards, cfg, batches: int) -> float:
    ds = reader.train_dataset(shards, cfg.train.global_batch_size, 0, cfg.data.shuffle_buffer, 1000)
    iterator = iter(ds)
    next(iterator)  # start-up (file opening, first block) is not throughput
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (
        batches * cfg.train.global_batch_size * cfg.data.seq_len / (time.perf_counter() - started)
    )


def _skip_through_shuffle(shards, cfg, start_step: int) -> tf.data.Dataset:
    """The reader this one replaced: a seeded shuffle, then ds.skip(start_step) batches."""
    files = tf.data.Dataset.from_tensor_slices(shards.paths).shuffle(len(shards.paths), seed=0)
    ds = files.repeat().interleave(
        tf.data.TFRecordDataset, cycle_length=4, num_parallel_calls=4, deterministic=True
    )
    ds = ds.shuffle(cfg.data.shuffle_buffer, seed=1).batch(cfg.train.global_batch_size)
    return ds.skip(start_step)


def bench_resume(shards, cfg) -> None:
    """Seconds to the first batch after a restart at step k: arithmetic skip vs ds.skip(k)."""
    batch, block = cfg.train.global_batch_size, cfg.data.shuffle_buffer
    for step in (0, 10**3, 10**6, 10**9):
        started = time.perf_counter()
        next(iter(reader.train_dataset(shards, batch, 0, block, step)))
        print(f"resume at step {step:>13,}: first batch after {time.perf_counter() - started:.2f}s")
    for step in (0, 2000):
        started = time.perf_counter()
        next(iter(_skip_through_shuffle(shards, cfg, step)))
        seconds = time.perf_counter() - started
        print(f"old ds.skip({step}) through the shuffle: first batch after {seconds:.2f}s")
        if step:  # a week-long run at this config's shapes is about 1e6 steps
            print(f"  -> about {seconds / step * 1e6 / 60:.0f} minutes at step 1,000,000")


def bench_training(cfg, shards, rounds: int, steps: int) -> dict[str, list[float]]:
    strategy = tf.distribute.get_strategy()
    model = build_model(cfg.model)
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    train_steps = Steps(cfg, strategy, model, optimizer)
    batch = cfg.train.global_batch_size

    def reader(ctx):
        return reader.train_dataset(shards, batch, 0, cfg.data.shuffle_buffer, 0, ctx)

    first = next(iter(reader.train_dataset(shards, batch, 0, cfg.data.shuffle_buffer)))
    feeds = {
        "memory": iter(
            strategy.distribute_datasets_from_function(
                lambda ctx: tf.data.Dataset.from_tensors(first).repeat()
            )
        ),
        "shards": iter(strategy.distribute_datasets_from_function(reader)),
    }
    for iterator in feeds.values():  # compile, warm the reader
        float(train_steps.train_loop(iterator, tf.constant(2))["loss"])
    rates: dict[str, list[float]] = {name: [] for name in feeds}
    for _ in range(rounds):
        for name, iterator in feeds.items():
            started = time.perf_counter()
            float(train_steps.train_loop(iterator, tf.constant(steps))["loss"])
            elapsed = time.perf_counter() - started
            rates[name].append(steps * batch * cfg.data.seq_len / elapsed)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("--batches", type=int, default=300, help="reader batches per round")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="data_bench_")
    cfg = load_config(
        [],
        [*SMALL, "data.source=stdlib", "data.tokenizer_sample_mb=2", f"data.root={root}"]
        + args.overrides,
    )
    timings: dict[str, float] = {}
    manifest = prepare.prepare(cfg, timings=timings)
    megabytes = manifest["cleaning"]["bytes_read"] / 1e6
    total = sum(timings.values())
    print(
        f"prepare: {megabytes:.1f} MB of text in {total:.1f}s = {megabytes / total:.2f} MB/s; "
        f"read+clean {megabytes / timings['read']:.1f} MB/s, tokenizer training "
        f"{timings['tokenizer']:.1f}s (on data.tokenizer_sample_mb), tokenize+pack+write "
        f"{megabytes / timings['pack']:.2f} MB/s"
    )
    shards = verify.check_split(prepare.data_dir(cfg), manifest, "train", "sha256", "error")
    bench_resume(shards, cfg)
    readers = [bench_reader(shards, cfg, args.batches) for _ in range(args.rounds)]
    rates = bench_training(cfg, shards, args.rounds, args.steps)
    reader, memory, fed = (
        statistics.median(v) for v in (readers, rates["memory"], rates["shards"])
    )
    print(
        f"reader:   {reader:12,.0f} tokens/s  (rounds: {', '.join(f'{r:,.0f}' for r in readers)})"
    )
    print(f"training: {memory:12,.0f} tokens/s from memory  (rounds: {rates['memory']})")
    print(f"training: {fed:12,.0f} tokens/s from shards  (rounds: {rates['shards']})")
    print(f"reader / training consumption = {reader / memory:.1f}x (target >= 10)")
    print(f"training from shards / from memory = {fed / memory:.3f} (target >= 0.97)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
