"""What a run reports: TensorBoard scalars, text and hyperparameters, and the progress line.

    <workdir>/         hyperparameters (HParams plugin): this workdir is one session
    <workdir>/train/   per host-loop call: loss, perf, optim and system scalars; run/ text
    <workdir>/val/     per evaluation: loss, perplexity, a generated sample as text

Scalar tags are grouped by prefix (`loss/`, `perf/`, `optim/`, `system/`), which is how
TensorBoard groups its charts. Training and validation loss share one tag in the two runs,
so one chart draws both. What is constant for a run (parameters, FLOPs per token, the peak
FLOP/s behind MFU, the compile time) is written once, as HParams and text, not as series.

The first host-loop call of a process includes XLA compilation: its time is reported once
(`run/compile`) and kept out of tokens/s, step time, MFU and the ETA.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import resource
import sys
import time

import tensorflow as tf
import yaml
from tensorboard.plugins.hparams import api as hp

from tfllm.config import Config
from tfllm.observe.flops import Peak, mfu
from tfllm.progress import Progress

logger = logging.getLogger(__name__)

GB = 1024.0**3

# The loop's names for what it reports -> TensorBoard tags.
TAGS = {
    "loss": "loss/cross_entropy",
    "perplexity": "loss/perplexity",
    "tokens_per_second": "perf/tokens_per_second",
    "step_time": "perf/step_time",
    "mfu_palm": "perf/mfu",
    "mfu_causal": "perf/mfu_causal",
    "learning_rate": "optim/learning_rate",
    "grad_norm": "optim/grad_norm",
    "param_norm": "optim/param_norm",
    "nonfinite_steps": "optim/nonfinite_steps",
    "loss_scale": "optim/loss_scale",
    "loss_scale_skipped_steps": "optim/loss_scale_skipped_steps",
    "host_memory_gb": "system/host_memory_gb",
    "device_memory_gb": "system/device_memory_gb",
    "device_peak_memory_gb": "system/device_peak_memory_gb",
}


def host_memory_bytes() -> float:
    """Resident set size of this process (peak RSS where /proc is missing, e.g. macOS)."""
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return float(peak) * (1 if sys.platform == "darwin" else 1024)


def device_memory_bytes() -> dict[str, float]:
    """Current and peak accelerator memory summed over devices; empty on CPU."""
    totals: dict[str, float] = {}
    for device in tf.config.list_logical_devices("GPU") + tf.config.list_logical_devices("TPU"):
        try:
            info = tf.config.experimental.get_memory_info(device.name)
        except (ValueError, tf.errors.UnimplementedError):
            continue  # some runtimes do not track memory: report nothing rather than zero
        totals["device_memory_gb"] = totals.get("device_memory_gb", 0.0) + info["current"] / GB
        totals["device_peak_memory_gb"] = (
            totals.get("device_peak_memory_gb", 0.0) + info["peak"] / GB
        )
    return totals


def flat_hparams(cfg: Config) -> dict[str, bool | int | float | str]:
    """`{"model.num_layers": 2, ...}`: every config value, in the types HParams accepts."""
    return {
        f"{section}.{key}": value
        for section, entries in cfg.to_dict().items()
        for key, value in entries.items()
        if isinstance(value, (bool, int, float, str))
    }


class Reporter:
    """Writes TensorBoard summaries and the progress line for one training process."""

    def __init__(
        self,
        workdir: str,
        total_steps: int,
        tokens_per_step: int,
        flops_per_token: dict[str, float],
        peak: Peak,
        write_events: bool = True,
    ):
        self.workdir = workdir
        # Under MultiWorker only the chief writes events: the others' would be the same
        # scalars again, in the chief's directories.
        self.write_events = write_events
        self.total_steps = total_steps
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.progress = Progress("step", total_steps, unit="tok", logger=logger)
        self.writers = {
            split: tf.summary.create_file_writer(posixpath.join(workdir, split))
            if write_events
            else tf.summary.create_noop_writer()
            for split in ("train", "val")
        }
        self.first_call: tuple[int, float] | None = None  # (steps, seconds) with compilation
        self.compile_seconds: float | None = None
        self.timed_from: tuple[int, float] | None = None  # (step, time) when compilation ended
        self.loss_tag = TAGS["loss"]  # DPO's loss is tagged "loss", as TRL writes it

    def scalars(self, split: str, step: int, values: dict[str, float]) -> None:
        """Writes `values` under their grouped tags: a name in TAGS gets its group; another
        (an evaluation task's `task/metric`) is grouped by its own prefix as it is."""
        with self.writers[split].as_default(step=step):
            for name, value in values.items():
                tag = self.loss_tag if name == "loss" else TAGS.get(name, name)
                tf.summary.scalar(tag, value)

    def perplexity(self, loss: float) -> dict[str, float]:
        """{"perplexity": e^loss} when the loss is a cross-entropy, else nothing."""
        if self.loss_tag != TAGS["loss"]:
            return {}
        return {"perplexity": math.exp(min(loss, 50.0))}

    def text(self, split: str, step: int, name: str, value: str) -> None:
        with self.writers[split].as_default(step=step):
            tf.summary.text(name, value)

    def run_config(self, step: int, cfg: Config, parameters: int) -> None:
        """The resolved config and the run's constants as text, and both as this session's
        hyperparameters."""
        # Indented four spaces: TensorBoard's markdown renders it as a code block.
        listing = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        self.text(
            "train", step, "run/config", "\n".join("    " + line for line in listing.split("\n"))
        )
        constants = {
            "run.parameters": parameters,
            "run.flops_per_token_palm": self.flops_per_token["palm"],
            "run.flops_per_token_causal": self.flops_per_token["causal"],
            "run.peak_flops": self.peak.total,
        }
        rows = [
            ("parameters", f"{parameters:,}"),
            ("FLOPs per token (PaLM)", f"{self.flops_per_token['palm']:,.0f}"),
            ("FLOPs per token (causal)", f"{self.flops_per_token['causal']:,.0f}"),
            ("peak FLOP/s for MFU", self.peak.describe()),
        ]
        table = "| constant | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
        self.text("train", step, "run/constants", table)
        hparams = {**flat_hparams(cfg), **constants}
        if not self.write_events:
            return
        with tf.summary.create_file_writer(self.workdir).as_default(step=step):
            hp.hparams_config(
                hparams=[hp.HParam(name) for name in hparams],
                metrics=[
                    hp.Metric(TAGS["loss"], group="val", display_name="validation loss"),
                    hp.Metric(TAGS["loss"], group="train", display_name="training loss"),
                    hp.Metric(TAGS["tokens_per_second"], group="train", display_name="tokens/s"),
                    hp.Metric(TAGS["mfu_palm"], group="train", display_name="MFU (PaLM)"),
                ],
            )
            hp.hparams(hparams, trial_id=posixpath.basename(self.workdir.rstrip("/")))

    def train_progress(
        self,
        step: int,
        loop_steps: int,
        seconds: float,
        values: dict[str, float],
        traced: bool = False,
    ) -> None:
        """Reports one host-loop call of `loop_steps` steps that ended at `step`.

        `values` holds loss, learning_rate, grad_norm and param_norm, and may hold
        loss_scale (mixed_float16) and nonfinite_steps (steps skipped for inf/nan gradients).
        `traced`: the call traced a function (the first call; the single-step function's
        first call before a profile window), so its time is no measure of speed.
        """
        scalars = {
            **values,
            **self.perplexity(values["loss"]),
            "nonfinite_steps": values.get("nonfinite_steps", 0.0),
            "host_memory_gb": host_memory_bytes() / GB,
            **device_memory_bytes(),
        }
        now = time.time()
        tokens_per_second = utilization = None
        if self.first_call is None:
            self.first_call = (loop_steps, seconds)
            self.timed_from = (step, now)
        elif not traced:
            step_time = seconds / loop_steps
            tokens_per_second = self.tokens_per_step / step_time
            scalars.update(step_time=step_time, tokens_per_second=tokens_per_second)
            if self.compile_seconds is None:
                self.report_compile_time(step, step_time)
            if self.peak.total > 0:
                for form in ("palm", "causal"):
                    scalars[f"mfu_{form}"] = mfu(
                        self.flops_per_token[form], tokens_per_second, self.peak.total
                    )
                utilization = scalars["mfu_palm"]
        self.scalars("train", step, scalars)
        fields = [f"loss {values['loss']:.4f}"]
        if utilization is not None:
            fields.append(f"MFU {100 * utilization:.1f}%")
        rate = "compiling" if tokens_per_second is None else tokens_per_second
        self.progress.update(step, fields, rate, self.eta(step, now), step=step)

    def report_compile_time(self, step: int, step_time: float) -> None:
        """Compilation = the first call's time less what its steps take once compiled."""
        first_steps, first_seconds = self.first_call
        self.compile_seconds = max(first_seconds - first_steps * step_time, 0.0)
        # An estimate: on a busy machine the next call's speed is noisy, so show its inputs.
        line = (
            f"first host loop: {first_seconds:.1f}s for {first_steps} step(s), of which about "
            f"{self.compile_seconds:.1f}s XLA compilation"
        )
        self.text("train", step, "run/compile", line)
        logger.info(line, extra={"step": step})

    def eta(self, step: int, now: float) -> float:
        """Wall-clock rate since compilation, so evaluation and checkpoints are included."""
        timed_step, timed_at = self.timed_from
        if step == timed_step or now <= timed_at:
            return math.inf
        return (self.total_steps - step) * (now - timed_at) / (step - timed_step)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.flush()
            writer.close()
