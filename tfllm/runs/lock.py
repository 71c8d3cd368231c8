"""One writer per workdir: `<workdir>/train.lock` holds the PID and host of the training process.

Two processes training into one workdir would interleave checkpoints and delete each other's
files (`tfllm.locks` has the mechanics). Under a multi-worker cluster all workers of one job
share the workdir: `train.py` lets only the chief take the lock, so it stands for the whole job
and a second job stops at its chief.
"""

from __future__ import annotations

from tfllm.locks import DirectoryLock

LOCK_NAME = "train.lock"


class WorkdirLock(DirectoryLock):
    """Holds `<workdir>/train.lock` for the life of a training run."""

    def __init__(self, workdir: str):
        super().__init__(workdir, LOCK_NAME, "workdir", "training")
