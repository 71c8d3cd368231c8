"""Profiler traces: a capture window over chosen steps, on-demand capture, step annotations.

Steps are numbered from 1: step s is the s-th optimizer update, after which the optimizer's
iteration counter reads s. `train.profile_steps: "START,STOP"` captures steps START..STOP
(both included) into `<workdir>/plugins/profile/<timestamp>/<host>.xplane.pb`, where
TensorBoard's Profile tab (the `tensorboard-plugin-profile` package) finds it.

The training steps of one host-loop call run inside one graph, where no profiler annotation
can be opened per iteration; so the `Trace("train", step_num=...)` annotation wraps each
host-loop call, and inside the capture window the loop runs one step per call: there every
annotation is exactly one step, and the trace viewer and the step-time analysis show real step
boundaries. Outside the window (an on-demand capture through `runtime.profiler_port`) each
annotation covers one host-loop call of `steps_per_loop` steps, numbered by its first step.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.config import parse_profile_steps


def step_trace(first_step: int):
    """The profiler's step annotation around one host-loop call starting at `first_step`.

    `_r=1` makes it a root event, which the profiler's step-time analysis requires.
    """
    return tf.profiler.experimental.Trace("train", step_num=first_step, _r=1)


def start_server(port: int) -> None:
    """Lets TensorBoard's "Capture profile" button (or `capture_trace`) reach this process."""
    tf.profiler.experimental.server.start(port)


class ProfileWindow:
    """Starts and stops one trace capture so that it covers exactly steps START..STOP.

    The loop asks `loop_length` how many steps its next host-loop call may run, calls
    `before_loop` and `after_loop` around that call; the window does the rest.
    """

    def __init__(self, spec: str, logdir: str, log=print):
        self.window = parse_profile_steps(spec)
        self.logdir = logdir
        self.log = log
        self.active = False
        self.captured = False

    def loop_length(self, step: int, proposed: int) -> int:
        """Shortens a host-loop call that starts at `step` (steps done) around the window."""
        if self.window is None or self.captured:
            return proposed
        start, stop = self.window
        if step < start - 1:
            return min(proposed, start - 1 - step)  # end the call right before the window
        if step < stop:
            return 1  # one step per call inside the window: one annotation per step
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
