"""Preemption: SIGTERM or SIGINT -> a checkpoint at a step every worker agrees on -> exit.

One training process (`cpu`, `gpu`, `mirrored`, and `tpu`: a Cloud TPU job has one client
process that drives every chip): the signal handler only sets a flag, and the loop saves at
its next host-loop boundary and exits with 128 + the signal number.

Several worker processes (`multiworker` with a cluster in TF_CONFIG or Slurm): a worker that
saved and left on its own would leave the others blocked in the next all-reduce, and a save
needs every worker (the chief writes, the others take part; see `checkpoint.py`). TF's
`tf.distribute.experimental.PreemptionCheckpointHandler` (PCH) settles that through the
coordination service that MultiWorkerMirroredStrategy starts: the preempted worker publishes
"save after run N+1" under a key, waits until every worker has acknowledged it, and at that
boundary every worker calls our save for the same step. Every worker then exits 143, also
those that got no signal: they were preempted with their peer, and a scheduler restarts the
whole job. PCH is used with three choices of ours:
- `termination_watcher_fn` reads our signal flag (PCH polls it once a second), so PCH installs
  no SIGTERM handler of its own and SIGINT works the same way;
- `save_fn` is `Checkpointer.save`: PCH decides *when*, our checkpoints stay the only format;
- `exit_fn` only records the decision: the loop returns, and the command maps it to the exit
  code after closing its files.
The checkpoint manager that PCH insists on holds an empty `tf.train.Checkpoint` in a
directory that is never written, since PCH's own saves are replaced by `save_fn`.

PCH does nothing by design on Google Compute Engine CPU VMs (TF logs "does not support usage
with TPU or CPU device on GCP"); there a signalled worker goes on training until it is killed,
and the job resumes from its last periodic checkpoint.
"""

from __future__ import annotations

import logging
import os
import posixpath
import signal
import sys
import threading
from collections.abc import Callable

import tensorflow as tf

from tfllm.training.faults import exit_code_for

logger = logging.getLogger(__name__)


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


class Preemption:
    """Asks at each host-loop boundary whether to save and stop; saves when the answer is yes.

    Args:
        strategy: the run's strategy; a MultiWorkerMirroredStrategy over a cluster gets the
            cross-worker agreement, every other strategy the one-process flag.
        watcher: the installed signal watcher.
        save: saves a checkpoint for a step and returns its path (`Checkpointer.save`).
        workdir: the run's directory (PCH's unused checkpoint directory goes under it).
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        watcher: PreemptionWatcher,
        save: Callable[[int], str],
        workdir: str,
    ):
        self.watcher, self._save = watcher, save
        self.stopping = False
        self.handler = None
        resolver = getattr(strategy, "cluster_resolver", None)
        if (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and resolver is not None
            and resolver.cluster_spec().jobs
        ):
            manager = tf.train.CheckpointManager(
                tf.train.Checkpoint(), posixpath.join(workdir, "preemption"), max_to_keep=1
            )
            config = tf.distribute.experimental.TerminationConfig(
                termination_watcher_fn=lambda: watcher.signum is not None,
                exit_fn=self._stop,
                save_fn=self._save_and_log,
                grace_period=0,  # save at the agreed step, do not train on into a grace period
            )
            self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                resolver, manager, termination_config=config
            )

    def _stop(self) -> None:
        self.stopping = True

    def _save_and_log(self, step: int) -> None:
        path = self._save(step)
        why = (
            f"signal {self.watcher.signum}"
            if self.watcher.signum is not None
            else "a peer worker was preempted"
        )
        logger.info(
            f"{why}: saved {path} at step {step}; run again to resume", extra={"step": step}
        )

    def check(self, step: int) -> int | None:
        """Call on every worker at every host-loop boundary, with the step just completed.

        Returns None to carry on, or, after a checkpoint of `step` was saved, the signal
        number to exit with: this process's own signal, or SIGTERM on a worker whose peer
        was preempted.
        """
        if self.handler is None:
            if self.watcher.signum is not None:
                self._save_and_log(step)
                self._stop()
        else:
            # Saves (through _save_and_log) and stops (_stop) on every worker at the same
            # boundary once any worker's watcher has fired; otherwise returns at once.
            self.handler.save_checkpoint_if_preempted(step)
        if not self.stopping:
            return None
        return self.watcher.signum or int(signal.SIGTERM)
