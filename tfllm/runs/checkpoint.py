"""Checkpoints in `<workdir>/checkpoints` that survive kills, corruption and config changes.

A checkpoint `ckpt-N` is TF's `ckpt-N.index` + `ckpt-N.data-*` files (model weights, optimizer
slots and step, plus any extra trackables such as counters or a loss scale) and a completion
marker `ckpt-N.done.json` written last. The marker holds the step, the model section of the
config and its fingerprint, and the size of every file, so a checkpoint is *published* only
once the marker exists, and a truncated or missing file is caught before TF reads it.

Restore does not trust TF's `checkpoint` state file (a corrupt one makes TF's manager start
from step 0 with only a warning, tensorflow#35148). It walks the markers from the newest step
down to the first checkpoint whose files match the marker and whose tensors all read back with
their checksums, logging why each newer one was skipped, and rebuilds the state file from the
files on disk when it disagrees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath

import keras
import tensorflow as tf

from tfllm import resources
from tfllm.config import ModelConfig
from tfllm.errors import TfllmError
from tfllm.files import write_atomically
from tfllm.runs import checkpoint_files as disk

logger = logging.getLogger(__name__)

_MODEL_DEFAULTS = dataclasses.asdict(ModelConfig())
REJECTED_DIR = "rejected"


class Checkpointer:
    """Saves complete checkpoints, keeps the newest `keep`, restores the newest usable one.

    Args:
        workdir: the run's directory; checkpoints go to `<workdir>/checkpoints`.
        model: the Keras model whose weights are saved.
        optimizer: the built optimizer (slots and `iterations`, the step); None for a reader
            of the model's weights only (generate, export): the optimizer's values in the
            checkpoint are then skipped without a warning.
        keep: how many published checkpoints to keep.
        model_config: the model section of the config (a dict); a checkpoint written for a
            different one is refused. None skips the check (read-only tools).
        extras: more trackables to save, e.g. counters or a loss scale.
        base: a LoRA run's base identity (`tfllm.runs.finetune.identity`): written into each
            marker; a checkpoint marked with another base is refused.

    Under MultiWorkerMirroredStrategy every worker must take part in a save, but only the chief
    (`chief=False` elsewhere) may write to the shared directory: the others write to a scratch
    directory of their own and delete it; all of them restore from the chief's checkpoints.
    """

    def __init__(
        self,
        workdir: str,
        model: keras.Model,
        optimizer=None,
        keep: int = 1,
        model_config: dict | None = None,
        extras: dict | None = None,
        chief: bool = True,
        worker_id: int = 0,
        base: dict | None = None,
    ):
        self.directory = posixpath.join(workdir, "checkpoints")
        objects = {"model": model, **(extras or {})}
        if optimizer is not None:
            objects["optimizer"] = optimizer
        self.checkpoint = tf.train.Checkpoint(**objects)
        # A checkpoint of the model's weights alone, e.g. one imported by `tfllm.convert`.
        self.weights = tf.train.Checkpoint(model=model)
        self.model_only = optimizer is None
        self.keep, self.model_config = keep, model_config
        self.base = base  # a LoRA run's base checkpoint identity: marked, and checked on restore
        self._skipped: list[int] = []  # newer than the restored one; set aside at the next save
        self.scratch = None if chief else posixpath.join(self.directory, f"scratch-{worker_id}")

    def _prefix(self, step: int) -> str:
        return disk.prefix(self.directory, step)

    def _files_of(self, step: int) -> list[str]:
        return disk.files_of(self.directory, step)

    def steps_on_disk(self) -> list[int]:
        """Every step with any `ckpt-N*` file, complete or not, newest first."""
        return disk.steps_on_disk(self.directory)

    def _check_model(self, step: int, marker: dict) -> None:
        if self.model_config is None:
            return
        # Keys added to ModelConfig after the checkpoint was written take their defaults, which
        # are the model it was written with.
        marker = {**marker, "model": {**_MODEL_DEFAULTS, **marker["model"]}}
        if marker["model"] == self.model_config:
            return
        keys = sorted(set(marker["model"]) | set(self.model_config))
        diffs = [
            f"model.{k}: checkpoint {marker['model'].get(k)!r}, config {self.model_config.get(k)!r}"
            for k in keys
            if marker["model"].get(k) != self.model_config.get(k)
        ]
        raise TfllmError(
            f"{self._prefix(step)} was written for a different model ({'; '.join(diffs)}); "
            "use a new runtime.workdir or the checkpoint's model config"
        )

    def _check_base(self, step: int, marker: dict) -> None:
        if self.base is None or marker["base"] == self.base:
            return
        was = (marker["base"] or {}).get("checkpoint")
        raise TfllmError(
            f"{self._prefix(step)} holds adapters trained on the base {was}, but "
            f"train.init_from now gives {self.base['checkpoint']} (files or sha256 differ): "
            "restore that base or start a new runtime.workdir"
        )

    def restore_latest(self, step: int | None = None) -> str | None:
        """Restores the newest usable checkpoint; returns its path, or None when there is none.

        `step` restores that checkpoint only (skipping newer ones, refusing an unusable one).

        Raises:
            TfllmError: checkpoints were published but none is usable (each is listed with
                the reason), or the newest usable one was written for a different model.
        """
        self._skipped, reasons = [], []
        candidates = self.steps_on_disk()
        if step is not None:
            if step not in candidates:
                raise TfllmError(f"no ckpt-{step} in {self.directory} (on disk: {candidates})")
            candidates = [step]
        for candidate in candidates:
            try:
                marker = disk.read_marker(self.directory, candidate)
                self._check_model(candidate, marker)
                self._check_base(candidate, marker)
                disk.verify(self.directory, candidate, marker)
            except disk.Unusable as why:
                reasons.append(f"ckpt-{candidate}: {why}")
                self._skipped.append(candidate)
                logger.warning(f"checkpoint: skipping ckpt-{candidate}: {why}")
                continue
            path = self._prefix(candidate)
            try:
                # A weights-only checkpoint leaves the optimizer fresh: training starts at step 0.
                status = (self.weights if marker["weights_only"] else self.checkpoint).read(path)
                status.assert_existing_objects_matched()
                if self.model_only:
                    status.expect_partial()  # the optimizer's slots are there on purpose
            except (tf.errors.OpError, AssertionError, ValueError) as err:
                raise TfllmError(f"cannot restore {path}: {disk.first_line(err)}") from None
            if not self.model_only:  # readers never write into a workdir
                self._repair_state_file(candidate)
            return path
        listed = disk.state_file_steps(self.directory)
        if any("no completion marker" not in r for r in reasons) or listed & set(self._skipped):
            # Published checkpoints exist but none loads: starting over would overwrite them.
            refusal = "" if self.model_only else ", refusing to start from step 0"
            raise TfllmError(
                f"no usable checkpoint in {self.directory}{refusal}: " + "; ".join(reasons)
            )
        if reasons and not self.model_only:
            logger.warning("checkpoint: only unfinished saves on disk; starting from scratch")
        return None

    def _published_steps(self) -> list[int]:
        return [
            s
            for s in self.steps_on_disk()
            if tf.io.gfile.exists(self._prefix(s) + disk.MARKER_SUFFIX) and s not in self._skipped
        ]

    def _repair_state_file(self, restored: int) -> None:
        """Rewrites TF's `checkpoint` state file when it does not name the restored step."""
        path = posixpath.join(self.directory, disk.STATE_FILE)
        state = None
        if tf.io.gfile.exists(path):
            try:
                # get_checkpoint_state logs and returns None on garbage; empty raises.
                state = tf.train.get_checkpoint_state(self.directory)
            except (tf.errors.OpError, ValueError):
                state = None
        if state is not None and state.model_checkpoint_path == self._prefix(restored):
            return
        was = "missing" if not tf.io.gfile.exists(path) else "unreadable or stale"
        disk.write_state_file(self.directory, [s for s in self._published_steps() if s <= restored])
        logger.warning(
            f"checkpoint: rebuilt the '{disk.STATE_FILE}' state file from disk (it was {was})"
        )

    def save(self, step: int, weights_only: bool = False) -> str:
        """Writes ckpt-`step`, publishes it with its marker, then drops the oldest ones.

        `weights_only` writes the model's variables alone (an imported model's step 0, which
        `tfllm.train` resumes from with a fresh optimizer).

        Returns the checkpoint's path prefix; on a non-chief worker, the chief's, which this
        worker's part of the save goes with.
        """
        if self.scratch is not None:  # a non-chief worker: take part in the save, keep nothing
            self.checkpoint.write(posixpath.join(self.scratch, f"ckpt-{step}"))
            tf.io.gfile.rmtree(self.scratch)
            return self._prefix(step)
        tf.io.gfile.makedirs(self.directory)
        self._set_aside_skipped()
        marker_path = self._prefix(step) + disk.MARKER_SUFFIX
        if tf.io.gfile.exists(marker_path):  # rewriting a step: unpublish it first
            tf.io.gfile.remove(marker_path)
        disk.test_exit_point("before_write", step)
        with resources.guarded(
            f"checkpoint ckpt-{step}",
            self.directory,
            kept=self._kept,
            cleanup=lambda: resources.remove_temporaries(
                self.directory, [f"ckpt-{step}.*", f"ckpt-{step}_temp*"]
            ),
        ):
            prefix = (self.weights if weights_only else self.checkpoint).write(self._prefix(step))
            disk.test_exit_point("after_write", step)
            files = {
                n: tf.io.gfile.stat(posixpath.join(self.directory, n)).length
                for n in self._files_of(step)
                if disk.MARKER_SUFFIX not in n  # the marker, and a stale temp one
            }
            marker = {"step": step, "model": self.model_config, "files": files}
            if weights_only:
                marker["weights_only"] = True
            if self.base is not None:
                marker["base"] = self.base
            write_atomically(marker_path, json.dumps(marker, indent=1, sort_keys=True))  # publish
        disk.test_exit_point("after_marker", step)
        published = self._published_steps()
        disk.write_state_file(self.directory, published[: self.keep])
        disk.test_exit_point("after_state", step)
        for old in self.steps_on_disk():
            if old not in published[: self.keep] and old < step:
                for name in self._files_of(old):
                    disk.remove(posixpath.join(self.directory, name))
        return prefix

    def _kept(self) -> str:
        published = self._published_steps()
        if not published:
            return "no earlier checkpoint (none was published)"
        return f"{self._prefix(published[0])}, the newest complete checkpoint"

    def _set_aside_skipped(self) -> None:
        """Moves the checkpoints that restore skipped out of the way, kept for a post-mortem.

        Left in place, a damaged ckpt-N newer than the run's position would count as the
        newest and push good checkpoints out of the `keep` window.
        """
        if not self._skipped:
            return
        target = posixpath.join(self.directory, REJECTED_DIR)
        tf.io.gfile.makedirs(target)
        for step in self._skipped:
            for name in self._files_of(step):
                tf.io.gfile.rename(
                    posixpath.join(self.directory, name),
                    posixpath.join(target, name),
                    overwrite=True,
                )
            logger.info(f"checkpoint: moved the skipped ckpt-{step} to {target}")
        self._skipped = []
