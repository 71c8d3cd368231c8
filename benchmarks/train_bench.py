"""One training contender in one process: first-step seconds, tokens/s, peak RSS.

    python -m benchmarks.train_bench CONTENDER SIZE STEPS CHUNKS

`benchmarks.run` starts this once per repetition, alternating contenders, so every number
comes from a clean process (its own peak RSS, no cross-talk). All contenders train the same
shapes (GELU MLP, intermediate 4D, tied head) on the same random token batches with AdamW
(lr 1e-3, betas 0.9/0.95, decay 0.1), global-norm clip 1.0, float32.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np

from benchmarks.common import emit, gpt2_backbone, keras_hub_fit

SIZES = {
    # Overhead-bound: per-step framework cost decides.
    "tiny": dict(num_layers=2, hidden_dim=128, num_heads=4, vocabulary_size=2048, batch=8),
    # Compute-bound: about 4.2M parameters (GPT-2 layout), matmuls decide.
    "small": dict(num_layers=4, hidden_dim=256, num_heads=4, vocabulary_size=4096, batch=16),
}
SEQ_LEN = 128
BATCHES = 8  # distinct batches cycled through: identical data for every contender


def shape_of(size: str) -> dict:
    shape = dict(SIZES[size], seq_len=SEQ_LEN)
    shape["intermediate_dim"] = 4 * shape["hidden_dim"]
    return shape


def token_batches(shape: dict) -> np.ndarray:
    """(BATCHES, batch, seq_len + 1) int32 windows: inputs are [:-1], targets [1:]."""
    rng = np.random.default_rng(0)
    size = (BATCHES, shape["batch"], shape["seq_len"] + 1)
    return rng.integers(0, shape["vocabulary_size"], size=size, dtype=np.int32)


def tfllm_overrides(shape: dict, jit_compile: bool) -> list[str]:
    return [
        f"model.{key}={shape[key]}"
        for key in ("num_layers", "hidden_dim", "num_heads", "vocabulary_size", "intermediate_dim")
    ] + [
        "model.activation=gelu",
        f"model.max_sequence_length={shape['seq_len']}",
        f"data.seq_len={shape['seq_len']}",
        f"train.global_batch_size={shape['batch']}",
        "train.learning_rate=1e-3",
        "train.warmup_steps=0",
        f"train.jit_compile={str(jit_compile).lower()}",
    ]


def run_tfllm(shape: dict, steps: int, jit_compile: bool = True, replicas: int = 1):
    """tfllm's own host loop (`Steps.train_loop`): every tfllm call site is in here."""
    import tensorflow as tf

    if replicas > 1:  # logical CPU devices must exist before TF initializes its runtime
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    else:
        strategy = tf.distribute.get_strategy()
    from tfllm.config import load_config
    from tfllm.model.lm import build_model
    from tfllm.training.optim import make_optimizer
    from tfllm.training.steps import Steps

    cfg = load_config([], tfllm_overrides(shape, jit_compile))
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model(cfg.model)
        optimizer = make_optimizer(cfg.train, model.trainable_variables)
    steps_fn = Steps(cfg, strategy, model, optimizer)
    windows = tf.constant(token_batches(shape))
    per_replica = shape["batch"] // replicas

    def dataset(ctx):
        ds = tf.data.Dataset.from_tensor_slices(windows).repeat()
        ds = ds.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(2)
        return ds.map(lambda x, y: (x[:per_replica], y[:per_replica]))

    iterator = iter(strategy.distribute_datasets_from_function(dataset))
    return (
        lambda: float(steps_fn.train_loop(iterator, tf.constant(1))["loss"]),
        lambda: float(steps_fn.train_loop(iterator, tf.constant(steps))["loss"]),
    )


def run_keras_hub(shape: dict, steps: int):
    """keras-hub GPT2Backbone + tied head, trained with `model.fit(jit_compile=True)`."""
    import keras

    keras.utils.set_random_seed(0)
    backbone = gpt2_backbone(shape, shape["seq_len"])
    fit_steps = keras_hub_fit(backbone, token_batches(shape))
    return lambda: fit_steps(1), lambda: fit_steps(steps)


def run_torch(shape: dict, steps: int, compiled: bool):
    import torch

    from benchmarks.torch_gpt import make_step

    torch.set_num_threads(os.cpu_count() or 1)
    step = make_step(shape, compiled)
    windows = torch.from_numpy(token_batches(shape)).long()

    def steps_from(count: int):
        for i in range(count):
            w = windows[i % BATCHES]
            loss = step(w[:, :-1], w[:, 1:])
        return float(loss)

    return lambda: steps_from(1), lambda: steps_from(steps)


CONTENDERS = {
    "tfllm": lambda shape, steps: run_tfllm(shape, steps),
    "tfllm-no-xla": lambda shape, steps: run_tfllm(shape, steps, jit_compile=False),
    "tfllm-mirrored-2": lambda shape, steps: run_tfllm(shape, steps, replicas=2),
    "keras-hub-fit": run_keras_hub,
    "torch-eager": lambda shape, steps: run_torch(shape, steps, False),
    "torch-compile": lambda shape, steps: run_torch(shape, steps, True),
}


def measure(contender: str, size: str, steps: int, chunks: int = 3) -> dict:
    """First-step seconds, then `chunks` timed runs of `steps` steps (spread within a process)."""
    shape = shape_of(size)
    started = time.perf_counter()
    first, many = CONTENDERS[contender](shape, steps)
    first()  # traces and compiles: what a user waits for before the first step
    first_step = time.perf_counter() - started
    first()  # a second single step finishes any lazy compilation
    rates = []
    for _ in range(chunks):
        started = time.perf_counter()
        many()
        rates.append(steps * shape["batch"] * shape["seq_len"] / (time.perf_counter() - started))
    return {
        "contender": contender,
        "size": size,
        "steps": steps,
        "tokens_per_second": sorted(rates)[len(rates) // 2],
        "chunks_tokens_per_second": rates,
        "first_step_seconds": first_step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


if __name__ == "__main__":
    emit(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
