"""The optimizer step as one XLA computation per device: global-norm clipping, the non-finite
check and AdamW over every trainable variable, on gradients already summed across replicas.

Keras' `apply` runs each variable's update as its own TF kernels outside the XLA-compiled
gradient step (weight decay, then tfllm's fused `ResourceApplyAdam`), with the clip factor and
the skip decision as more kernels in between: on this CPU about 16% of a loaded step's CPU
time (benchmarks/README.md, "Where the time goes"). Here the same arithmetic is written in
plain tensor ops over the whole variable list so that XLA fuses each variable's decay, moments
and weight update into one pass over memory. On one device the gradient step and this update
compile into a single XLA computation (`Steps`); under MirroredStrategy and
MultiWorkerMirroredStrategy each local device runs its own compiled update on its copies of
the variables, after the all-reduce, as Keras' `strategy.extended.update` would.

The variables and the optimizer's slots are Keras' own: checkpoints do not change. Loss scaling
(float16), AMSGrad and TPUs keep Keras' `apply` (`supported`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfllm.training.optim import AdamW


def supported(strategy: tf.distribute.Strategy, optimizer) -> bool:
    """Whether `CompiledUpdate` can stand in for `optimizer.apply` under `strategy`: tfllm's
    AdamW without AMSGrad or loss scaling, off TPU (where the whole step is compiled anyway)."""
    tpu = isinstance(strategy, tf.distribute.TPUStrategy | tf.distribute.experimental.TPUStrategy)
    return type(optimizer) is AdamW and not optimizer.amsgrad and not tpu


def local_devices(strategy: tf.distribute.Strategy) -> list[str]:
    """This host's devices, one per local replica (the default strategy has no list; one
    replica in all is one device here)."""
    if strategy.num_replicas_in_sync == 1:
        return [""]
    return list(strategy.extended.worker_devices)


def _components(variable, count: int) -> list[tf.Variable]:
    """The per-device tf.Variables behind a Keras variable (one for an undistributed one)."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    parts = list(getattr(value, "values", (value,)))
    assert len(parts) == count, f"{variable.name}: {len(parts)} copies for {count} devices"
    return parts


class CompiledUpdate:
    """Clip, check and apply one step's summed gradients to the variables of local device
    `replica` (`update(replica, step, loss, grads)` -> (grad norm, finite)).

    The arithmetic is Keras AdamW's with tfllm's fused update (optim.AdamW): decoupled weight
    decay `w - w * wd * lr` on the variables the optimizer decays, then Adam with the bias
    correction folded into the step size and epsilon outside the square root, as TF's
    ResourceApplyAdam computes it. A non-finite loss or gradient norm leaves weights and slots
    as they were. The step counter is not moved here: the caller advances it once per step
    (skipped or not), as Keras' `apply` does.
    """

    def __init__(self, optimizer: AdamW, variables: list, clip_norm: float, replicas: int):
        self.optimizer, self.clip_norm = optimizer, clip_norm
        slots = [optimizer._get_variable_index(v) for v in variables]
        self.decayed = [
            optimizer.weight_decay is not None and optimizer._use_weight_decay(v) for v in variables
        ]
        self.weights = [_components(v, replicas) for v in variables]
        self.m = [_components(optimizer._momentums[i], replicas) for i in slots]
        self.v = [_components(optimizer._velocities[i], replicas) for i in slots]

    def learning_rate(self, step: tf.Tensor) -> tf.Tensor:
        """The schedule at `step` (the number of updates so far), as Keras reads it."""
        rate = self.optimizer._learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            return tf.cast(rate(step), tf.float32)
        return tf.cast(tf.convert_to_tensor(rate), tf.float32)

    def update(self, replica: int, step, loss, grads: list) -> tuple[tf.Tensor, tf.Tensor]:
        """Updates device `replica`'s copies; returns (norm before clipping, finite)."""
        opt = self.optimizer
        norm = tf.linalg.global_norm(grads)
        finite = tf.math.is_finite(loss) & tf.math.is_finite(norm)
        if self.clip_norm > 0:
            factor = tf.minimum(1.0, self.clip_norm / tf.maximum(norm, 1e-12))
            grads = [g * factor for g in grads]
        lr = self.learning_rate(step)
        wd = tf.cast(opt.weight_decay or 0.0, tf.float32)
        t = tf.cast(step + 1, tf.float32)
        beta_1, beta_2 = tf.constant(opt.beta_1, tf.float32), tf.constant(opt.beta_2, tf.float32)
        # ResourceApplyAdam's step size: the bias corrections folded into the learning rate.
        alpha = lr * tf.sqrt(1.0 - tf.pow(beta_2, t)) / (1.0 - tf.pow(beta_1, t))
        epsilon = tf.constant(opt.epsilon, tf.float32)
        for j, g in enumerate(grads):
            var, m, v = self.weights[j][replica], self.m[j][replica], self.v[j][replica]
            g = tf.cast(g, var.dtype)
            w, m_old, v_old = var.read_value(), m.read_value(), v.read_value()
            decayed = w - w * wd * lr if self.decayed[j] else w
            m_new = m_old + (g - m_old) * (1.0 - beta_1)
            v_new = v_old + (tf.square(g) - v_old) * (1.0 - beta_2)
            w_new = decayed - (m_new * alpha) / (tf.sqrt(v_new) + epsilon)
            var.assign(tf.where(finite, w_new, w))
            m.assign(tf.where(finite, m_new, m_old))
            v.assign(tf.where(finite, v_new, v_old))
        return norm, finite
