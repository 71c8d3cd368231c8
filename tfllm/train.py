"""`python -m tfllm.train`: train a decoder-only LM under a tf.distribute strategy.

    python -m tfllm.train [--config FILE ...] [--set section.key=value ...]
                          [--strategy auto|cpu|gpu|mirrored|multiworker|tpu] [--tpu NAME]

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

from tfllm import cli, data, distribute, generate, prepare, records, tokenizer
from tfllm.checkpoint import Checkpointer
from tfllm.config import Config, save_config
from tfllm.errors import ConfigError, DataError
from tfllm.metrics import Reporter
from tfllm.model import build_model
from tfllm.optim import clip_by_global_norm, completed_steps, loss_scale, make_optimizer

SUM = tf.distribute.ReduceOp.SUM


def token_loss_sum(model, inputs, targets, training: bool) -> tf.Tensor:
    """Sum of next-token cross-entropies over every target in the batch."""
    logits = model(inputs, training=training)  # (B, T, V) float32
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.reduce_sum(losses)


class Steps:
    """The compiled functions of one run: the train host loop and the eval step.

    The per-replica gradient computation (all micro-batches of gradient accumulation included)
    is XLA-compiled on its own inside `strategy.run`: compiling the whole multi-device function
    fails under MirroredStrategy. All-reduce, clipping, loss scaling and the optimizer update
    run around it in the same graph.
    """

    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy, model, optimizer):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.clip_norm = cfg.train.grad_clip_norm
        self.accum = cfg.train.grad_accum_steps
        self.traces = {"train_loop": 0, "gradients": 0, "eval": 0}
        self._gradients = tf.function(self._gradients_fn, jit_compile=cfg.train.jit_compile)
        self._eval = tf.function(self._eval_fn, jit_compile=cfg.train.jit_compile)
        self.train_loop = tf.function(self._train_loop_fn)
        self.eval_step = tf.function(self._eval_step_fn)

    def _micro_gradients(self, inputs, targets, global_tokens, scale):
        with tf.GradientTape() as tape:
            loss = token_loss_sum(self.model, inputs, targets, training=True) / global_tokens
            scaled = loss * scale
        grads = tape.gradient(scaled, self.model.trainable_variables)
        # The embedding's gradient is IndexedSlices: densify to sum and all-reduce it.
        return loss, [tf.convert_to_tensor(g) for g in grads]

    def _gradients_fn(self, inputs, targets, global_tokens, scale):
        """This replica's (loss, scaled grads), summed over `accum` micro-batches that run one
        after another, so only one micro-batch's activations are alive at a time."""
        self.traces["gradients"] += 1  # Python side effect: runs once per trace
        micro_inputs = tf.reshape(inputs, [self.accum, -1, inputs.shape[-1]])  # (A, B/A, T)
        micro_targets = tf.reshape(targets, [self.accum, -1, targets.shape[-1]])
        loss, grads = self._micro_gradients(micro_inputs[0], micro_targets[0], global_tokens, scale)
        for i in tf.range(1, self.accum):
            micro_loss, micro_grads = self._micro_gradients(
                micro_inputs[i], micro_targets[i], global_tokens, scale
            )
            loss += micro_loss
            grads = [g + m for g, m in zip(grads, micro_grads, strict=True)]
        return loss, grads

    def _replica_step(self, inputs, targets):
        ctx = tf.distribute.get_replica_context()
        # Loss is a mean over the global target count, so it does not depend on the split.
        global_tokens = ctx.all_reduce(SUM, tf.cast(tf.size(targets), tf.float32))
        scale = loss_scale(self.optimizer)
        loss, grads = self._gradients(inputs, targets, global_tokens, scale)
        loss, grads = ctx.all_reduce(SUM, [loss, grads])
        grads, grad_norm = clip_by_global_norm(grads, self.clip_norm, scale)
        # A loss-scale optimizer unscales, and skips the update when any gradient is inf/NaN.
        self.optimizer.apply(grads, self.model.trainable_variables)
        return loss, grad_norm

    def _train_loop_fn(self, iterator, num_steps):
        self.traces["train_loop"] += 1
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
        # A plain Python replica function around the compiled one: handed to `strategy.run`
        # directly, a jit-compiled tf.function loses the replica's device scope and reads the
        # other replica's variables ("Trying to access resource ... located in device CPU:1").
        loss, count = self.strategy.run(lambda x, y: self._eval(x, y), args=(inputs, targets))
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


