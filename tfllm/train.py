"""`python -m tfllm.train`: train a decoder-only LM under a tf.distribute strategy.

    python -m tfllm.train [--config FILE ...] [--set section.key=value ...]

With no arguments it trains `configs/tiny.yaml` on the built-in corpus (the running Python's
standard library), preparing the shards first when they are missing. Running it again on the
same workdir resumes from the latest checkpoint.

The loop, top to bottom: lock the workdir -> restore the newest usable checkpoint -> [host loop
of steps_per_loop XLA-compiled steps -> non-finite policy -> log -> on SIGTERM/SIGINT save and
exit -> evaluate / checkpoint every N steps] -> final evaluation, checkpoint and a sample.
Exit codes are listed in `tfllm/faults.py` and the README.
"""

from __future__ import annotations

import contextlib
import math
import time

import tensorflow as tf

from tfllm import cli, data, faults, flops, generate, prepare, profiling, records, verify
from tfllm.checkpoint import Checkpointer
from tfllm.config import Config, save_config
from tfllm.metrics import Reporter
from tfllm.model import build_model
from tfllm.optim import clip_by_global_norm, make_optimizer
from tfllm.workdir_lock import WorkdirLock

SUM = tf.distribute.ReduceOp.SUM


def target_count(targets) -> tf.Tensor:
    """Targets that count in the loss: data.IGNORE marks padding and document boundaries."""
    return tf.reduce_sum(tf.cast(targets != data.IGNORE, tf.float32))


def token_loss_sum(model, inputs, targets, training: bool, segment_ids=None) -> tf.Tensor:
    """Sum of next-token cross-entropies over every counted target in the batch."""
    logits = model(inputs, segment_ids=segment_ids, training=training)  # (B, T, V) float32
    counted = targets != data.IGNORE
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(counted, targets, 0), logits=logits
    )
    return tf.reduce_sum(tf.where(counted, losses, 0.0))


class Steps:
    """The compiled functions of one run: the train host loop and the eval step.

    The per-replica gradient computation is XLA-compiled on its own inside `strategy.run`
    (compiling the whole multi-device function fails under MirroredStrategy); all-reduce,
    clipping and the optimizer update run around it in the same graph.
    """

    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy, model, optimizer):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.clip_norm = cfg.train.grad_clip_norm
        # stop and rollback end the host loop at the first non-finite step; skip carries on.
        self.halt_on_nonfinite = cfg.train.on_nonfinite != "skip"
        self.traces = {"gradients": 0, "eval": 0}
        self._gradients = tf.function(self._gradients_fn, jit_compile=cfg.train.jit_compile)
        self._eval = tf.function(self._eval_fn, jit_compile=cfg.train.jit_compile)
        self.train_loop = tf.function(self._train_loop_fn)
        self.eval_step = tf.function(self._eval_step_fn)

    def _gradients_fn(self, inputs, targets, global_tokens, segment_ids=None):
        self.traces["gradients"] += 1  # Python side effect: runs once per trace
        with tf.GradientTape() as tape:
            loss = token_loss_sum(self.model, inputs, targets, True, segment_ids) / global_tokens
        return loss, tape.gradient(loss, self.model.trainable_variables)

    def _replica_step(self, inputs, targets, segment_ids=None):
        ctx = tf.distribute.get_replica_context()
        # Loss is a mean over the global target count, so it does not depend on the split.
        global_tokens = ctx.all_reduce(SUM, target_count(targets))
        loss, grads = self._gradients(inputs, targets, global_tokens, segment_ids)
        loss, grads = ctx.all_reduce(SUM, [loss, grads])
        grads, grad_norm = clip_by_global_norm(grads, self.clip_norm)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(grad_norm)
        return loss, grad_norm, finite, grads

    # --- non-finite guard (fault tolerance) ---
    # The update runs under a tf.cond in cross-replica context: a cond inside the replica
    # function cannot hold the optimizer's merge_call under MirroredStrategy. loss and
    # grad_norm are all-reduced, so the condition is the same for every replica. A skipped
    # update leaves weights and optimizer slots as they were but still advances `iterations`:
    # the step counter is the data position and the schedule's step.
    def _apply_if_finite(self, finite, grads):
        def apply():
            self.strategy.run(
                lambda g: self.optimizer.apply(g, self.model.trainable_variables), args=(grads,)
            )
            return tf.constant(True)

        def skip():
            self.optimizer.iterations.assign_add(1)
            return tf.constant(False)

        return tf.cond(finite, apply, skip)

    def _train_loop_fn(self, iterator, num_steps):
        """Runs up to `num_steps` steps; returns means over finite steps and what was skipped."""
        loss_sum, norm_sum = tf.constant(0.0), tf.constant(0.0)
        done, skipped, first_bad = tf.constant(0), tf.constant(0), tf.constant(-1)
        for i in tf.range(num_steps):
            batch = next(iterator)  # (inputs, targets[, segment_ids])
            loss, norm, finite, grads = self.strategy.run(self._replica_step, args=batch)
            # All three are already all-reduced: every replica holds the same value.
            loss, norm, finite = (
                self.strategy.experimental_local_results(x)[0] for x in (loss, norm, finite)
            )
            self._apply_if_finite(finite, grads)
            done += 1
            bad = tf.logical_not(finite)
            loss_sum += tf.where(bad, 0.0, loss)
            norm_sum += tf.where(bad, 0.0, norm)
            skipped += tf.cast(bad, tf.int32)
            first_bad = tf.where(bad & (first_bad < 0), i, first_bad)
            if bad and self.halt_on_nonfinite:
                break
        good = tf.cast(done - skipped, tf.float32)  # NaN below when every step was skipped
        return {
            "loss": loss_sum / good,
            "grad_norm": norm_sum / good,
            "steps": done,
            "skipped": skipped,
            "first_bad": first_bad,
        }

    def _eval_fn(self, inputs, targets, segment_ids=None):
        self.traces["eval"] += 1
        loss = token_loss_sum(self.model, inputs, targets, False, segment_ids)
        return loss, target_count(targets)

    def _eval_step_fn(self, *batch):
        loss, count = self.strategy.run(self._eval, args=batch)
        return self.strategy.reduce(SUM, loss, axis=None), self.strategy.reduce(
            SUM, count, axis=None
        )


