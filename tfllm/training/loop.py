"""The training loop (`python -m tfllm.train` calls `train`).

The loop, top to bottom: lock the workdir -> restore the newest usable checkpoint -> [host loop
of steps_per_loop XLA-compiled steps -> non-finite policy -> log -> on SIGTERM/SIGINT save (all
workers at one step) and exit -> evaluate / checkpoint every N steps] -> final evaluation,
checkpoint and a sample.
Exit codes are listed in `tfllm/training/faults.py` and the README.
"""

from __future__ import annotations

import contextlib
import math
import time

import tensorflow as tf

from tfllm.config import Config, save_config
from tfllm.data import prepare, reader, verify
from tfllm.errors import ConfigError
from tfllm.model import lora
from tfllm.model.lm import build_model
from tfllm.observe import flops, memory, profiling
from tfllm.observe.metrics import Reporter
from tfllm.runs import finetune, trained
from tfllm.runs.checkpoint import Checkpointer
from tfllm.runs.lock import WorkdirLock
from tfllm.serve import generate
from tfllm.training import distribute, faults
from tfllm.training.optim import completed_steps, make_optimizer
from tfllm.training.preemption import Preemption, PreemptionWatcher
from tfllm.training.steps import Steps, evaluate


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
    log=print,
    stop_after: int | None = None,
) -> dict:
    """Runs (or resumes) training to `cfg.train.steps`; returns the final metrics.

    `stop_after` ends this call early at that step (checkpointed), with the schedule still
    planned for `cfg.train.steps`: a job that runs in chunks resumes exactly where it stopped.
    SIGTERM or SIGINT end it at the next loop boundary with a checkpoint; the result then
    holds `preempted`, the signal number.

    Raises:
        TfllmError: another process holds the workdir, or no checkpoint is usable.
        faults.NonFiniteError: a non-finite loss that the `train.on_nonfinite` policy stops on.
    """
    strategy = strategy or distribute.make_strategy(cfg.runtime, log)
    validate_run(cfg, strategy.num_replicas_in_sync)
    tf.io.gfile.makedirs(cfg.runtime.workdir)
    # Under MultiWorkerMirroredStrategy every worker of a job runs on the same workdir: the
    # chief, the one writer of checkpoints, holds the lock for the job, so a second job is
    # refused at its chief; the other workers write only scratch directories of their own.
    chief = strategy.extended.should_checkpoint
    lock = WorkdirLock(cfg.runtime.workdir, log) if chief else contextlib.nullcontext()
    with lock, PreemptionWatcher() as watcher:
        return _train(cfg, strategy, log, stop_after, watcher)


def _train(cfg: Config, strategy, log, stop_after, watcher: PreemptionWatcher) -> dict:
    run = _Run(cfg, strategy, log)
    step = run.restore()
    preemption = Preemption(strategy, watcher, run.checkpointer.save, cfg.runtime.workdir, log)
    run.compile(step)
    last_step = min(cfg.train.steps, stop_after or cfg.train.steps)
    while step < last_step:
        step, preempted = run.host_loop(step, last_step, preemption)
        if preempted is not None:
            run.reporter.close()
            return {"step": step, "val_loss": math.nan, "preempted": preempted}
        run.evaluate_and_checkpoint(step, last_step)
    return run.finish(step)


def new_counters() -> dict[str, tf.Variable]:
    """The run's totals that a checkpoint carries besides the model and the optimizer."""
    return {
        "skipped_steps": tf.Variable(0, dtype=tf.int64, trainable=False),
        "rollbacks": tf.Variable(0, dtype=tf.int64, trainable=False),
    }


