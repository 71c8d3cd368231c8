"""Matmul layouts chosen for XLA on CPU (measured in benchmarks/README.md): the 2-D projection
every layer uses, and the tied embedding whose table is also the output projection.

Shape letters as in `tfllm.model.layers`; V is vocabulary_size.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf
from keras import ops
from tensorflow.compiler.tf2xla.ops import gen_xla_ops

from tfllm.config import ModelConfig
from tfllm.model.primitives import Configured, normal


def materialized(x):
    """x behind an XLA optimization barrier, so that a transpose computing x stays a real copy.

    XLA folds any transpose in front of a dot into the dot's operand order, and for some shapes
    the order it ends up with is the one Eigen runs slowest on CPU: an A^T B product over a
    short output ran at a third to two thirds of the speed of A B here (benchmarks/README.md).
    Outside XLA the barrier is an identity. On a GPU or TPU, where XLA's own operand order is
    the tuned one and nothing here was measured, x is returned as it is.
    """
    if _on_accelerator():
        return x
    return gen_xla_ops.xla_optimization_barrier([x])[0]


@functools.cache
def _on_accelerator() -> bool:
    """Whether this process has a GPU or TPU (the set of logical devices is fixed once TF runs)."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def dense(x, kernel, training=False):
    """(..., D) @ (D, F) -> (..., F) as one 2-D matmul over the flattened leading axes; with
    `training`, its weight gradient is computed in the faster operand order (`_trained_matmul`).

    `ops.matmul` of a 3-D tensor by a 2-D one becomes `tf.tensordot`, which adds a transpose
    (a copy) of each operand; outside XLA, as in the decode loop and the exported graph, those
    copies took half of the time per generated token.
    """
    flat = ops.reshape(x, (-1, ops.shape(x)[-1]))
    if training:  # the kernel as a tensor: a custom gradient may not capture the variable
        flat = _trained_matmul(flat, tf.convert_to_tensor(kernel))
    else:
        flat = ops.matmul(flat, kernel)
    return ops.reshape(flat, (*ops.shape(x)[:-1], ops.shape(kernel)[-1]))


@tf.custom_gradient
def _trained_matmul(x, kernel):
    """x (N, D) @ kernel (D, F) whose kernel gradient is not XLA's own x^T dy, which Eigen runs
    slowly at these shapes: for a narrowing kernel (D > F, the MLP's output) it is (dy^T x)^T,
    otherwise x^T dy from a real copy of x^T: for each kernel shape the order Eigen runs
    fastest (measured in benchmarks/README.md, "Performance changes")."""

    def grad(d_y):
        d_x = tf.matmul(d_y, kernel, transpose_b=True)
        if kernel.shape[0] > kernel.shape[1]:
            d_kernel = tf.transpose(materialized(tf.matmul(d_y, x, transpose_a=True)))
        else:
            d_kernel = tf.matmul(materialized(tf.transpose(x)), d_y)
        return d_x, d_kernel

    return tf.matmul(x, kernel), grad


class TiedEmbedding(Configured, keras.layers.Layer):
    """Token embedding whose table is also the output projection (tied weights), or with a
    separate output kernel (`config.tie_embeddings` False, e.g. Llama 3 8B, Qwen2 7B).

    The table is stored as the projection's kernel, (D, V), not as (V, D): XLA on CPU computes
    the projection's weight gradient as x^T @ dlogits at about twice the speed of the
    dlogits^T @ x that a (V, D) table gets, since it folds any transpose we write into the dot
    (benchmarks/README.md). The lookup gathers columns.
    """

    def __init__(self, config: ModelConfig, **kwargs):
        # Looked-up embeddings are cast by hand; the projection reads the float32 table.
        super().__init__(autocast=False, **kwargs)
        self.config = config

    def build(self, input_shape=None):
        shape = (self.config.hidden_dim, self.config.vocabulary_size)
        self.kernel = self.add_weight(name="kernel", shape=shape, initializer=normal(0.02))
        if not self.config.tie_embeddings:
            self.head_kernel = self.add_weight(
                name="head_kernel", shape=shape, initializer=normal(0.02)
            )

    def call(self, token_ids):
        """(B, T) int -> (B, T, D) in the compute dtype."""
        columns = ops.take(self.kernel, token_ids, axis=1)  # (D, B, T)
        return ops.cast(ops.transpose(columns, (1, 2, 0)), self.compute_dtype)

    def logits(self, x, training=False):
        """(B, T, D) -> (B, T, V) float32 logits."""
        kernel = self.kernel if self.config.tie_embeddings else self.head_kernel
        return dense(ops.cast(x, "float32"), ops.cast(kernel, "float32"), training)
