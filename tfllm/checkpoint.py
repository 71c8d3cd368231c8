"""Checkpoints: model weights, optimizer slots and step in `<workdir>/checkpoints`."""

from __future__ import annotations

import posixpath

import keras
import tensorflow as tf

from tfllm.errors import TfllmError


class Checkpointer:
    """Saves every `checkpoint_every` steps, keeps the newest `keep`, restores the latest.

    Under MultiWorkerMirroredStrategy every worker must take part in a save, but only the chief
    (`chief=False` elsewhere) may write to the shared directory: the others write to a scratch
    directory of their own and delete it; all of them restore from the chief's checkpoints.
    """

    def __init__(
        self,
        workdir: str,
        model: keras.Model,
        optimizer,
        keep: int,
        chief: bool = True,
        worker_id: int = 0,
    ):
        self.directory = posixpath.join(workdir, "checkpoints")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, keep)
        self.scratch = None
        if not chief:
            self.scratch = posixpath.join(self.directory, f"scratch-worker-{worker_id}")
            self.scratch_manager = tf.train.CheckpointManager(self.checkpoint, self.scratch, 1)

    def restore_latest(self) -> str | None:
        """Restores the newest checkpoint; returns its path, or None when there is none."""
        path = self.manager.latest_checkpoint
        if path is None:
            if tf.io.gfile.glob(posixpath.join(self.directory, "ckpt-*.index")):
                # tensorflow#35148: a lost state file would make TF silently start over.
                raise TfllmError(
                    f"{self.directory} holds checkpoints but no readable 'checkpoint' state "
                    "file; refusing to start from step 0"
                )
            return None
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as err:
            raise TfllmError(f"cannot restore {path}: {str(err).splitlines()[0]}") from None
        return path

    def save(self, step: int) -> str:
        if self.scratch is None:
            return self.manager.save(checkpoint_number=step)
        path = self.scratch_manager.save(checkpoint_number=step)
        tf.io.gfile.rmtree(self.scratch)
        return path
