"""Matmul layouts chosen for XLA on CPU (measured in benchmarks/README.md): the 2-D projection
every layer uses, and the tied embedding whose table is also the output projection.

Shape letters as in `tfllm.layers`; V is vocabulary_size.
"""

from __future__ import annotations

import keras
from keras import ops


def dense(x, kernel):
    """(..., D) @ (D, F) -> (..., F) as one 2-D matmul over the flattened leading axes.

    `ops.matmul` of a 3-D tensor by a 2-D one becomes `tf.tensordot`, which adds a transpose
    (a copy) of each operand; outside XLA, as in the decode loop and the exported graph, those
    copies took half of the time per generated token.
    """
    flat = ops.matmul(ops.reshape(x, (-1, ops.shape(x)[-1])), kernel)
    return ops.reshape(flat, (*ops.shape(x)[:-1], ops.shape(kernel)[-1]))


class TiedEmbedding(keras.layers.Layer):
    """Token embedding whose table is also the output projection (tied weights).

    The table is stored as the projection's kernel, (D, V), not as (V, D): XLA on CPU computes
    the projection's weight gradient as x^T @ dlogits at about twice the speed of the
    dlogits^T @ x that a (V, D) table gets, since it folds any transpose we write into the dot
    (benchmarks/README.md). The lookup gathers columns.
    """

    def __init__(self, vocabulary_size: int, hidden_dim: int, **kwargs):
        # Looked-up embeddings are cast by hand; the projection reads the float32 table.
        super().__init__(autocast=False, **kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim

    def build(self, input_shape=None):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.hidden_dim, self.vocabulary_size),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )

    def call(self, token_ids):
        """(B, T) int -> (B, T, D) in the compute dtype."""
        columns = ops.take(self.kernel, token_ids, axis=1)  # (D, B, T)
        return ops.cast(ops.transpose(columns, (1, 2, 0)), self.compute_dtype)

    def logits(self, x):
        """(B, T, D) -> (B, T, V) float32 logits."""
        return dense(ops.cast(x, "float32"), ops.cast(self.kernel, "float32"))

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "hidden_dim": self.hidden_dim,
        }
