"""`python -m tfllm.train`: train a decoder-only LM under a tf.distribute strategy.

    python -m tfllm.train [--config FILE ...] [--set section.key=value ...]
                          [--strategy auto|cpu|gpu|mirrored|multiworker|tpu] [--tpu NAME]

With no arguments it trains `configs/tiny.yaml` on the built-in corpus (the running Python's
standard library), preparing the shards first when they are missing. Running it again on the
same workdir resumes from the latest checkpoint.

The loop, top to bottom: lock the workdir -> restore the newest usable checkpoint -> [host loop
of steps_per_loop XLA-compiled steps -> non-finite policy -> log -> on SIGTERM/SIGINT save (all
workers at one step) and exit -> evaluate / checkpoint every N steps] -> final evaluation,
checkpoint and a sample.
Exit codes are listed in `tfllm/faults.py` and the README.
"""

from __future__ import annotations

import contextlib
import math
import time

import tensorflow as tf

from tfllm import (
    cli,
    data,
    distribute,
    faults,
    flops,
    generate,
    prepare,
    profiling,
    records,
    verify,
)
from tfllm.checkpoint import Checkpointer
from tfllm.config import Config, save_config
from tfllm.errors import ConfigError
from tfllm.metrics import Reporter
from tfllm.model import build_model
from tfllm.optim import completed_steps, make_optimizer, set_completed_steps
from tfllm.preemption import Preemption, PreemptionWatcher
from tfllm.steps import Steps, evaluate, token_loss_sum
from tfllm.workdir_lock import WorkdirLock


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
        "param_norm": float(tf.linalg.global_norm(model.trainable_variables)),
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
    manifest = prepare.ensure_prepared(cfg, log)
    directory = prepare.data_dir(cfg)
    save_config(cfg, f"{cfg.runtime.workdir}/config.yaml")
    tf.keras.utils.set_random_seed(cfg.train.seed)

    with strategy.scope():
        model = build_model(cfg.model, cfg.train.precision, cfg.train.remat)
        optimizer = make_optimizer(cfg.train, model.trainable_variables)
    resolver = getattr(strategy, "cluster_resolver", None)
    counters = {
        "skipped_steps": tf.Variable(0, dtype=tf.int64, trainable=False),
        "rollbacks": tf.Variable(0, dtype=tf.int64, trainable=False),
    }
    checkpointer = Checkpointer(
        cfg.runtime.workdir,
        model,
        optimizer,
        cfg.train.keep_checkpoints,
        model_config=cfg.to_dict()["model"],
        extras=counters,
        log=log,
        chief=strategy.extended.should_checkpoint,
        worker_id=resolver.task_id if resolver is not None and resolver.task_id else 0,
    )
    restored = checkpointer.restore_latest()
    step = completed_steps(optimizer)
    log(
        f"model: {model.count_params():,} parameters; "
        + (f"resumed from {restored} at step {step}" if restored else "starting from scratch")
    )
    if restored is None and cfg.train.on_nonfinite == "rollback":
        checkpointer.save(step)  # something to roll back to before the first checkpoint
    preemption = Preemption(strategy, watcher, checkpointer.save, cfg.runtime.workdir, log)

    replicas = strategy.num_replicas_in_sync
    batch = cfg.train.global_batch_size
    tokens_per_step = batch * cfg.data.seq_len
    train_shards, val_shards = (
        verify.check_split(directory, manifest, split, cfg.data.verify, cfg.data.on_corrupt, log)
        for split in ("train", "val")
    )

    def train_iterator(start_step: int):
        return iter(
            strategy.distribute_datasets_from_function(
                lambda ctx: data.train_dataset(
                    train_shards,
                    batch,
                    cfg.train.seed,
                    cfg.data.shuffle_buffer,
                    start_step=start_step,
                    input_context=ctx,
                )
            )
        )

    # Every host evaluates its slice of the same global batches: the validation loss is the
    # same number under every strategy, and a small validation split needs no shard per host.
    eval_ds = distribute.global_batches(
        strategy, lambda: data.eval_dataset(val_shards, batch, cfg.train.eval_batches), batch
    )
    steps = Steps(cfg, strategy, model, optimizer)
    flops_per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)
    peak = flops.find_peak(cfg.runtime.peak_flops, cfg.train.precision, replicas)
    reporter = Reporter(
        cfg.runtime.workdir, cfg.train.steps, tokens_per_step, flops_per_token, peak
    )
    reporter.run_config(step, cfg)
    log(
        f"training to step {cfg.train.steps}: {replicas} replica(s) x "
        f"{batch // replicas // cfg.train.grad_accum_steps} rows x "
        f"{cfg.train.grad_accum_steps} micro-batch(es) = {batch} rows, {tokens_per_step} tokens "
        f"per step, {cfg.train.precision}" + (", remat" if cfg.train.remat else "")
    )
    log(
        f"MFU: {flops_per_token['palm']:.3g} FLOPs/token (PaLM), "
        f"{flops_per_token['causal']:.3g} (causal); peak {peak.describe()}"
    )
    window = profiling.ProfileWindow(cfg.train.profile_steps, cfg.runtime.workdir, reporter.print)
    if cfg.runtime.profiler_port:
        profiling.start_server(cfg.runtime.profiler_port)
        log(f"profiler server on port {cfg.runtime.profiler_port} (TensorBoard: Capture profile)")

    generator = generate.Generator(model, f"{directory}/{records.TOKENIZER}")
    sample = ""

    def write_sample(at_step: int) -> str:
        text = generator.generate(
            [cfg.train.sample_prompt],
            max_new_tokens=min(cfg.train.sample_tokens, cfg.model.max_sequence_length - 1),
            temperature=0.8,
            seed=cfg.train.seed,
        )[0]
        reporter.text("val", at_step, "sample", cfg.train.sample_prompt + text)
        return text

    iterator = train_iterator(step)
    val_loss = math.nan
    last_step = min(cfg.train.steps, stop_after or cfg.train.steps)
    while step < last_step:
        boundary = min(
            last_step,
            (step // cfg.train.eval_every + 1) * cfg.train.eval_every,
            (step // cfg.train.checkpoint_every + 1) * cfg.train.checkpoint_every,
        )
        loop_steps = window.loop_length(step, min(cfg.train.steps_per_loop, boundary - step))
        window.before_loop(step)
        started = time.time()
        try:
            with profiling.step_trace(step + 1):
                out = steps.train_loop(iterator, tf.constant(loop_steps))
                done = int(out["steps"])  # waits for the loop: timing and annotation are real
        except tf.errors.InvalidArgumentError as err:
            data.raise_if_damaged_shard(err)
            raise
        elapsed = time.time() - started
        step += done
        window.after_loop(step)
        if int(out["skipped"]):
            bad_step = step - done + int(out["first_bad"])
            counters["skipped_steps"].assign_add(int(out["skipped"]))
            if cfg.train.on_nonfinite == "skip":
                log(
                    f"non-finite loss or gradients: skipped {int(out['skipped'])} update(s) "
                    f"in steps {step - done}..{step - 1} "
                    f"({int(counters['skipped_steps'])} in all)"
                )
            else:
                step = _roll_back_or_stop(
                    cfg, steps, train_shards, checkpointer, counters, bad_step, log
                )
                iterator = train_iterator(step)
                continue
        values = loop_values(float(out["loss"]), out["grad_norm"], model, optimizer)
        values["nonfinite_steps"] = int(counters["skipped_steps"])
        reporter.train_progress(step, done, elapsed, values)
        signum = preemption.check(step)  # every worker saves at the same step, then stops
        if signum is not None:
            reporter.close()
            return {"step": step, "val_loss": math.nan, "preempted": signum}
        if step % cfg.train.eval_every == 0 or step == last_step:
            val_loss = evaluate(steps, eval_ds)
            reporter.scalars("val", step, {"loss": val_loss, "perplexity": math.exp(val_loss)})
            reporter.print(f"step {step}: validation loss {val_loss:.4f}")
            sample = write_sample(step)
        if step % cfg.train.checkpoint_every == 0 or step == last_step:
            checkpointer.save(step)
    window.stop()

    if math.isnan(val_loss):  # resumed at the end: still report where the model stands
        val_loss = evaluate(steps, eval_ds)
        sample = write_sample(step)
    reporter.close()
    log(f"sample: {cfg.train.sample_prompt}{sample}")
    return {
        "step": step,
        "val_loss": val_loss,
        "traces": dict(steps.traces),
        "skipped_steps": int(counters["skipped_steps"]),
        "rollbacks": int(counters["rollbacks"]),
    }


def _roll_back_or_stop(
    cfg: Config, steps: Steps, train_shards, checkpointer, counters, bad_step, log
) -> int:
    """Handles the first non-finite step of a host loop under `stop` or `rollback`.

    Writes the diagnostics; then either raises NonFiniteError, or restores the newest good
    checkpoint (step c) and returns `bad_step + 1`: the data window c+1..bad_step is skipped
    and the step counter jumps with it, so the schedule and the data stream stay aligned.
    """
    batch = next(
        iter(
            data.train_dataset(
                train_shards,
                cfg.train.global_batch_size,
                cfg.train.seed,
                cfg.data.shuffle_buffer,
                start_step=bad_step,
            )
        )
    )
    # The loop stopped at bad_step without updating, so these are the weights it saw.
    report = faults.gradient_report(steps.model, token_loss_sum, batch, bad_step)
    path = faults.write_diagnostics(cfg.runtime.workdir, report)
    message = (
        f"non-finite loss or gradients at step {bad_step} (loss {report['loss']:.4g} over "
        f"{report['counted_targets']} targets, "
        f"{len(report['nonfinite_gradients'])} non-finite gradient(s); diagnostics: {path})"
    )
    rollbacks = int(counters["rollbacks"])
    if cfg.train.on_nonfinite == "stop":
        raise faults.NonFiniteError(message)
    if rollbacks >= cfg.train.max_rollbacks:
        raise faults.NonFiniteError(
            f"{message}; train.max_rollbacks={cfg.train.max_rollbacks} rollbacks used up"
        )
    skipped = int(counters["skipped_steps"])
    restored = checkpointer.restore_latest()
    # Restore brought back the counters of the old checkpoint: the run's totals win.
    counters["rollbacks"].assign(rollbacks + 1)
    counters["skipped_steps"].assign(skipped)
    set_completed_steps(steps.optimizer, bad_step + 1)
    log(
        f"{message}: rolled back to {restored}, skipping data up to step {bad_step} "
        f"(rollback {rollbacks + 1} of {cfg.train.max_rollbacks})"
    )
    return bad_step + 1


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    cli.add_strategy_flags(parser)
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    started = time.time()
    result = train(cfg)
    if result.get("preempted"):
        code = faults.exit_code_for(result["preempted"])
        print(f"stopped by signal {result['preempted']} at step {result['step']}: exit {code}")
        return code
    print(
        f"done: step {result['step']}, validation loss {result['val_loss']:.4f} "
        f"(ln V = {math.log(cfg.model.vocabulary_size):.2f}) in {time.time() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    cli.run_command(main)
