"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

Every knob is a tensor, so one compiled decode loop serves every setting without retracing,
and randomness comes only from `tf.random.stateless_*` ops keyed by (seed, step): XLA ignores
stateful seeds, and a stateless draw is the same in eager, graph, XLA and a served SavedModel.

Shape letters: B batch, V vocabulary_size.
"""

from __future__ import annotations

import tensorflow as tf


def filter_logits(logits, top_k, top_p):
    """Sets logits outside the top-k tokens and outside the top-p probability mass to -inf.

    Args:
        logits: (B, V) float32, already divided by the temperature.
        top_k: int32, a scalar or (B, 1); 0 keeps every token.
        top_p: float32, a scalar or (B, 1), in (0, 1]; 1 keeps every token. The smallest set of
            most likely tokens whose probability reaches top_p is kept (at least one token).

    Returns:
        (B, V) float32 logits.
    """
    vocabulary_size = tf.shape(logits)[-1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocabulary_size), vocabulary_size)
    ranked = tf.sort(logits, axis=-1, direction="DESCENDING")  # (B, V)
    rank = tf.range(vocabulary_size)[None, :]
    ranked = tf.where(rank < k, ranked, -float("inf"))
    probs = tf.nn.softmax(ranked, axis=-1)
    # A token is kept while the mass of the tokens ranked above it is still below top_p.
    mass_above = tf.cumsum(probs, axis=-1, exclusive=True)
    kept = (mass_above < top_p) & (rank < k)
    cutoff = tf.reduce_min(tf.where(kept, ranked, float("inf")), axis=-1, keepdims=True)
    return tf.where(logits >= cutoff, logits, -float("inf"))


def next_token(logits, temperature, top_k, top_p, seed, step, any_sampled):
    """Picks one token per row: argmax where the row's temperature is 0, else a filtered sample.

    Args:
        logits: (B, V) float32 next-token logits.
        temperature: (B,) float32 >= 0.
        top_k: (B,) int32 >= 0.
        top_p: (B,) float32 in (0, 1].
        seed: int64, with `step` the key of the stateless draw. A scalar keys one (B, V) draw
            for the whole batch; a (B,) seed keys one (V,) draw per row, the very numbers a
            batch of one with that seed draws, so a row does not depend on the rows beside it.
        step: int32, the index of the token being generated: a scalar, or (B,) with a (B,)
            seed (rows at different steps, as the server's sequence slots are).
        any_sampled: bool scalar, any(temperature > 0): False skips the sort and the draw (an
            all-greedy batch, the common request). The caller computes it once per request, not
            once per token.

    Returns:
        (B,) int32 token ids.
    """

    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sample():
        # A floor on the divisor: a temperature like 1e-30 would turn logits into inf and NaN.
        scaled = filter_logits(
            logits / tf.maximum(temperature, 1e-4)[:, None], top_k[:, None], top_p[:, None]
        )
        # Gumbel-max: argmax(logits + Gumbel noise) is a categorical draw. XLA has no kernel for
        # StatelessMultinomial; a Philox uniform is the same bits with and without XLA.
        step64 = tf.cast(step, tf.int64)
        if seed.shape.rank == 0:
            uniform = _uniform(tf.shape(scaled), seed, step64)
        else:
            uniform = tf.map_fn(
                lambda row: _uniform(tf.shape(scaled)[1:], row[0], row[1]),
                (seed, tf.broadcast_to(step64, tf.shape(seed))),
                fn_output_signature=tf.float32,
            )
        sampled = tf.argmax(scaled - tf.math.log(-tf.math.log(uniform)), -1, output_type=tf.int32)
        return tf.where(temperature > 0.0, sampled, greedy())

    return tf.cond(any_sampled, sample, greedy)


def _uniform(shape, seed, step):
    return tf.random.stateless_uniform(
        shape, tf.stack([seed, step]), minval=1e-20, maxval=1.0, alg="philox"
    )