def evaluate(steps: Steps, dataset) -> float:
    """Mean validation loss per target token over the fixed evaluation batches."""
    total, count = 0.0, 0.0
    for batch in dataset:
        loss, tokens = steps.eval_step(*batch)
        total, count = total + float(loss), count + float(tokens)
    return total / max(count, 1.0)


def precision_of(cfg: Config) -> str:
    """The Keras dtype policy of the run (train.precision, once the config has it)."""
    return getattr(cfg.train, "precision", "float32")


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
    strategy = strategy or tf.distribute.get_strategy()
    tf.io.gfile.makedirs(cfg.runtime.workdir)
    # Under MultiWorkerMirroredStrategy every worker runs this on the same workdir: their
    # coordination belongs to the multi-worker checkpointing, not to this lock.
    resolver = getattr(strategy, "cluster_resolver", None)
    single = resolver is None or not resolver.cluster_spec().as_dict()
    lock = WorkdirLock(cfg.runtime.workdir, log) if single else contextlib.nullcontext()
    with lock, faults.PreemptionWatcher() as watcher:
        return _train(cfg, strategy, log, stop_after, watcher)


def _train(cfg: Config, strategy, log, stop_after, watcher: faults.PreemptionWatcher) -> dict:
    manifest = prepare.ensure_prepared(cfg, log)
    directory = prepare.data_dir(cfg)
    save_config(cfg, f"{cfg.runtime.workdir}/config.yaml")
    tf.keras.utils.set_random_seed(cfg.train.seed)

    with strategy.scope():
        model = build_model(cfg.model)
        optimizer = make_optimizer(cfg.train, model.trainable_variables)
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
    )
    restored = checkpointer.restore_latest()
    step = int(optimizer.iterations.numpy())
    log(
        f"model: {model.count_params():,} parameters; "
        + (f"resumed from {restored} at step {step}" if restored else "starting from scratch")
    )
    if restored is None and cfg.train.on_nonfinite == "rollback":
        checkpointer.save(step)  # something to roll back to before the first checkpoint

    replicas = strategy.num_replicas_in_sync
    batch, tokens_per_step = (
        cfg.train.global_batch_size,
        cfg.train.global_batch_size * cfg.data.seq_len,
    )
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

    eval_ds = strategy.distribute_datasets_from_function(
        lambda ctx: data.eval_dataset(
            val_shards, ctx.get_per_replica_batch_size(batch), cfg.train.eval_batches, ctx
        )
    )
    steps = Steps(cfg, strategy, model, optimizer)
    flops_per_token = flops.flops_per_token(cfg.model, cfg.data.seq_len)
    peak = flops.find_peak(cfg.runtime.peak_flops, precision_of(cfg), replicas)
    reporter = Reporter(
        cfg.runtime.workdir, cfg.train.steps, tokens_per_step, flops_per_token, peak
    )
    reporter.run_config(step, cfg)
    log(f"training to step {cfg.train.steps}: {replicas} replica(s), {tokens_per_step} tokens/step")
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
        if watcher.signum is not None:
            path = checkpointer.save(step)
            log(f"signal {watcher.signum}: saved {path} at step {step}; run again to resume")
            reporter.close()
            return {"step": step, "val_loss": math.nan, "preempted": watcher.signum}
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
        f"non-finite loss or gradients at step {bad_step} (loss {report['loss']:.4g}, "
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
    steps.optimizer.iterations.assign(bad_step + 1)
    log(
        f"{message}: rolled back to {restored}, skipping data up to step {bad_step} "
        f"(rollback {rollbacks + 1} of {cfg.train.max_rollbacks})"
    )
    return bad_step + 1


def main(argv: list[str] | None = None) -> int:
    args = cli.make_parser(__doc__.splitlines()[0]).parse_args(argv)
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
