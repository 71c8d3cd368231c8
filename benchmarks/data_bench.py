"""Data pipeline benchmark: can the data keep up with training?

    python -m benchmarks data [--rounds 3] [--quick]

Measures, on one config (default: the built-in stdlib corpus at the small shapes: 4 layers,
hidden 256, 4 heads, intermediate 1024, vocabulary 4096, seq_len 128, batch 16):
    prepare   MB of text per second, cleaning + tokenizer training + tokenize + pack + write
    reader    tokens per second of the tf.data reader alone (decoded batches, nothing else)
    training  tokens per second of the training step fed from memory (one batch, repeated)
    shards    tokens per second of the same training step fed by the reader
and records reader / training (the headroom; the target is >= 10) and shards / memory (the
reader's cost to training; the target is >= 0.97). Contenders alternate, medians are reported:
this machine is shared and noisy. `--quick` reuses a prepared corpus under
~/.cache/tfllm/bench-data and skips the prepare and resume timings.
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import tensorflow as tf

from benchmarks import shapes
from benchmarks.common import ratio, summarize
from tfllm.config import load_config
from tfllm.corpus import prepare
from tfllm.data import reader, verify
from tfllm.model.lm import build_model
from tfllm.training.optim import make_optimizer
from tfllm.training.steps import Steps

SMALL = shapes.overrides(shapes.gpt("small"))
CACHE = pathlib.Path.home() / ".cache" / "tfllm" / "bench-data"


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


def bench_resume(shards, cfg) -> dict:
    """Seconds to the first batch after a restart at step k: arithmetic skip vs ds.skip(k)."""
    batch, block = cfg.train.global_batch_size, cfg.data.shuffle_buffer
    rows = {}
    for step in (0, 10**3, 10**6, 10**9):
        started = time.perf_counter()
        next(iter(reader.train_dataset(shards, batch, 0, block, step)))
        rows[f"resume at step {step:,}"] = {"seconds": time.perf_counter() - started}
    for step in (0, 2000):
        started = time.perf_counter()
        next(iter(_skip_through_shuffle(shards, cfg, step)))
        # a week-long run at this config's shapes is about 1e6 steps
        seconds = time.perf_counter() - started
        rows[f"old ds.skip({step}) through the shuffle"] = {"seconds": seconds}
    return rows


def bench_training(cfg, shards, rounds: int, steps: int) -> dict[str, list[float]]:
    strategy = tf.distribute.get_strategy()
    model = build_model(cfg.model)
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    train_steps = Steps(cfg, strategy, model, optimizer)
    batch = cfg.train.global_batch_size

    def from_shards(ctx):
        return reader.train_dataset(shards, batch, 0, cfg.data.shuffle_buffer, 0, ctx)

    first = next(iter(reader.train_dataset(shards, batch, 0, cfg.data.shuffle_buffer)))
    feeds = {
        "memory": iter(
            strategy.distribute_datasets_from_function(
                lambda ctx: tf.data.Dataset.from_tensors(first).repeat()
            )
        ),
        "shards": iter(strategy.distribute_datasets_from_function(from_shards)),
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


def case(rounds: int, quick: bool) -> dict:
    steps, batches = (5, 50) if quick else (20, 300)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="data_bench_") as root:
        base = [*SMALL, "data.source=stdlib", "data.tokenizer_sample_mb=2"]
        cfg = load_config([], [*base, f"data.root={CACHE if quick else root}"])
        if quick:
            manifest = prepare.ensure_prepared(cfg)
        else:
            timings: dict[str, float] = {}
            manifest = prepare.prepare(cfg, timings=timings)
            megabytes = manifest["cleaning"]["bytes_read"] / 1e6
            figures["prepare, whole"] = {"MB/s": megabytes / sum(timings.values()),
                                         "seconds": sum(timings.values())}  # fmt: skip
            figures["prepare, read + clean"] = {"MB/s": megabytes / timings["read"]}
            figures["prepare, tokenizer training"] = {"seconds": timings["tokenizer"]}
            figures["prepare, tokenize + pack + write"] = {"MB/s": megabytes / timings["pack"]}
        shards = verify.check_split(prepare.data_dir(cfg), manifest, "train", "size", "error")
        if not quick:
            figures.update(bench_resume(shards, cfg))
        readers = summarize([bench_reader(shards, cfg, batches) for _ in range(rounds)])
        rates = bench_training(cfg, shards, rounds, steps)
    memory, fed = summarize(rates["memory"]), summarize(rates["shards"])
    figures["reader alone"] = {"tokens/s": readers}
    figures["training step fed from memory"] = {"tokens/s": memory}
    figures["training step fed from shards"] = {"tokens/s": fed}
    headroom, fed_ratio = ratio(readers, memory), ratio(fed, memory)
    notes = [
        f"reader / training consumption = {headroom:.1f}x (target >= 10)",
        f"training from shards / from memory = {fed_ratio:.3f} (target >= 0.97)",
    ]
    return {"figures": figures, "notes": notes}