def make_checkpointer(
    cfg: Config, model, optimizer, counters: dict, strategy=None, log=print, base=None
):
    """The trainer's Checkpointer: what `tfllm.train` writes is exactly what this saves
    (`model` is a LoRA run's adapters, `base` its base's identity)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    return Checkpointer(
        cfg.runtime.workdir,
        model,
        optimizer,
        cfg.train.keep_checkpoints,
        model_config=cfg.to_dict()["model"],
        extras=counters,
        log=log,
        chief=strategy.extended.should_checkpoint,
        worker_id=resolver.task_id if resolver is not None and resolver.task_id else 0,
        base=base,
    )


class _Run:
    """One training session's state, in the order the loop uses it: `restore` (data, model,
    optimizer, newest checkpoint), `compile` (inputs, steps, reporting), `host_loop` (one call
    of up to steps_per_loop compiled steps and the non-finite policy),
    `evaluate_and_checkpoint`, `finish`."""

    def __init__(self, cfg: Config, strategy, log):
        self.cfg, self.strategy, self.log = cfg, strategy, log
        self.val_loss, self.sample = math.nan, ""

    def restore(self) -> int:
        self.cfg = cfg = finetune.resolve(self.cfg, self.log)
        log, t = self.log, cfg.train
        self.manifest = prepare.ensure_prepared(cfg, log)
        self.directory = prepare.data_dir(cfg)
        save_config(cfg, f"{cfg.runtime.workdir}/config.yaml")
        tf.keras.utils.set_random_seed(t.seed)
        # A frozen bfloat16 base is held (and computes) in bfloat16; the adapters stay float32.
        precision = "bfloat16" if t.base_precision == "bfloat16" else t.precision
        with self.strategy.scope():
            self.model = build_model(cfg.model, precision, t.remat)
        base = trained.load_base(cfg, self.model, log) if t.init_from else None
        with self.strategy.scope():
            adapters = lora.attach(self.model, t) if t.lora_rank else None
            self.optimizer = make_optimizer(t, lora.trainable_variables(self.model))
        self.counters = new_counters()
        self.checkpointer = make_checkpointer(
            cfg,
            adapters or self.model,
            self.optimizer,
            self.counters,
            self.strategy,
            log,
            base=base if adapters else None,
        )
        self.check_memory()
        restored = self.checkpointer.restore_latest()
        step = completed_steps(self.optimizer)
        log(
            f"model: {self.model.count_params():,} parameters; "
            + (f"resumed from {restored} at step {step}" if restored else "starting from scratch")
        )
        if restored is None and cfg.train.on_nonfinite == "rollback":
            self.checkpointer.save(step)  # something to roll back to before the first one
        return step

    def check_memory(self) -> None:
        """Prints the memory estimate; refuses a run whose estimate exceeds the device's."""
        cfg = self.cfg
        trained_params = sum(math.prod(v.shape) for v in lora.trainable_variables(self.model))
        replicas = self.strategy.num_replicas_in_sync
        sizes = memory.estimate(cfg, self.model.count_params(), trained_params, replicas)
        self.log(memory.describe(cfg, sizes, trained_params))
        limit = memory.device_limit(cfg.runtime.device_memory_gb)
        if limit is not None and sizes["total"] > limit:
            raise ConfigError(
                f"the run needs at least {sizes['total'] / memory.GIB:.3g} GiB per replica, the "
                f"device has {limit / memory.GIB:.3g} GiB: lower train.global_batch_size or "
                "data.seq_len, raise train.grad_accum_steps, set train.remat=true, or use LoRA"
            )

    def compile(self, step: int) -> None:
        """Inputs, the compiled steps, reporting and the profiler (compiled at the first call)."""
        cfg, log, strategy = self.cfg, self.log, self.strategy
        replicas = strategy.num_replicas_in_sync
        batch = cfg.train.global_batch_size
        tokens_per_step = batch * cfg.data.seq_len
        self.train_shards, val_shards = (
            verify.check_split(
                self.directory, self.manifest, split, cfg.data.verify, cfg.data.on_corrupt, log
            )
            for split in ("train", "val")
        )
        # Every host evaluates its slice of the same global batches: the validation loss is the
        # same number under every strategy, and a small validation split needs no shard per host.
        self.eval_ds = distribute.global_batches(
            strategy, lambda: reader.eval_dataset(val_shards, batch, cfg.train.eval_batches), batch
        )
        self.steps = Steps(cfg, strategy, self.model, self.optimizer)
        flops_per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)
        peak = flops.find_peak(cfg.runtime.peak_flops, cfg.train.precision, replicas)
        self.reporter = Reporter(
            cfg.runtime.workdir, cfg.train.steps, tokens_per_step, flops_per_token, peak
        )
        self.reporter.run_config(step, cfg, self.model.count_params())
        log(
            f"training to step {cfg.train.steps}: {replicas} replica(s) x "
            f"{batch // replicas // cfg.train.grad_accum_steps} rows x "
            f"{cfg.train.grad_accum_steps} micro-batch(es) = {batch} rows, {tokens_per_step} "
            f"tokens per step, {cfg.train.precision}" + (", remat" if cfg.train.remat else "")
        )
        log(
            f"MFU: {flops_per_token['palm']:.3g} FLOPs/token (PaLM), "
            f"{flops_per_token['causal']:.3g} (causal); peak {peak.describe()}"
        )
        self.window = profiling.ProfileWindow(
            cfg.train.profile_steps, cfg.runtime.workdir, self.reporter.print
        )
        if cfg.runtime.profiler_port:
            profiling.start_server(cfg.runtime.profiler_port)
            port = cfg.runtime.profiler_port
            log(f"profiler server on port {port} (TensorBoard: Capture profile)")
        self.generator = generate.Generator(self.model, prepare.tokenizer_path(cfg))
        self.eval_engine = None
        if cfg.train.eval_tasks:  # a bad name or task file fails now, not at the first eval
            from tfllm.eval import run

            self.eval_task_list = run.load_tasks(cfg.train.eval_tasks)
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
                    start_step=start_step,
                    input_context=ctx,
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
                self.log(
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
                    self.log,
                )
                self.iterator = self.train_iterator(step)
                return step, None
        values = loop_values(float(out["loss"]), out["grad_norm"], self.model, self.optimizer)
        values["nonfinite_steps"] = int(counters["skipped_steps"])
        traced = sum(self.steps.traces.values()) > traces
        self.reporter.train_progress(step, done, elapsed, values, traced)
        return step, preemption.check(step)  # every worker saves at the same step, then stops

    def evaluate_and_checkpoint(self, step: int, last_step: int) -> None:
        cfg = self.cfg
        if step % cfg.train.eval_every == 0 or step == last_step:
            self.evaluate(step)
        if step % cfg.train.checkpoint_every == 0 or step == last_step:
            self.checkpointer.save(step)

    def evaluate(self, step: int) -> None:
        self.val_loss = evaluate(self.steps, self.eval_ds)
        self.reporter.scalars(
            "val", step, {"loss": self.val_loss, "perplexity": math.exp(self.val_loss)}
        )
        self.reporter.print(f"step {step}: validation loss {self.val_loss:.4f}")
        if self.cfg.train.eval_tasks:
            self.run_eval_tasks(step)
        self.sample = self.write_sample(step)

    def run_eval_tasks(self, step: int) -> None:
        """train.eval_tasks on the training model (built once: compiled scoring, cached
        decoding), as `val/<task>/<metric>` scalars."""
        from tfllm.eval import engine, run

        if self.eval_engine is None:
            tokenizer = prepare.tokenizer_path(self.cfg)
            self.eval_engine = engine.model_engine(self.model, tokenizer)
        rows = run.evaluate(self.eval_engine, self.eval_task_list)
        values = {f"{r['task']}/{r['metric']}": r["value"] for r in rows}
        self.reporter.scalars("val", step, values)
        self.reporter.print(
            f"step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items())
        )

    def write_sample(self, step: int) -> str:
        cfg = self.cfg
        text = self.generator.generate(
            [cfg.train.sample_prompt],
            max_new_tokens=min(cfg.train.sample_tokens, cfg.model.max_sequence_length - 1),
            temperature=0.8,
            seed=cfg.train.seed,
        )[0]
        self.reporter.text("val", step, "sample", cfg.train.sample_prompt + text)
        return text

    def finish(self, step: int) -> dict:
        self.window.stop()
        if math.isnan(self.val_loss):  # resumed at the end: still report where the model stands
            self.val_loss = evaluate(self.steps, self.eval_ds)
            self.sample = self.write_sample(step)
        self.reporter.close()
        self.log(f"sample: {self.cfg.train.sample_prompt}{self.sample}")
        return {
            "step": step,
            "val_loss": self.val_loss,
            "traces": dict(self.steps.traces),
            "skipped_steps": int(self.counters["skipped_steps"]),
            "rollbacks": int(self.counters["rollbacks"]),
        }
