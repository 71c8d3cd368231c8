"""The attention core: the hand-written backward pass against TensorFlow's own differentiation
of the same forward ops, with XLA and without, with and without a dropout multiplier; the
one-query decode path against the full one."""

import numpy as np
import pytest
import tensorflow as tf

from tfllm.model.attention import attend, attend_for_training, attend_one_query

B, H, T, K = 2, 3, 16, 8


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, d_out = (
        tf.constant(rng.normal(size=(B, H, T, K)).astype("float32")) for _ in range(4)
    )
    causal = np.tril(np.ones((T, T), bool))
    mask = np.broadcast_to(causal, (B, T, T)).copy()
    mask[1, :, :5] = False  # row 1 starts with 5 padded keys ...
    mask[1, np.arange(T), np.arange(T)] = True  # ... but every query still sees itself
    keep = (rng.random((B, H, T, T)) > 0.25).astype("float32") / 0.75
    return q, k, v, d_out, tf.constant(mask), tf.constant(keep)


def gradients(core, q, k, v, d_out, mask, keep, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def run(q, k, v):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            out = core(q, k, v, mask, keep)
            loss = tf.reduce_sum(out * d_out)
        return [out, *tape.gradient(loss, [q, k, v])]

    return [x.numpy() for x in run(q, k, v)]


@pytest.mark.parametrize("jit_compile", [True, False], ids=["xla", "graph"])
@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "dropout"])
def test_hand_written_backward_matches_autodiff(jit_compile, dropout):
    q, k, v, d_out, mask, keep = inputs()
    keep = keep if dropout else None
    ours = gradients(attend_for_training, q, k, v, d_out, mask, keep, jit_compile)
    reference = gradients(attend, q, k, v, d_out, mask, keep, jit_compile)
    for name, mine, theirs in zip(("output", "dq", "dk", "dv"), ours, reference, strict=True):
        assert np.abs(theirs).max() > 0.1, name  # a real gradient, not zeros
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-5, err_msg=name)


def test_one_query_matches_the_last_row_of_full_attention():
    q, k, v, _, mask, _ = inputs(1)
    full = attend(q, k, v, mask).numpy()
    last = attend_one_query(q[:, :, -1:], k, v, mask[:, -1:]).numpy()
    np.testing.assert_allclose(last[:, :, 0], full[:, :, -1], rtol=0, atol=1e-6)
