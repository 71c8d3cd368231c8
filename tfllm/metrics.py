"""What a run reports: TensorBoard scalars in `<workdir>/{train,val}` and a console line."""

from __future__ import annotations

import math
import posixpath
import sys
import time

import tensorflow as tf


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_count(value: float) -> str:
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"


class Reporter:
    """Writes scalars to TensorBoard and prints one progress line per host loop."""

    def __init__(self, workdir: str, total_steps: int, stream=None):
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.writers = {
            split: tf.summary.create_file_writer(posixpath.join(workdir, split))
            for split in ("train", "val")
        }
        self.started = time.time()
        self.first_step: int | None = None

    def scalars(self, split: str, step: int, values: dict[str, float]) -> None:
        with self.writers[split].as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def text(self, split: str, step: int, name: str, value: str) -> None:
        with self.writers[split].as_default(step=step):
            tf.summary.text(name, value)

    def train_progress(self, step: int, values: dict[str, float]) -> None:
        self.scalars("train", step, values)
        if self.first_step is None:
            self.first_step = step - values.get("loop_steps", 0)
        done = step - self.first_step
        rate = done / max(time.time() - self.started, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else math.inf
        self.print(
            f"step {step}/{self.total_steps} | loss {values['loss']:.4f} | "
            f"lr {values['learning_rate']:.2e} | gnorm {values['grad_norm']:.2f} | "
            f"{format_count(values['tokens_per_second'])} tok/s | "
            f"eta {format_duration(eta) if math.isfinite(eta) else '?'}"
        )

    def print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.flush()
            writer.close()
