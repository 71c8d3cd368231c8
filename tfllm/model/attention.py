"""The causal attention core: scores, masked softmax, weighted values, and a hand-written
backward pass for training.

Shapes: query (B, H, T, K), already scaled by K**-0.5; key and value (B, H, S, K); mask
(B, T, S) bool, True where a query may attend; the result is (B, H, T, K).

Why a hand-written gradient: differentiating the forward ops gives the same numbers (tested to
1e-6) but, on CPU under XLA, two of its four backward dots read an operand transposed:
dV = P^T dO and dK = dS^T Q. Eigen runs those (A^T B) at a third to a half of the speed of the
same product with the operand laid out row by row, and XLA folds any transpose written in front
of a dot into the dot. Here the transposes are real copies behind an optimization barrier, and
the softmax backward is the compact dS = P * (dP - rowsum(dP * P)), which takes less time
forward + backward than the differentiated ops (measured in benchmarks/README.md,
"Performance changes").
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.model.projections import materialized

MASKED = -1e9  # added to masked scores in float32; exp() of it is exactly 0


def softmax(scores):
    """Softmax over the last axis, written out: TF's fused Softmax kernel (oneDNN on CPU) costs
    about 45 us a call even on a decode step's (B, H, 1, S) scores; under XLA both lower alike.
    """
    exp = tf.exp(scores - tf.reduce_max(scores, axis=-1, keepdims=True))
    return exp / tf.reduce_sum(exp, axis=-1, keepdims=True)


def _probabilities(scores, mask):
    """float32 softmax of (B, H, T, S) scores where the (B, T, S) mask allows, 0 elsewhere."""
    return softmax(tf.where(mask[:, None], tf.cast(scores, tf.float32), MASKED))


def _capped(scores, softcap: float):
    """Gemma 2's soft cap, softcap * tanh(scores / softcap) in float32; scores when 0 (off)."""
    scores = tf.cast(scores, tf.float32)
    return scores if not softcap else softcap * tf.tanh(scores / softcap)


def _forward(query, key, value, mask, keep, softcap):
    """-> (B, H, T, K) output, float32 probabilities, probabilities after dropout, capped
    float32 scores."""
    scores = _capped(tf.matmul(query, key, transpose_b=True), softcap)  # (B, H, T, S)
    probs = _probabilities(scores, mask)
    dropped = tf.cast(probs, query.dtype)
    if keep is not None:
        dropped *= keep
    return tf.matmul(dropped, value), probs, dropped, scores


def attend(query, key, value, mask, keep=None, softcap: float = 0.0):
    """Attention without a gradient of its own (evaluation, prefill, export). `keep` is the
    dropout multiplier, (B, H, T, S) of 0 and 1 / (1 - rate), or None; `softcap` 0 is off."""
    return _forward(query, key, value, mask, keep, softcap)[0]


def _row_major_transpose(x):
    """x with its last two axes swapped, as a real copy the dot reading it cannot fold away."""
    return materialized(tf.transpose(x, (0, 1, 3, 2)))


def attend_for_training(query, key, value, mask, keep=None, softcap: float = 0.0):
    """`attend` with the hand-written backward pass (module docstring)."""

    @tf.custom_gradient
    def core(query, key, value):
        output, probs, dropped, capped = _forward(query, key, value, mask, keep, softcap)

        def grad(d_output):
            d_value = tf.matmul(_row_major_transpose(dropped), d_output)
            d_dropped = tf.matmul(d_output, value, transpose_b=True)
            if keep is not None:
                d_dropped *= keep
            d_probs = tf.cast(d_dropped, tf.float32)
            row = tf.reduce_sum(d_probs * probs, axis=-1, keepdims=True)
            d_scores = probs * (d_probs - row)  # masked entries: p = 0
            if softcap:  # d/dx c * tanh(x / c) = 1 - tanh^2
                d_scores *= 1.0 - tf.square(capped / softcap)
            d_scores = tf.cast(d_scores, query.dtype)
            d_query = tf.matmul(d_scores, key)
            d_key = tf.matmul(_row_major_transpose(d_scores), query)
            return d_query, d_key, d_value

        return output, grad

    return core(query, key, value)


MATMUL_ROWS = 4  # from this many rows on, a decode step's attention runs as batched matmuls


def attend_one_query(query, key, value, mask, softcap: float = 0.0):
    """A decode step, T = 1. -> (B, H, 1, K), which reshapes to (B, 1, H * K) without a
    transpose.

    Key and value may hold fewer heads (G = H / KV query heads share one, grouped-query
    attention): the queries are grouped instead of the cache being repeated at every token.

    Two ways, chosen by the number of rows B (known when the graph is traced): from
    `MATMUL_ROWS` rows on (the server's steps over many slots), batched matmuls, which read the
    cache window once and write no (B, H, S, K) product: at 16 rows and a 128-column window
    they took a third less CPU time than multiplies and sums (window gathers included). Below,
    multiplies and sums: batched-matmul kernels outside XLA cost a fixed 75 us a call at (1, S)
    per head here, which dominates at one row (`tfllm generate`).
    """
    batch, heads, _, size = query.shape
    kv_heads = key.shape[1]
    if batch is not None and batch >= MATMUL_ROWS:
        grouped = tf.reshape(query, (-1, kv_heads, heads // kv_heads, size))  # (B, KV, G, K)
        scores = tf.matmul(grouped, key, transpose_b=True)  # (B, KV, G, S)
        scores = tf.reshape(_capped(scores, softcap), (-1, heads, 1, tf.shape(key)[2]))
        probs = tf.cast(_probabilities(scores, mask), query.dtype)  # (B, H, 1, S)
        probs = tf.reshape(probs, (-1, kv_heads, heads // kv_heads, tf.shape(key)[2]))
        return tf.reshape(tf.matmul(probs, value), (-1, heads, 1, size))
    if kv_heads == heads:  # 4-D products: outside XLA, 5-D broadcasts are the slower kernels
        scores = _capped(tf.reduce_sum(query * key, axis=-1)[:, :, None, :], softcap)
        probs = tf.cast(_probabilities(scores, mask), query.dtype)  # (B, H, 1, S)
        return tf.reduce_sum(probs[:, :, 0, :, None] * value, axis=2)[:, :, None]
    grouped = tf.reshape(query, (-1, kv_heads, heads // kv_heads, 1, size))  # (B, KV, G, 1, K)
    scores = tf.reduce_sum(grouped * key[:, :, None], axis=-1)  # (B, KV, G, S)
    scores = tf.reshape(_capped(scores, softcap), (-1, heads, 1, tf.shape(key)[2]))
    probs = tf.cast(_probabilities(scores, mask), query.dtype)  # (B, H, 1, S)
    probs = tf.reshape(probs, (-1, kv_heads, heads // kv_heads, tf.shape(key)[2], 1))
    return tf.reshape(tf.reduce_sum(probs * value[:, :, None], axis=3), (-1, heads, 1, size))
