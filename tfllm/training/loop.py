"""The training loop (`python -m tfllm.train` calls `train`).

The loop, top to bottom: lock the workdir -> restore the newest usable checkpoint -> [host loop
of steps_per_loop XLA-compiled steps -> non-finite policy -> log -> on SIGTERM/SIGINT save (all
workers at one step) and exit -> evaluate / checkpoint every N steps] -> final evaluation,
checkpoint and a sample.
Exit codes are listed in `tfllm/training/faults.py` and the README.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable

import tensorflow as tf

from tfllm.config import Config
from tfllm.data import reader, verify
from tfllm.errors import ConfigError
from tfllm.model import lora
from tfllm.observe import flops, profiling
from tfllm.observe.metrics import Reporter
from tfllm.runs.lock import WorkdirLock
from tfllm.training import distribute, faults, session
from tfllm.training.evaluation import Evaluation
from tfllm.training.preemption import Preemption, PreemptionWatcher
from tfllm.training.steps import LanguageModeling, Steps

logger = logging.getLogger(__name__)


def validate_run(cfg: Config, replicas: int) -> None:
    """What the config alone cannot check: the batch split over replicas and micro-batches.
    Runs before anything is built or compiled."""
    t = cfg.train
    if t.global_batch_size % (replicas * t.grad_accum_steps):
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be divisible by replicas "
            f"({replicas}) x train.grad_accum_steps ({t.grad_accum_steps})"
        )


def loop_values(loss: float, grad_norm, model, optimizer) -> dict[str, float]:
    """What one host-loop call reports besides speed: loss, schedule, norms, loss scale."""
    values = {
        "loss": loss,
        "learning_rate": float(optimizer.learning_rate),
        "grad_norm": float(grad_norm),
        "param_norm": float(tf.linalg.global_norm(lora.trainable_variables(model))),
    }
    # Only keras' LossScaleOptimizer (mixed_float16) has a dynamic loss scale.
    if hasattr(optimizer, "dynamic_scale"):
        values["loss_scale"] = float(optimizer.dynamic_scale)
        values["loss_scale_skipped_steps"] = int(optimizer.skipped_steps.numpy())
    return values


def train(
    cfg: Config,
    strategy: tf.distribute.Strategy | None = None,
    stop_after: int | None = None,
    build_data: Callable | None = None,
) -> dict:
    """Runs (or resumes) training to `cfg.train.steps`; returns the final metrics.

    `build_data(cfg)` makes the dataset when it is missing (the prepare stage, which the
    `train` command and `tfllm.train` pass in); without it a missing dataset is an error.

    `stop_after` ends this call early at that step (checkpointed), with the schedule still
    planned for `cfg.train.steps`: a job that runs in chunks resumes exactly where it stopped.
    SIGTERM or SIGINT end it at the next loop boundary with a checkpoint; the result then
    holds `preempted`, the signal number.

    Raises:
        TfllmError: another process holds the workdir, or no checkpoint is usable.
        faults.NonFiniteError: a non-finite loss that the `train.on_nonfinite` policy stops on.
    """
    strategy = strategy or distribute.make_strategy(cfg.runtime)
    validate_run(cfg, strategy.num_replicas_in_sync)
    tf.io.gfile.makedirs(cfg.runtime.workdir)
    # Under MultiWorkerMirroredStrategy every worker of a job runs on the same workdir: the
    # chief, the one writer of checkpoints, holds the lock for the job, so a second job is
    # refused at its chief; the other workers write only scratch directories of their own.
    chief = strategy.extended.should_checkpoint
    lock = WorkdirLock(cfg.runtime.workdir) if chief else contextlib.nullcontext()
    with lock, PreemptionWatcher() as watcher:
        return _train(cfg, strategy, stop_after, watcher, build_data)


def _train(cfg: Config, strategy, stop_after, watcher: PreemptionWatcher, build_data) -> dict:
    started = session.start(cfg, strategy, build_data)
    run, step = _Run(started, strategy), started.step
    preemption = Preemption(strategy, watcher, run.checkpointer.save, cfg.runtime.workdir)
    run.compile(step)
    last_step = min(cfg.train.steps, stop_after or cfg.train.steps)
    while step < last_step:
        step, preempted = run.host_loop(step, last_step, preemption)
        if preempted is not None:
            run.reporter.close()
            return {"step": step, "val_loss": math.nan, "preempted": preempted}
        run.evaluate_and_checkpoint(step, last_step)
    return run.finish(step)


def objectives(cfg: Config, manifest: dict, reference_logps=None, teacher=None):
    """(training objective, evaluation objective, record decoder or None) of the run."""
    t = cfg.train
    if t.objective == "dpo":
        from tfllm.data.pairs import decode_pairs
        from tfllm.training.dpo import DPO

        def decoder(serialized):
            table = None if reference_logps is None else tf.constant(reference_logps)
            return decode_pairs(serialized, manifest["window_len"], table)

        return DPO(t), DPO(t), decoder
    if teacher is not None:
        from tfllm.training.distill import Distillation

        # Validation stays the data's cross-entropy: comparable with a run without a teacher.
        distill = Distillation(teacher, t.distill_alpha, t.distill_temperature)
        return distill, LanguageModeling(), None
    return None, None, None


class _Run:
    """One training session's state (`session.start` built it), in the order the loop uses it:
    `compile` (inputs, steps, reporting), `host_loop` (one call
    of up to steps_per_loop compiled steps and the non-finite policy),
    `evaluate_and_checkpoint` (`Evaluation`), `finish`."""

    def __init__(self, started: session.Session, strategy):
        self.strategy = strategy
        self.cfg, self.manifest, self.directory = started.cfg, started.manifest, started.directory
        self.model, self.optimizer = started.model, started.optimizer
        self.counters, self.checkpointer = started.counters, started.checkpointer
        self.objective, self.eval_objective, self.decoder = objectives(
            started.cfg, started.manifest, started.reference, started.teacher
        )

    def compile(self, step: int) -> None:
        """Inputs, the compiled steps, reporting and the profiler (compiled at the first call)."""
        cfg, strategy = self.cfg, self.strategy
        replicas = strategy.num_replicas_in_sync
        batch = cfg.train.global_batch_size
        sequences = 2 if cfg.train.objective == "dpo" else 1  # a pair is two sequences
        tokens_per_step = batch * sequences * cfg.data.seq_len
        self.train_shards, val_shards = (
            verify.check_split(
                self.directory, self.manifest, split, cfg.data.verify, cfg.data.on_corrupt
            )
            for split in ("train", "val")
        )
        # Every host evaluates its slice of the same global batches: the validation loss is the
        # same number under every strategy, and a small validation split needs no shard per host.
        self.eval_ds = distribute.global_batches(
            strategy,
            lambda: reader.eval_dataset(
                val_shards, batch, cfg.train.eval_batches, decoder=self.decoder
            ),
            batch,
        )
        self.steps = Steps(
            cfg, strategy, self.model, self.optimizer, self.objective, self.eval_objective
        )
        flops_per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)
        peak = flops.find_peak(cfg.runtime.peak_flops, cfg.train.precision, replicas)
        self.reporter = Reporter(
            cfg.runtime.workdir, cfg.train.steps, tokens_per_step, flops_per_token, peak,
            write_events=strategy.extended.should_checkpoint,
        )  # fmt: skip
        if cfg.train.objective == "dpo":
            self.reporter.loss_tag = "loss"  # TRL's name; a DPO loss is no cross-entropy
        self.reporter.run_config(step, cfg, self.model.count_params())
        logger.info(
            f"training to step {cfg.train.steps}: {replicas} replica(s) x "
            f"{batch // replicas // cfg.train.grad_accum_steps} rows x "
            f"{cfg.train.grad_accum_steps} micro-batch(es) = {batch} rows, {tokens_per_step} "
            f"tokens per step, {cfg.train.precision}" + (", remat" if cfg.train.remat else "")
        )
        logger.info(
            f"MFU: {flops_per_token['palm']:.3g} FLOPs/token (PaLM), "
            f"{flops_per_token['causal']:.3g} (causal); peak {peak.describe()}"
        )
        self.window = profiling.ProfileWindow(cfg.train.profile_steps, cfg.runtime.workdir)
        if cfg.runtime.profiler_port:
            profiling.start_server(cfg.runtime.profiler_port)
            port = cfg.runtime.profiler_port
            logger.info(f"profiler server on port {port} (TensorBoard: Capture profile)")
        self.evaluation = Evaluation(cfg, self.model, self.steps, self.eval_ds, self.reporter)
        self.iterator = self.train_iterator(step)

    def train_iterator(self, start_step: int):
        cfg = self.cfg
        return iter(
            self.strategy.distribute_datasets_from_function(
                lambda ctx: reader.train_dataset(
                    self.train_shards,
                    cfg.train.global_batch_size,
                    cfg.train.seed,
                    cfg.data.shuffle_buffer,
                    interleave=cfg.data.interleave_shards,
                    start_step=start_step,
                    input_context=ctx,
                    decoder=self.decoder,
                )
            )
        )

    def host_loop(self, step: int, last_step: int, preemption) -> tuple[int, int | None]:
        """Runs one host-loop call from `step`; returns the new step and a preempting signal."""
        cfg, counters = self.cfg, self.counters
        boundary = min(
            last_step,
            (step // cfg.train.eval_every + 1) * cfg.train.eval_every,
            (step // cfg.train.checkpoint_every + 1) * cfg.train.checkpoint_every,
        )
        # Steps that a trace may record run one call each inside a step marker (see
        # profiling): in and just before the window, while any trace records, and always when
        # TensorBoard may start a capture at any moment through the profiler port.
        marked = (
            self.window.one_step(step) or profiling.recording() or cfg.runtime.profiler_port > 0
        )
        loop_steps = self.window.loop_length(step, min(cfg.train.steps_per_loop, boundary - step))
        self.window.before_loop(step)
        traces = sum(self.steps.traces.values())
        started = time.time()
        try:
            if marked:
                out = self.steps.marked_steps(self.iterator, loop_steps, step + 1)
            else:
                out = self.steps.train_loop(self.iterator, tf.constant(loop_steps))
            done = int(out["steps"])  # waits for the loop: the timing is real
        except tf.errors.InvalidArgumentError as err:
            reader.raise_if_damaged_shard(err)
            raise
        elapsed = time.time() - started
        step += done
        self.window.after_loop(step)
        if int(out["skipped"]):
            bad_step = step - done + int(out["first_bad"])
            counters["skipped_steps"].assign_add(int(out["skipped"]))
            if cfg.train.on_nonfinite == "skip":
                logger.warning(
                    f"non-finite loss or gradients: skipped {int(out['skipped'])} update(s) "
                    f"in steps {step - done}..{step - 1} "
                    f"({int(counters['skipped_steps'])} in all)"
                )
            else:
                step = faults.roll_back_or_stop(
                    cfg,
                    self.steps,
                    self.train_shards,
                    self.checkpointer,
                    counters,
                    bad_step,
                )
                self.iterator = self.train_iterator(step)
                return step, None
        values = loop_values(float(out["loss"]), out["grad_norm"], self.model, self.optimizer)
        values.update({k: float(v) for k, v in out["metrics"].items()})
        values["nonfinite_steps"] = int(counters["skipped_steps"])
        traced = sum(self.steps.traces.values()) > traces
        self.reporter.train_progress(step, done, elapsed, values, traced)
        return step, preemption.check(step)  # every worker saves at the same step, then stops

    def evaluate_and_checkpoint(self, step: int, last_step: int) -> None:
        cfg = self.cfg
        if step % cfg.train.eval_every == 0 or step == last_step:
            self.evaluation(step)
        if step % cfg.train.checkpoint_every == 0 or step == last_step:
            self.checkpointer.save(step)

    def finish(self, step: int) -> dict:
        self.window.stop()
        self.evaluation.ensure(step)
        self.reporter.close()
        logger.info(
            f"sample: {self.cfg.train.sample_prompt}{self.evaluation.sample}", extra={"step": step}
        )
        return {
            "step": step,
            "val_loss": self.evaluation.val_loss,
            "traces": dict(self.steps.traces),
            "skipped_steps": int(self.counters["skipped_steps"]),
            "rollbacks": int(self.counters["rollbacks"]),
            # The model trained: a fine-tuning run's is its base's, not the command line's.
            "vocabulary_size": self.cfg.model.vocabulary_size,
        }
