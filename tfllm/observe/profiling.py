"""Profiler traces: a capture window over chosen steps, on-demand capture, step annotations.

Steps are numbered from 1: step s is the s-th optimizer update, after which the optimizer's
iteration counter reads s. `train.profile_steps: "START,STOP"` captures steps START..STOP
(both included) into `<workdir>/plugins/profile/<timestamp>/<host>.xplane.pb`, where
TensorBoard's Profile tab (the `tensorboard-plugin-profile` package) finds it.

A step that a trace may record runs alone, as one `Steps.train_step` call inside
`Trace("train", step_num=N, _r=1)`: the step marker Keras and Orbit emit, on which XProf
builds its Overview, step-time graph and Input Pipeline Analyzer. It cannot run inside the
multi-step host loop: XProf takes the iterations of a graph `while` found in a trace (the
executor tags their events with `iter_num`) for the steps and then ignores every marker ("No
step marker observed", step time 0). So steps are marked, one call each, in the window (one
step per host-loop call, `steps_per_loop` again after it), while any trace records, and
throughout a run with `runtime.profiler_port`: a capture from TensorBoard may start at any
moment, and one that began inside a multi-step call would hold that call's loop.
"""

from __future__ import annotations

import logging

import tensorflow as tf
from tensorflow.python.profiler import trace

from tfllm.validation import parse_profile_steps

logger = logging.getLogger(__name__)


def step_trace(first_step: int):
    """The profiler's step marker around one host-loop call starting at `first_step`.

    XProf reads a root event (`_r=1`) named "train" with a `step_num` as an explicit step.
    """
    return tf.profiler.experimental.Trace("train", step_num=first_step, _r=1)


def recording() -> bool:
    """Whether a profiler session records right now, started here or by a remote capture
    (the check `tf.profiler.experimental.Trace` makes before it records anything)."""
    return trace.enabled()


def start_server(port: int) -> None:
    """Lets TensorBoard's "Capture profile" button (or `capture_trace`) reach this process."""
    tf.profiler.experimental.server.start(port)


class ProfileWindow:
    """Starts and stops one trace capture so that it covers exactly steps START..STOP.

    The loop asks `loop_length` how many steps its next host-loop call may run and
    `one_step` whether that call is one marked step, calls `before_loop` and `after_loop`
    around it; the window does the rest. The step before START also runs alone, unrecorded:
    the single-step function's first call (tracing, graph set-up, about 0.7 s on a CPU) then
    stays out of the first recorded step.
    """

    def __init__(self, spec: str, logdir: str):
        self.window = parse_profile_steps(spec)
        self.logdir = logdir
        self.active = False
        self.captured = False

    def one_step(self, step: int) -> bool:
        """Whether the host-loop call that starts at `step` (steps done) runs one step alone,
        which it does from the warm-up step to the end of the window."""
        if self.window is None or self.captured:
            return False
        start, stop = self.window
        return start - 2 <= step < stop

    def loop_length(self, step: int, proposed: int) -> int:
        """Shortens a host-loop call that starts at `step` around the window."""
        if self.one_step(step):
            return 1
        if self.window is None or self.captured:
            return proposed
        start = self.window[0]
        if step < start - 2:
            return min(proposed, start - 2 - step)  # end the call before the warm-up step
        return proposed

    def before_loop(self, step: int) -> None:
        if self.window is None or self.captured or self.active:
            return
        start, stop = self.window
        if step == start - 1:
            try:
                tf.profiler.experimental.start(self.logdir)
            except tf.errors.AlreadyExistsError:  # one session per process
                logger.warning(
                    f"profiler: another capture is recording; steps {start}-{stop} skipped"
                )
                self.captured = True
                return
            self.active = True
            logger.info(f"profiler: capturing steps {start}-{stop}")
        elif step >= start:  # resumed past the start: a partial window would mislead
            self.captured = True

    def after_loop(self, step: int) -> None:
        if self.active and step >= self.window[1]:
            self.stop()
            logger.info(f"profiler: trace written under {self.logdir}/plugins/profile")

    def stop(self) -> None:
        """Ends an open capture (also when training stops inside the window)."""
        if self.active:
            tf.profiler.experimental.stop()
            self.active, self.captured = False, True
