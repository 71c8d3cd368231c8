"""Projections: the training matmul's hand-ordered weight gradient against TensorFlow's own
differentiation, for narrowing, square and widening kernels, with XLA and without."""

import numpy as np
import pytest
import tensorflow as tf

from tfllm.model.projections import dense


def gradients(x, kernel, d_y, training, jit_compile):
    @tf.function(jit_compile=jit_compile)
    def run(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = dense(x, kernel, training)
            loss = tf.reduce_sum(y * d_y)
        return [y, *tape.gradient(loss, [x, kernel])]

    return [t.numpy() for t in run(x, kernel)]


@pytest.mark.parametrize("jit_compile", [True, False], ids=["xla", "graph"])
@pytest.mark.parametrize("d_in,d_out", [(48, 16), (32, 32), (16, 80)])
def test_training_gradient_matches_autodiff(d_in, d_out, jit_compile):
    rng = np.random.default_rng(d_in)
    x, kernel, d_y = (
        tf.constant(rng.normal(size=shape).astype("float32"))
        for shape in ((3, 5, d_in), (d_in, d_out), (3, 5, d_out))
    )
    ours = gradients(x, kernel, d_y, True, jit_compile)
    reference = gradients(x, kernel, d_y, False, jit_compile)
    for name, mine, theirs in zip(("y", "dx", "dkernel"), ours, reference, strict=True):
        assert mine.shape == theirs.shape, name
        assert np.abs(theirs).max() > 0.1, name
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-4, err_msg=name)
