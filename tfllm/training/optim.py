"""AdamW with linear warmup and cosine decay, global-norm clipping, a weight-decay mask, and
dynamic loss scaling for float16."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfllm.config import TrainConfig


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then cosine decay to
    `peak * min_ratio` at `total_steps`, flat after that."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, min_ratio: float):
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = self.peak * step / max(self.warmup_steps, 1)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
        decayed = self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cosine)
        return tf.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "min_ratio": self.min_ratio,
        }


class AdamW(keras.optimizers.AdamW):
    """Keras AdamW that takes gradients already summed across replicas and updates each
    variable with one fused kernel.

    The train step all-reduces gradients itself so that it can clip by the *global* norm of
    the summed gradient; Keras would otherwise clip per replica and then all-reduce again.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars

    def apply(self, grads, trainable_variables=None):
        """Keras' `apply`, with the step's scalars computed once instead of once per variable.

        Keras reads `learning_rate` (a call of the schedule: about ten scalar ops) for every
        decayed variable and again for the update, and the update takes the bias-correction
        powers per variable: hundreds of scalar TF ops per step, each a kernel launch outside
        XLA. The values are the same for every variable of a step (the step counter moves at
        the end of `apply`), so the same ops run once and the results are shared."""
        self._step_scalars = {}
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._step_scalars = None

    def _get_current_learning_rate(self):
        scalars = getattr(self, "_step_scalars", None)
        if scalars is None:
            return super()._get_current_learning_rate()
        if "learning_rate" not in scalars:
            scalars["learning_rate"] = super()._get_current_learning_rate()
        return scalars["learning_rate"]

    def _adam_scalars(self, dtype) -> tuple:
        """(beta_1, beta_2, beta_1^t, beta_2^t, epsilon) in `dtype`, once per step and dtype."""
        scalars = getattr(self, "_step_scalars", None)
        if scalars is not None and dtype in scalars:
            return scalars[dtype]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        found = (
            beta_1,
            beta_2,
            tf.pow(beta_1, step),
            tf.pow(beta_2, step),
            tf.cast(self.epsilon, dtype),
        )
        if scalars is not None:
            scalars[dtype] = found
        return found

    def update_step(self, gradient, variable, learning_rate):
        """Keras' Adam arithmetic (bias correction folded into the step size, epsilon outside
        the square root) as TF's ResourceApplyAdam: one pass over the weights and both moments
        instead of Keras' seven elementwise ops, each a pass over memory (measured in
        benchmarks/README.md, "Performance changes"). Decoupled weight decay stays Keras' own,
        applied before this."""
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        beta_1, beta_2, beta_1_power, beta_2_power, epsilon = self._adam_scalars(dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=beta_1_power,
            beta2_power=beta_2_power,
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=epsilon,
            grad=tf.cast(gradient, dtype),
        )


class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras dynamic loss scaling (halve on inf/NaN and skip the step, double after a run of
    finite steps) that also counts the steps it skipped, so the step number survives resume."""

    def build(self, var_list):
        super().build(var_list)
        self.skipped_steps = self.add_variable(
            shape=(),
            dtype="int",
            initializer=keras.initializers.Zeros(),
            aggregation="none",
            name="skipped_steps",
        )

    def _stateful_handle_non_finite_grads(self):
        self.skipped_steps.assign_add(1)
        super()._stateful_handle_non_finite_grads()


def make_optimizer(cfg: TrainConfig, trainable_variables: list) -> AdamW | LossScaleOptimizer:
    schedule = WarmupCosine(
        cfg.learning_rate, cfg.warmup_steps, cfg.steps, cfg.min_learning_rate_ratio
    )
    optimizer = AdamW(
        learning_rate=schedule,
        weight_decay=cfg.weight_decay,
        beta_1=cfg.beta_1,
        beta_2=cfg.beta_2,
        epsilon=cfg.epsilon,
        name="adamw",
    )
    # Norm scales (and any bias) are 1-D: decaying them toward 0 only hurts.
    optimizer.exclude_from_weight_decay(var_list=[v for v in trainable_variables if v.ndim < 2])
    if cfg.precision == "mixed_float16":
        optimizer = LossScaleOptimizer(optimizer, name="loss_scale")
    optimizer.build(trainable_variables)
    return optimizer


def loss_scale(optimizer) -> tf.Tensor:
    """The factor the loss is multiplied by before differentiation (1 without loss scaling)."""
    if isinstance(optimizer, LossScaleOptimizer):
        return tf.convert_to_tensor(optimizer.dynamic_scale)
    return tf.constant(1.0)


def completed_steps(optimizer) -> int:
    """Train steps run so far, counting those that loss scaling skipped."""
    skipped = getattr(optimizer, "skipped_steps", None)
    return int(optimizer.iterations.numpy()) + (0 if skipped is None else int(skipped.numpy()))


def set_completed_steps(optimizer, step: int) -> None:
    """Moves the step counter to `step` (a rollback skipping a data window)."""
    skipped = getattr(optimizer, "skipped_steps", None)
    optimizer.iterations.assign(step - (0 if skipped is None else int(skipped.numpy())))


def clip_by_global_norm(grads: list[tf.Tensor], max_norm: float, scale: tf.Tensor | float = 1.0):
    """Returns (clipped grads, norm of the unscaled grads before clipping); max_norm <= 0
    disables clipping.

    `grads` may still carry the loss scale `scale`: clipping them to `max_norm * scale` is
    clipping the true gradients to `max_norm`, and inf/NaN stay non-finite for the skip check.
    """
    norm = tf.linalg.global_norm(grads) / scale
    if max_norm <= 0:
        return grads, norm
    factor = tf.minimum(1.0, max_norm / tf.maximum(norm, 1e-12))
    return [g * factor for g in grads], norm
