"""Shared pieces of the benchmarks: statistics over repetitions, the machine, subprocesses.

Every comparison alternates its contenders (A B C A B C ...) and reports the median with the
spread (min-max), because this machine is shared: single runs were seen at half speed.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
from importlib import metadata

# A repetition further than this from the median (relative) is flagged as an outlier.
OUTLIER = 0.25
RESULT_PREFIX = "RESULT "  # the line a worker subprocess prints its JSON result on


def summarize(values: list[float]) -> dict:
    """Median, spread and outliers of repetitions (empty input gives None fields)."""
    if not values:
        return {"median": None, "min": None, "max": None, "runs": [], "outliers": []}
    median = statistics.median(values)
    outliers = [v for v in values if median and abs(v - median) / median > OUTLIER]
    return {
        "median": median,
        "min": min(values),
        "max": max(values),
        "runs": list(values),
        "outliers": outliers,
    }


def ratio(numerator: dict | None, denominator: dict | None) -> float | None:
    """Ratio of two summaries' medians; None when either is missing."""
    if not numerator or not denominator:
        return None
    a, b = numerator.get("median"), denominator.get("median")
    return a / b if a and b else None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
    }


def versions() -> dict:
    """Library versions; a package that is not installed says so."""
    found = {}
    for name in ("tensorflow", "keras", "keras-hub", "numpy", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def has_torch() -> bool:
    try:
        metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False
    return True


def emit(result: dict) -> None:
    """Prints a worker's result as the one line `run_worker` looks for."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(module: str, args: list[str], timeout: float = 600) -> dict:
    """Runs `python -m module args` in a fresh process; its result dict, or {"error": ...}."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", module, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {done.returncode}: " + " | ".join(tail)}


def gpt2_backbone(shape: dict, max_sequence_length: int):
    """keras-hub's GPT2Backbone on a benchmark shape: the peer both B1 and B4 measure."""
    import keras_hub

    return keras_hub.models.GPT2Backbone(
        vocabulary_size=shape["vocabulary_size"],
        num_layers=shape["num_layers"],
        num_heads=shape["num_heads"],
        hidden_dim=shape["hidden_dim"],
        intermediate_dim=shape["intermediate_dim"],
        dropout=0.0,
        max_sequence_length=max_sequence_length,
    )


def never_end(model, eos_id: int) -> None:
    """Zeroes the tied embedding of EOS: its logit is then 0, below the best of thousands of
    random logits, so greedy decoding runs to max_new_tokens and timings compare equal work."""
    import numpy as np

    kernel = model.embedding.kernel.numpy()  # (D, V)
    kernel[:, eos_id] = 0.0
    model.embedding.kernel.assign(np.asarray(kernel))


class Seconds(float):
    """What a contender that times its own steps returns: the seconds those steps took.
    `alternate` (and `train_bench.measure`) use it instead of the wall time of the call."""


def keras_hub_fit(backbone, windows):
    """keras-hub's own training path for `backbone`: its reversed token embedding as the head,
    `compile(jit_compile=True)` with the AdamW every contender uses, and a dataset of the
    (batch, seq + 1) `windows`. Returns `fit_steps(n)`, which trains n steps and returns their
    `Seconds`, timed per step by a callback that reads the loss at the end of every step.

    Why per step: without a sync, `fit`'s wall time on this CPU came in multiples of about
    10.24 s (20 steps 10.23 s, 40 steps 20.48 s, 90 steps 40.97 s), so short `fit` calls read
    far below the speed of their steps (benchmarks/README.md). Reading the
    loss each step is what `fit`'s progress bar does for a user (`verbose=1`), and the clock
    runs from the first step's start to the last step's end, outside `fit`'s set-up."""
    import time

    import keras
    import tensorflow as tf

    inputs = backbone.input
    logits = backbone.token_embedding(backbone(inputs), reverse=True)
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.1, beta_2=0.95, global_clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    ds = tf.data.Dataset.from_tensor_slices(windows).repeat()
    ds = ds.map(
        lambda w: ({"token_ids": w[:, :-1], "padding_mask": tf.ones_like(w[:, :-1])}, w[:, 1:])
    ).prefetch(2)

    class SyncEachStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.started = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step, as the progress bar's loss read does
            self.ended = time.perf_counter()

    sync = SyncEachStep()

    def fit_steps(n: int) -> Seconds:
        model.fit(ds, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[sync])
        return Seconds(sync.ended - sync.started)

    fit_steps.model, fit_steps.dataset = model, ds  # for the unsynced wall-time cross-check
    return fit_steps


def fit_wall_seconds(fit_steps, n: int) -> float:
    """The cross-check: wall seconds of one `fit` of n steps with no callback (`verbose=0`),
    as a script that only calls `fit` sees them; quantized to about 10.24 s here."""
    import time

    started = time.perf_counter()
    fit_steps.model.fit(fit_steps.dataset, steps_per_epoch=n, epochs=1, verbose=0)
    return time.perf_counter() - started


def alternate(variants: dict, rounds: int, work: float) -> dict[str, list[float]]:
    """Runs each of `variants` ({name: callable}) once per round, in order on even rounds and
    reversed on odd ones (neither always runs first); returns {name: [work / seconds]}. The
    seconds are the call's wall time, or the `Seconds` it returns (a contender timed per step)."""
    import time

    rates = {name: [] for name in variants}
    for r in range(rounds):
        for name in list(variants) if r % 2 == 0 else list(reversed(variants)):
            started = time.perf_counter()
            result = variants[name]()
            seconds = result if isinstance(result, Seconds) else time.perf_counter() - started
            rates[name].append(work / seconds)
    return rates


def paired(rates: dict[str, list[float]], numerator: str, denominator: str) -> dict:
    """Median rates, and the median and spread of the per-round ratio numerator/denominator
    (pairs the rounds: load that changes between rounds cancels out)."""
    ratios = [a / b for a, b in zip(rates[numerator], rates[denominator], strict=True)]
    return {
        "tokens_per_second": {name: statistics.median(v) for name, v in rates.items()},
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def paired_training(builders: dict, ours: str, rounds: int, steps: int, tokens: int) -> dict:
    """Training contenders in one process, timed alternately chunk by chunk (`alternate`).

    `builders` maps a name to a zero-argument function returning (first, many): one step, and
    `steps` steps. Each is built and warmed up (two single steps) before any is timed. Returns
    the harness's figures: every contender's tokens/s, and `ours` over the fastest other
    contender, round by round (each pair of chunks ran within seconds of each other)."""
    runs = {name: build() for name, build in builders.items()}
    for first, _ in runs.values():
        first(), first()
    rates = alternate({name: many for name, (_, many) in runs.items()}, rounds, steps * tokens)
    peers = [name for name in runs if name != ours]
    per_round = [rates[ours][i] / max(rates[p][i] for p in peers) for i in range(rounds)]
    figures = {name: {"tokens/s": summarize(values)} for name, values in rates.items()}
    figures[f"{ours} / fastest other, per round"] = {"tokens/s": summarize(per_round)}
    return figures
