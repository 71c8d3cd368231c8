"""Preemption signals, exit codes and non-finite-loss diagnostics for the training loop.

Exit codes of `python -m tfllm.train` (also in the README):
    0    trained to `train.steps`
    2    a user mistake, or no usable checkpoint (one line on stderr)
    3    non-finite loss or gradients (`train.on_nonfinite=stop`, or rollbacks used up);
         diagnostics in `<workdir>/nonfinite-step-N.json`
    130  SIGINT: a checkpoint was saved at the next loop boundary; run again to resume
    143  SIGTERM (preemption): the same
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import signal
import sys
import threading

import numpy as np
import tensorflow as tf

from tfllm.errors import TfllmError

EXIT_NONFINITE = 3
POLICIES = ("stop", "skip", "rollback")


def exit_code_for(signum: int) -> int:
    """The shell convention 128 + signal number: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


class NonFiniteError(TfllmError):
    """Training met a non-finite loss or gradient and the policy says stop."""

    exit_code = EXIT_NONFINITE


class PreemptionWatcher:
    """Turns SIGTERM and SIGINT into a flag that the loop checks at each loop boundary.

    A second signal while the save is pending ends the process at once (exit 128 + signal):
    an impatient user or a scheduler's final kill is obeyed. Handlers are installed only on
    the main thread (Python allows no other) and the previous ones come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            print(f"second signal {signum}: exiting without a checkpoint", file=sys.stderr)
            os._exit(exit_code_for(signum))
        self.signum = signum

    def __enter__(self) -> PreemptionWatcher:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def batch_fingerprint(inputs) -> str:
    """sha256 (16 hex digits) of a batch's token ids: identifies the batch across runs."""
    return hashlib.sha256(np.ascontiguousarray(inputs.numpy()).tobytes()).hexdigest()[:16]


def write_diagnostics(workdir: str, report: dict) -> str:
    """Writes `<workdir>/nonfinite-step-N.json` and returns its path."""
    path = posixpath.join(workdir, f"nonfinite-step-{report['step']}.json")
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(report, f, indent=1, allow_nan=True)
    return path


def gradient_report(model, loss_fn, batch: tuple, step: int) -> dict:
    """Loss and per-variable gradient norms of one batch (inputs, targets[, segment_ids]),
    computed eagerly at the current weights, so a non-finite value can be traced to the layer
    where it starts."""
    inputs, targets, *segment_ids = batch
    counted = tf.reduce_sum(tf.cast(targets >= 0, tf.float32))  # ignored targets are -1
    with tf.GradientTape() as tape:
        loss = loss_fn(model, inputs, targets, True, *segment_ids) / tf.maximum(counted, 1.0)
    grads = tape.gradient(loss, model.trainable_variables)
    norms = {
        v.path: float(tf.norm(g)) if g is not None else None
        for v, g in zip(model.trainable_variables, grads, strict=True)
    }
    return {
        "step": step,
        "batch_fingerprint": batch_fingerprint(inputs),
        "loss": float(loss),
        "gradient_norms": norms,
        "nonfinite_gradients": [
            k for k, n in norms.items() if n is not None and not np.isfinite(n)
        ],
    }
