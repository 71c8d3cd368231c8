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

from tfllm import cli, data, generate, prepare, records, tokenizer, verify
from tfllm.checkpoint import Checkpointer
from tfllm.config import Config, save_config
from tfllm.metrics import Reporter
from tfllm.model import build_model
from tfllm.optim import clip_by_global_norm, make_optimizer

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
        self.optimizer.apply(grads, self.model.trainable_variables)
        return loss, grad_norm

    def _train_loop_fn(self, iterator, num_steps):
        loss_sum = tf.constant(0.0)
        norm_sum = tf.constant(0.0)
        for _ in tf.range(num_steps):
            batch = next(iterator)  # (inputs, targets[, segment_ids])
            loss, grad_norm = self.strategy.run(self._replica_step, args=batch)
            # Both are already all-reduced: every replica holds the same value.
            loss_sum += self.strategy.experimental_local_results(loss)[0]
            norm_sum += self.strategy.experimental_local_results(grad_norm)[0]
        steps = tf.cast(num_steps, tf.float32)
        return loss_sum / steps, norm_sum / steps

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


def train(cfg: Config, strategy: tf.distribute.Strategy | None = None, log=print) -> dict:
    """Runs (or resumes) training to `cfg.train.steps`; returns the final metrics."""
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
    train_shards, val_shards = (
        verify.check_split(directory, manifest, split, cfg.data.verify, cfg.data.on_corrupt, log)
        for split in ("train", "val")
    )
    train_ds = strategy.distribute_datasets_from_function(
        lambda ctx: data.train_dataset(
            train_shards,
            batch,
            cfg.train.seed,
            cfg.data.shuffle_buffer,
            start_step=step,
            input_context=ctx,
        )
    )
    eval_ds = strategy.distribute_datasets_from_function(
        lambda ctx: data.eval_dataset(
            val_shards, ctx.get_per_replica_batch_size(batch), cfg.train.eval_batches, ctx
        )
    )
    steps = Steps(cfg, strategy, model, optimizer)
    reporter = Reporter(cfg.runtime.workdir, cfg.train.steps)
    log(f"training to step {cfg.train.steps}: {replicas} replica(s), {tokens_per_step} tokens/step")

    iterator = iter(train_ds)
    val_loss = math.nan
    while step < cfg.train.steps:
        boundary = min(
            cfg.train.steps,
            (step // cfg.train.eval_every + 1) * cfg.train.eval_every,
            (step // cfg.train.checkpoint_every + 1) * cfg.train.checkpoint_every,
        )
        loop_steps = min(cfg.train.steps_per_loop, boundary - step)
        started = time.time()
        try:
            loss, grad_norm = steps.train_loop(iterator, tf.constant(loop_steps))
            loss = float(loss)  # waits for the loop: the timing below is real
        except tf.errors.InvalidArgumentError as err:
            data.raise_if_damaged_shard(err)
            raise
        elapsed = time.time() - started
        step += loop_steps
        reporter.train_progress(
            step,
            {
                "loss": loss,
                "perplexity": math.exp(min(loss, 50.0)),
                "learning_rate": float(optimizer.learning_rate),
                "grad_norm": float(grad_norm),
                "tokens_per_second": loop_steps * tokens_per_step / elapsed,
                "loop_steps": loop_steps,
            },
        )
        if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
            val_loss = evaluate(steps, eval_ds)
            reporter.scalars("val", step, {"loss": val_loss, "perplexity": math.exp(val_loss)})
            reporter.print(f"step {step}: validation loss {val_loss:.4f}")
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            checkpointer.save(step)

    if math.isnan(val_loss):  # resumed at the end: still report where the model stands
        val_loss = evaluate(steps, eval_ds)
    sp = tokenizer.load_tokenizer(f"{directory}/{records.TOKENIZER}")
    sample = generate.sample_text(
        model, sp, cfg.train.sample_prompt, cfg.train.sample_tokens, seed=cfg.train.seed
    )
    reporter.text("val", step, "sample", cfg.train.sample_prompt + sample)
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
