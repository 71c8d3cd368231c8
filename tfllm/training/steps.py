"""The compiled training and evaluation steps of one run, under any tf.distribute strategy.

The per-replica gradient computation (every micro-batch of gradient accumulation included) is
XLA-compiled on its own inside `strategy.run`: compiling the whole multi-device function fails
under MirroredStrategy. All-reduce, clipping, loss scaling, the non-finite guard and the
optimizer update run around it in the same graph, and a host loop runs `steps_per_loop` steps
per call so the accelerator never waits for Python. (Compiling the update into the same XLA
cluster on one device measured +1% on the tiny shape and nothing on the 4.2M one: not worth
a second code path.)
"""

from __future__ import annotations

import math

import tensorflow as tf

from tfllm.config import Config
from tfllm.data import reader
from tfllm.model import lora
from tfllm.observe import profiling
from tfllm.training.optim import clip_by_global_norm, loss_scale

SUM = tf.distribute.ReduceOp.SUM


def target_count(targets) -> tf.Tensor:
    """Targets that count in the loss: reader.IGNORE marks padding and document boundaries."""
    return tf.reduce_sum(tf.cast(targets != reader.IGNORE, tf.float32))


def token_loss_sum(model, inputs, targets, training: bool, segment_ids=None) -> tf.Tensor:
    """Sum of next-token cross-entropies over every counted target in the batch."""
    logits = model(inputs, segment_ids=segment_ids, training=training)  # (B, T, V) float32
    counted = targets != reader.IGNORE
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(counted, targets, 0), logits=logits
    )
    return tf.reduce_sum(tf.where(counted, losses, 0.0))


class LanguageModeling:
    """The objective of pretraining and SFT: next-token cross-entropy, a mean over the counted
    targets of the global batch. An objective gives `count(batch)` (what the loss is a mean
    over) and `loss_sum(model, batch, training)` -> (sum of losses, {metric: sum}); the DPO
    and distillation objectives (tfllm.training.dpo, distill) have the same two methods."""

    metric_names: tuple[str, ...] = ()

    def count(self, batch) -> tf.Tensor:
        return target_count(batch[1])

    def loss_sum(self, model, batch, training: bool):
        return token_loss_sum(model, batch[0], batch[1], training, *batch[2:]), {}


