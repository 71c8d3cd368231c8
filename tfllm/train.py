"""`python -m tfllm.train`: train a decoder-only LM under a tf.distribute strategy.

    python -m tfllm.train [--config FILE ...] [--set section.key=value ...]

With no arguments it trains `configs/tiny.yaml` on the built-in corpus (the running Python's
standard library), preparing the shards first when they are missing. Running it again on the
same workdir resumes from the latest checkpoint.

The loop, top to bottom: restore -> [host loop of steps_per_loop XLA-compiled steps -> log ->
evaluate / checkpoint every N steps] -> final evaluation, checkpoint and a generated sample.
"""

from __future__ import annotations

import math
import time

import tensorflow as tf

from tfllm import cli, data, flops, generate, prepare, profiling, records
from tfllm.checkpoint import Checkpointer
from tfllm.config import Config, save_config
from tfllm.metrics import Reporter
from tfllm.model import build_model
from tfllm.optim import clip_by_global_norm, make_optimizer

SUM = tf.distribute.ReduceOp.SUM


def token_loss_sum(model, inputs, targets, training: bool) -> tf.Tensor:
    """Sum of next-token cross-entropies over every target in the batch."""
    logits = model(inputs, training=training)  # (B, T, V) float32
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.reduce_sum(losses)


class Steps:
    """The compiled functions of one run: the train host loop and the eval step.

    The per-replica gradient computation is XLA-compiled on its own inside `strategy.run`
    (compiling the whole multi-device function fails under MirroredStrategy); all-reduce,
    clipping and the optimizer update run around it in the same graph.
    """

    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy, model, optimizer):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.clip_norm = cfg.train.grad_clip_norm
        self.traces = {"gradients": 0, "eval": 0}
        self._gradients = tf.function(self._gradients_fn, jit_compile=cfg.train.jit_compile)
        self._eval = tf.function(self._eval_fn, jit_compile=cfg.train.jit_compile)
        self.train_loop = tf.function(self._train_loop_fn)
        self.eval_step = tf.function(self._eval_step_fn)

    def _gradients_fn(self, inputs, targets, global_tokens):
        self.traces["gradients"] += 1  # Python side effect: runs once per trace
        with tf.GradientTape() as tape:
            loss = token_loss_sum(self.model, inputs, targets, training=True) / global_tokens
        return loss, tape.gradient(loss, self.model.trainable_variables)

    def _replica_step(self, inputs, targets):
        ctx = tf.distribute.get_replica_context()
        # Loss is a mean over the global target count, so it does not depend on the split.
        global_tokens = ctx.all_reduce(SUM, tf.cast(tf.size(targets), tf.float32))
        loss, grads = self._gradients(inputs, targets, global_tokens)
        loss, grads = ctx.all_reduce(SUM, [loss, grads])
        grads, grad_norm = clip_by_global_norm(grads, self.clip_norm)
        self.optimizer.apply(grads, self.model.trainable_variables)
        return loss, grad_norm

    def _train_loop_fn(self, iterator, num_steps):
        loss_sum = tf.constant(0.0)
        norm_sum = tf.constant(0.0)
        for _ in tf.range(num_steps):
            inputs, targets = next(iterator)
            loss, grad_norm = self.strategy.run(self._replica_step, args=(inputs, targets))
            # Both are already all-reduced: every replica holds the same value.
            loss_sum += self.strategy.experimental_local_results(loss)[0]
            norm_sum += self.strategy.experimental_local_results(grad_norm)[0]
        steps = tf.cast(num_steps, tf.float32)
        return loss_sum / steps, norm_sum / steps

    def _eval_fn(self, inputs, targets):
        self.traces["eval"] += 1
        loss = token_loss_sum(self.model, inputs, targets, training=False)
        return loss, tf.cast(tf.size(targets), tf.float32)

    def _eval_step_fn(self, inputs, targets):
        loss, count = self.strategy.run(self._eval, args=(inputs, targets))
        return self.strategy.reduce(SUM, loss, axis=None), self.strategy.reduce(
            SUM, count, axis=None
        )


def evaluate(steps: Steps, dataset) -> float:
    """Mean validation loss per target token over the fixed evaluation batches."""
    total, count = 0.0, 0.0
    for inputs, targets in dataset:
        loss, tokens = steps.eval_step(inputs, targets)
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
    """
    strategy = strategy or tf.distribute.get_strategy()
    manifest = prepare.ensure_prepared(cfg, log)
    directory = prepare.data_dir(cfg)
    tf.io.gfile.makedirs(cfg.runtime.workdir)
    save_config(cfg, f"{cfg.runtime.workdir}/config.yaml")
    tf.keras.utils.set_random_seed(cfg.train.seed)

    with strategy.scope():
        model = build_model(cfg.model)
        optimizer = make_optimizer(cfg.train, model.trainable_variables)
    checkpointer = Checkpointer(cfg.runtime.workdir, model, optimizer, cfg.train.keep_checkpoints)
    restored = checkpointer.restore_latest()
    step = int(optimizer.iterations.numpy())
    log(
        f"model: {model.count_params():,} parameters; "
        + (f"resumed from {restored} at step {step}" if restored else "starting from scratch")
    )

    replicas = strategy.num_replicas_in_sync
    batch, tokens_per_step = (
        cfg.train.global_batch_size,
        cfg.train.global_batch_size * cfg.data.seq_len,
    )
    train_ds = strategy.distribute_datasets_from_function(
        lambda ctx: data.train_dataset(
            directory,
            manifest,
            ctx.get_per_replica_batch_size(batch),
            cfg.train.seed,
            cfg.data.shuffle_buffer,
            start_step=step,
            input_context=ctx,
        )
    )
    eval_ds = strategy.distribute_datasets_from_function(
        lambda ctx: data.eval_dataset(
            directory, manifest, ctx.get_per_replica_batch_size(batch), cfg.train.eval_batches, ctx
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

    iterator = iter(train_ds)
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
        with profiling.step_trace(step + 1):
            loss, grad_norm = steps.train_loop(iterator, tf.constant(loop_steps))
            loss = float(loss)  # waits for the loop: the timing and the annotation are real
        elapsed = time.time() - started
        step += loop_steps
        window.after_loop(step)
        reporter.train_progress(
            step, loop_steps, elapsed, loop_values(loss, grad_norm, model, optimizer)
        )
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
    return {"step": step, "val_loss": val_loss, "traces": dict(steps.traces)}


def main(argv: list[str] | None = None) -> int:
    args = cli.make_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = cli.config_from_args(args)
    started = time.time()
    result = train(cfg)
    print(
        f"done: step {result['step']}, validation loss {result['val_loss']:.4f} "
        f"(ln V = {math.log(cfg.model.vocabulary_size):.2f}) in {time.time() - started:.0f}s"
    )
    return 0


if __name__ == "__main__":
    cli.run_command(main)
