"""Exit codes and non-finite-loss diagnostics for the training loop (signals: `preemption.py`).

Exit codes of `python -m tfllm.train` (also in the README):
    0    trained to `train.steps`
    2    a user mistake, or no usable checkpoint (one line on stderr)
    3    non-finite loss or gradients (`train.on_nonfinite=stop`, or rollbacks used up);
         diagnostics in `<workdir>/nonfinite-step-N.json`
    130  SIGINT: a checkpoint was saved at the next loop boundary; run again to resume
    143  SIGTERM (preemption): the same. Under a multi-worker cluster every worker exits 143
         when any of them is preempted (a worker that got SIGINT itself exits 130)
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath

import numpy as np
import tensorflow as tf

from tfllm.config import Config
from tfllm.data import reader
from tfllm.errors import TfllmError
from tfllm.model import lora
from tfllm.training.optim import set_completed_steps
from tfllm.training.steps import Steps, token_loss_sum

logger = logging.getLogger(__name__)

EXIT_NONFINITE = 3


def exit_code_for(signum: int) -> int:
    """The shell convention 128 + signal number: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


class NonFiniteError(TfllmError):
    """Training met a non-finite loss or gradient and the policy says stop."""

    exit_code = EXIT_NONFINITE


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
    where it starts. The loss is divided by the batch's count of targets as in the train step,
    so a batch with none (all padding) reports the same 0/0 = NaN that stopped the step."""
    inputs, targets, *segment_ids = batch
    counted = tf.reduce_sum(tf.cast(targets >= 0, tf.float32))  # ignored targets are -1
    with tf.GradientTape() as tape:
        loss = loss_fn(model, inputs, targets, True, *segment_ids) / counted
    grads = tape.gradient(loss, lora.trainable_variables(model))
    norms = {
        v.path: float(tf.norm(g)) if g is not None else None
        for v, g in zip(lora.trainable_variables(model), grads, strict=True)
    }
    return {
        "step": step,
        "batch_fingerprint": batch_fingerprint(inputs),
        "loss": float(loss),
        "counted_targets": int(counted),
        "gradient_norms": norms,
        "nonfinite_gradients": [
            k for k, n in norms.items() if n is not None and not np.isfinite(n)
        ],
    }


def roll_back_or_stop(
    cfg: Config, steps: Steps, train_shards, checkpointer, counters, bad_step
) -> int:
    """Handles the first non-finite step of a host loop under `stop` or `rollback`.

    Writes the diagnostics; then either raises NonFiniteError, or restores the newest good
    checkpoint (step c) and returns `bad_step + 1`: the data window c+1..bad_step is skipped
    and the step counter jumps with it, so the schedule and the data stream stay aligned.
    """
    batch = next(
        iter(
            reader.train_dataset(
                train_shards,
                cfg.train.global_batch_size,
                cfg.train.seed,
                cfg.data.shuffle_buffer,
                interleave=cfg.data.interleave_shards,
                start_step=bad_step,
            )
        )
    )
    # The loop stopped at bad_step without updating, so these are the weights it saw.
    report = gradient_report(steps.model, token_loss_sum, batch, bad_step)
    path = write_diagnostics(cfg.runtime.workdir, report)
    message = (
        f"non-finite loss or gradients at step {bad_step} (loss {report['loss']:.4g} over "
        f"{report['counted_targets']} targets, "
        f"{len(report['nonfinite_gradients'])} non-finite gradient(s); diagnostics: {path})"
    )
    rollbacks = int(counters["rollbacks"])
    if cfg.train.on_nonfinite == "stop":
        raise NonFiniteError(message)
    if rollbacks >= cfg.train.max_rollbacks:
        raise NonFiniteError(
            f"{message}; train.max_rollbacks={cfg.train.max_rollbacks} rollbacks used up"
        )
    skipped = int(counters["skipped_steps"])
    restored = checkpointer.restore_latest()
    # Restore brought back the counters of the old checkpoint: the run's totals win.
    counters["rollbacks"].assign(rollbacks + 1)
    counters["skipped_steps"].assign(skipped)
    set_completed_steps(steps.optimizer, bad_step + 1)
    logger.warning(
        f"{message}: rolled back to {restored}, skipping data up to step {bad_step} "
        f"(rollback {rollbacks + 1} of {cfg.train.max_rollbacks})",
        extra={"step": bad_step},
    )
    return bad_step + 1