def validate_run(cfg: Config, replicas: int, input_pipelines: int, num_shards: int) -> None:
    """What the config alone cannot check: the batch split and the shards per input pipeline.
    Runs before anything is built or compiled."""
    t = cfg.train
    if t.global_batch_size % (replicas * t.grad_accum_steps):
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) must be divisible by replicas "
            f"({replicas}) x train.grad_accum_steps ({t.grad_accum_steps})"
        )
    if num_shards < input_pipelines:
        raise DataError(
            f"{num_shards} training shards cannot feed {input_pipelines} input pipelines "
            "(one per host); prepare with a smaller data.records_per_shard"
        )


def train(cfg: Config, strategy: tf.distribute.Strategy | None = None, log=print) -> dict:
    """Runs (or resumes) training to `cfg.train.steps`; returns the final metrics.

    Without `strategy`, starts the one `cfg.runtime.strategy` names.
    """
    strategy = strategy or distribute.make_strategy(cfg.runtime, log)
    manifest = prepare.ensure_prepared(cfg, log)
    directory = prepare.data_dir(cfg)
    replicas = strategy.num_replicas_in_sync
    validate_run(
        cfg,
        replicas,
        distribute.num_input_pipelines(strategy),
        len(records.shard_paths(directory, manifest, "train")),
    )
    tf.io.gfile.makedirs(cfg.runtime.workdir)
    save_config(cfg, f"{cfg.runtime.workdir}/config.yaml")
    tf.keras.utils.set_random_seed(cfg.train.seed)

    with strategy.scope():
        model = build_model(cfg.model, cfg.train.precision, cfg.train.remat)
        optimizer = make_optimizer(cfg.train, model.trainable_variables)
    resolver = strategy.cluster_resolver
    checkpointer = Checkpointer(
        cfg.runtime.workdir,
        model,
        optimizer,
        cfg.train.keep_checkpoints,
        chief=strategy.extended.should_checkpoint,
        worker_id=resolver.task_id if resolver is not None and resolver.task_id else 0,
    )
    restored = checkpointer.restore_latest()
    step = completed_steps(optimizer)
    log(
        f"model: {model.count_params():,} parameters; "
        + (f"resumed from {restored} at step {step}" if restored else "starting from scratch")
    )

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
    # Every host evaluates its slice of the same global batches: the validation loss is the
    # same number under every strategy, and a small validation split needs no shard per host.
    eval_ds = distribute.global_batches(
        strategy,
        lambda: data.eval_dataset(directory, manifest, batch, cfg.train.eval_batches),
        batch,
    )
    steps = Steps(cfg, strategy, model, optimizer)
    reporter = Reporter(cfg.runtime.workdir, cfg.train.steps)
    log(
        f"training to step {cfg.train.steps}: {replicas} replica(s) x "
        f"{batch // replicas // cfg.train.grad_accum_steps} rows x "
        f"{cfg.train.grad_accum_steps} micro-batch(es) = {batch} rows, {tokens_per_step} tokens "
        f"per step, {cfg.train.precision}" + (", remat" if cfg.train.remat else "")
    )

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
        loss, grad_norm = steps.train_loop(iterator, tf.constant(loop_steps))
        loss = float(loss)  # waits for the loop: the timing below is real
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
    skipped = step - int(optimizer.iterations.numpy())
    if cfg.train.precision == "mixed_float16":
        log(f"loss scaling skipped {skipped} step(s) with inf/NaN gradients")
    return {
        "step": step,
        "val_loss": val_loss,
        "skipped_steps": skipped,
        "traces": dict(steps.traces),
    }


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    cli.add_strategy_flags(parser)
    args = parser.parse_args(argv)
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
