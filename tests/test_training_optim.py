"""The optimizer: tfllm's fused AdamW update against Keras' own, clipping, the schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm.training.optim import AdamW, WarmupCosine, clip_by_global_norm


def train_five_steps(optimizer_class, init, grads):
    variables = [keras.Variable(x) for x in init]
    optimizer = optimizer_class(
        learning_rate=1e-2, weight_decay=0.1, beta_1=0.9, beta_2=0.95, epsilon=1e-8
    )
    optimizer.exclude_from_weight_decay(var_list=[variables[1]])  # a norm scale
    optimizer.build(variables)
    apply = tf.function(lambda g: optimizer.apply(g, variables))
    for step_grads in grads:
        apply([tf.constant(g) for g in step_grads])
    return [v.numpy() for v in variables]


def test_fused_update_matches_keras_adamw():
    rng = np.random.default_rng(0)
    shapes = [(64, 32), (32,)]
    init = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[rng.normal(size=s).astype("float32") for s in shapes] for _ in range(5)]
    ours = train_five_steps(AdamW, init, grads)
    reference = train_five_steps(keras.optimizers.AdamW, init, grads)
    for mine, theirs, start in zip(ours, reference, init, strict=True):
        assert np.abs(theirs - start).max() > 1e-2  # the weights did move
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)


def test_clip_by_global_norm_reports_the_norm_and_clips_to_the_limit():
    grads = [tf.constant([3.0, 0.0]), tf.constant([[4.0]])]
    clipped, norm = clip_by_global_norm(grads, max_norm=1.0)
    assert float(norm) == pytest.approx(5.0)
    assert float(tf.linalg.global_norm(clipped)) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.0], rtol=1e-6)
    # Under the limit, or with clipping off, gradients pass unchanged.
    unchanged, _ = clip_by_global_norm(grads, max_norm=10.0)
    np.testing.assert_array_equal(unchanged[0].numpy(), grads[0].numpy())
    # A loss-scaled gradient reports the unscaled norm.
    _, scaled_norm = clip_by_global_norm([g * 8.0 for g in grads], max_norm=0.0, scale=8.0)
    assert float(scaled_norm) == pytest.approx(5.0)


def test_warmup_then_cosine_to_the_floor():
    schedule = WarmupCosine(peak=1.0, warmup_steps=10, total_steps=110, min_ratio=0.1)
    values = [float(schedule(step)) for step in (0, 5, 10, 60, 110, 500)]
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], atol=1e-6)
