"""Profiler traces: a capture window over chosen steps, on-demand capture, step annotations.

Steps are numbered from 1: step s is the s-th optimizer update, after which the optimizer's
iteration counter reads s. `train.profile_steps: "START,STOP"` captures steps START..STOP
(both included) into `<workdir>/plugins/profile/<timestamp>/<host>.xplane.pb`, where
TensorBoard's Profile tab (the `tensorboard-plugin-profile` package) finds it.

Each host-loop call is wrapped in `Trace("train", step_num=..., _r=1)`, the step marker that
Keras and Orbit emit and that XProf's Overview, step-time graph and Input Pipeline Analyzer
are built on. While a trace records - the window above, or a capture requested through
`runtime.profiler_port` - the loop runs one step per call through `Steps.train_step`, which
has no graph loop: XProf takes the iterations of a graph `while` (the executor tags their
events with `iter_num`) as the steps whenever it finds one in a trace, and then ignores every
step marker ("No step marker observed", step time 0). So each marker is exactly one step, and
`steps_per_loop` applies again once the trace stops. A capture from TensorBoard that starts
during a multi-step call leaves that call unmarked; XProf also drops the first and last step
of a capture of more than a few steps as possibly incomplete.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.profiler import trace

from tfllm.config import parse_profile_steps


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
    `one_step` whether that call runs the single-step function, calls `before_loop` and
    `after_loop` around it; the window does the rest. The step before START also runs alone,
    unrecorded: the single-step function's first call (tracing, graph set-up, about 0.7 s on
    a CPU) then stays out of the first recorded step.
    """

    def __init__(self, spec: str, logdir: str, log=print):
        self.window = parse_profile_steps(spec)
        self.logdir = logdir
        self.log = log
        self.active = False
        self.captured = False

    def one_step(self, step: int) -> bool:
        """Whether the host-loop call that starts at `step` (steps done) runs one step alone:
        while any trace records, and from the warm-up step to the end of the window."""
        if recording():
            return True
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
            tf.profiler.experimental.start(self.logdir)
            self.active = True
            self.log(f"profiler: capturing steps {start}-{stop}")
        elif step >= start:  # resumed past the start: a partial window would mislead
            self.captured = True

    def after_loop(self, step: int) -> None:
        if self.active and step >= self.window[1]:
            self.stop()
            self.log(f"profiler: trace written under {self.logdir}/plugins/profile")

    def stop(self) -> None:
        """Ends an open capture (also when training stops inside the window)."""
        if self.active:
            tf.profiler.experimental.stop()
            self.active, self.captured = False, True