class Steps:
    """The train host loop and the eval step; `traces` counts how often each was traced."""

    def __init__(
        self,
        cfg: Config,
        strategy: tf.distribute.Strategy,
        model,
        optimizer,
        objective=None,
        eval_objective=None,
    ):
        self.strategy, self.model, self.optimizer = strategy, model, optimizer
        self.objective = objective or LanguageModeling()
        self.eval_objective = eval_objective or self.objective
        self.clip_norm = cfg.train.grad_clip_norm
        self.accum = cfg.train.grad_accum_steps
        # stop and rollback end the host loop at the first non-finite step; skip carries on.
        self.halt_on_nonfinite = cfg.train.on_nonfinite != "skip"
        # With float16 loss scaling an overflowing gradient is routine: the loss-scale optimizer
        # skips that update and lowers the scale. Only a non-finite loss is the model's fault.
        self.grads_may_overflow = cfg.train.precision == "mixed_float16"
        self.traces = {"train_loop": 0, "train_step": 0, "gradients": 0, "eval": 0}
        self._gradients = tf.function(self._gradients_fn, jit_compile=cfg.train.jit_compile)
        self._eval = tf.function(self._eval_fn, jit_compile=cfg.train.jit_compile)
        self.train_loop = tf.function(self._train_loop_fn)
        self.train_step = tf.function(self._train_step_fn)
        self.eval_step = tf.function(self._eval_step_fn)

    def _micro_gradients(self, batch, global_count, scale):
        with tf.GradientTape() as tape:
            loss, metrics = self.objective.loss_sum(self.model, batch, True)
            loss = loss / global_count
            scaled = loss * scale
        grads = tape.gradient(scaled, lora.trainable_variables(self.model))
        metrics = {k: tf.stop_gradient(v) / global_count for k, v in metrics.items()}
        # The embedding's gradient is IndexedSlices: densify to sum and all-reduce it.
        return loss, [tf.convert_to_tensor(g) for g in grads], metrics

    def _gradients_fn(self, global_count, scale, *batch):
        """This replica's (loss, scaled grads, metrics), summed over `accum` micro-batches that
        run one after another, so only one micro-batch's activations are alive at a time."""
        self.traces["gradients"] += 1  # Python side effect: runs once per trace
        micro = [tf.reshape(t, [self.accum, -1, *t.shape[1:]]) for t in batch]  # (A, B/A, ...)
        loss, grads, metrics = self._micro_gradients([t[0] for t in micro], global_count, scale)
        if self.accum == 1:  # an XLA while loop, even one of no trips, copies every gradient
            return loss, grads, metrics
        for i in tf.range(1, self.accum):
            micro_loss, micro_grads, micro_metrics = self._micro_gradients(
                [t[i] for t in micro], global_count, scale
            )
            loss += micro_loss
            grads = [g + m for g, m in zip(grads, micro_grads, strict=True)]
            metrics = {k: v + micro_metrics[k] for k, v in metrics.items()}
        return loss, grads, metrics

    def _replica_step(self, *batch):
        """One replica's batch -> all-reduced loss, grad norm, finite, grads, metrics."""
        ctx = tf.distribute.get_replica_context()
        # Loss is a mean over the global count (targets, or pairs for DPO), so it does not
        # depend on the split.
        global_count = ctx.all_reduce(SUM, self.objective.count(batch))
        scale = loss_scale(self.optimizer)
        loss, grads, metrics = self._gradients(global_count, scale, *batch)
        loss, grads, metrics = ctx.all_reduce(SUM, [loss, grads, metrics])
        grads, grad_norm = clip_by_global_norm(grads, self.clip_norm, scale)
        finite = tf.math.is_finite(loss)
        if not self.grads_may_overflow:
            finite &= tf.math.is_finite(grad_norm)
        return loss, grad_norm, finite, grads, metrics

    def _apply_if_finite(self, finite, grads):
        """The update, under a tf.cond in cross-replica context (a cond inside the replica
        function cannot hold the optimizer's merge_call under MirroredStrategy). `finite` is
        all-reduced, so every replica takes the same branch. A skipped update leaves weights and
        optimizer slots as they were but still advances `iterations`: the step counter is the
        data position and the schedule's step."""

        def apply():
            self.strategy.run(
                lambda g: self.optimizer.apply(g, lora.trainable_variables(self.model)),
                args=(grads,),
            )
            return tf.constant(True)

        def skip():
            self.optimizer.iterations.assign_add(1)
            return tf.constant(False)

        return tf.cond(finite, apply, skip)

    def _step(self, iterator):
        """One optimizer step on the next global batch: (loss, grad norm, finite, metrics)."""
        batch = next(iterator)  # (inputs, targets[, segment_ids]) or the objective's batch
        loss, norm, finite, grads, metrics = self.strategy.run(self._replica_step, args=batch)
        # All are already all-reduced: every replica holds the same value.
        first = self.strategy.experimental_local_results
        loss, norm, finite = (first(x)[0] for x in (loss, norm, finite))
        metrics = {k: first(v)[0] for k, v in metrics.items()}
        self._apply_if_finite(finite, grads)
        return loss, norm, finite, metrics

    def _train_step_fn(self, iterator):
        """One step with no graph loop around it: (loss, grad norm, finite)."""
        self.traces["train_step"] += 1
        return self._step(iterator)

    def marked_steps(self, iterator, num_steps: int, first_step: int) -> dict:
        """`train_loop`'s steps and result, one `train_step` call per step, each inside the
        profiler's step marker for its step number (`first_step` for the first).

        For traces: XProf reads the iterations of a graph `while` in a trace as the steps and
        then ignores every step marker ("No step marker observed", step time 0), so a profiled
        step must run outside `train_loop`. Slower than `train_loop` by a host round trip per
        step; without a profiler session the markers cost nothing.
        """
        loss_sum = norm_sum = 0.0
        metric_sums = dict.fromkeys(self.objective.metric_names, 0.0)
        done = skipped = 0
        first_bad = -1
        for i in range(num_steps):
            with profiling.step_trace(first_step + i):
                loss, norm, finite, metrics = self.train_step(iterator)
                finite = bool(finite)  # waits for the step: the marker spans its real time
            done += 1
            if finite:
                loss_sum, norm_sum = loss_sum + float(loss), norm_sum + float(norm)
                metric_sums = {k: v + float(metrics[k]) for k, v in metric_sums.items()}
                continue
            skipped += 1
            first_bad = i if first_bad < 0 else first_bad
            if self.halt_on_nonfinite:
                break
        good = done - skipped
        return {
            "loss": loss_sum / good if good else math.nan,
            "grad_norm": norm_sum / good if good else math.nan,
            "metrics": {k: v / good if good else math.nan for k, v in metric_sums.items()},
            "steps": done,
            "skipped": skipped,
            "first_bad": first_bad,
        }

    def _train_loop_fn(self, iterator, num_steps):
        """Runs up to `num_steps` steps; returns means over finite steps and what was skipped."""
        self.traces["train_loop"] += 1
        loss_sum, norm_sum = tf.constant(0.0), tf.constant(0.0)
        metric_sums = {k: tf.constant(0.0) for k in self.objective.metric_names}
        done, skipped, first_bad = tf.constant(0), tf.constant(0), tf.constant(-1)
        for i in tf.range(num_steps):
            loss, norm, finite, metrics = self._step(iterator)
            done += 1
            bad = tf.logical_not(finite)
            loss_sum += tf.where(bad, 0.0, loss)
            norm_sum += tf.where(bad, 0.0, norm)
            metric_sums = {k: v + tf.where(bad, 0.0, metrics[k]) for k, v in metric_sums.items()}
            skipped += tf.cast(bad, tf.int32)
            first_bad = tf.where(bad & (first_bad < 0), i, first_bad)
            if bad and self.halt_on_nonfinite:
                break
        good = tf.cast(done - skipped, tf.float32)  # NaN below when every step was skipped
        return {
            "loss": loss_sum / good,
            "grad_norm": norm_sum / good,
            "metrics": {k: v / good for k, v in metric_sums.items()},
            "steps": done,
            "skipped": skipped,
            "first_bad": first_bad,
        }

    def _eval_fn(self, *batch):
        self.traces["eval"] += 1
        loss, metrics = self.eval_objective.loss_sum(self.model, batch, False)
        return loss, self.eval_objective.count(batch), metrics

    def _eval_step_fn(self, *batch):
        # A plain Python replica function around the compiled one: handed to `strategy.run`
        # directly, a jit-compiled tf.function loses the replica's device scope and reads the
        # other replica's variables ("Trying to access resource ... located in device CPU:1").
        out = self.strategy.run(lambda *b: self._eval(*b), args=batch)
        return tf.nest.map_structure(lambda x: self.strategy.reduce(SUM, x, axis=None), out)


def evaluate_metrics(steps: Steps, dataset) -> dict[str, float]:
    """Mean validation loss (per target token; per pair for DPO) and the objective's metrics
    over the fixed evaluation batches."""
    total, count, sums = 0.0, 0.0, {}
    for batch in dataset:
        loss, counted, metrics = steps.eval_step(*batch)
        total, count = total + float(loss), count + float(counted)
        sums = {k: sums.get(k, 0.0) + float(v) for k, v in metrics.items()}
    return {"loss": total / max(count, 1.0), **{k: v / max(count, 1.0) for k, v in sums.items()}}


def evaluate(steps: Steps, dataset) -> float:
    """Mean validation loss per target token over the fixed evaluation batches."""
    return evaluate_metrics(steps, dataset)["loss"]
