"""The optimizer: tfllm's fused AdamW update against Keras' own, clipping, the schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfllm.training.optim import AdamW, WarmupCosine, clip_by_global_norm
from tfllm.training.optim_update import CompiledUpdate


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


def test_compiled_update_matches_clipping_and_keras_adamw():
    """One XLA computation (clip, decay, Adam) against clip_by_global_norm + Keras' AdamW over
    five steps of a warmup-cosine schedule, gradients large enough to be clipped; a step
    with a non-finite loss changes nothing but the step counter."""
    rng = np.random.default_rng(1)
    shapes = [(64, 32), (32,)]
    init = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[10 * rng.normal(size=s).astype("float32") for s in shapes] for _ in range(5)]

    def make(optimizer_class):
        variables = [keras.Variable(x) for x in init]
        schedule = WarmupCosine(peak=1e-2, warmup_steps=2, total_steps=5, min_ratio=0.1)
        optimizer = optimizer_class(
            learning_rate=schedule, weight_decay=0.1, beta_1=0.9, beta_2=0.95, epsilon=1e-8
        )
        optimizer.exclude_from_weight_decay(var_list=[variables[1]])  # a norm scale
        optimizer.build(variables)
        return variables, optimizer

    variables, reference = make(keras.optimizers.AdamW)

    @tf.function
    def keras_step(g):
        clipped, norm = clip_by_global_norm(g, 1.0)
        reference.apply(clipped, variables)
        return norm

    ours, optimizer = make(AdamW)
    update = CompiledUpdate(optimizer, ours, clip_norm=1.0, replicas=1)
    compiled = tf.function(lambda *a: update.update(0, *a), jit_compile=True)

    def our_step(g, loss=1.0):
        norm, finite = compiled(tf.convert_to_tensor(optimizer.iterations), tf.constant(loss), g)
        optimizer.iterations.assign_add(1)
        return norm, finite

    for step_grads in grads:
        g = [tf.constant(x) for x in step_grads]
        norm, finite = our_step(g)
        assert bool(finite)
        assert float(norm) == pytest.approx(float(keras_step(g)), rel=1e-6)
        assert float(norm) > 1.0  # clipping was on
    for mine, theirs, start in zip(ours, variables, init, strict=True):
        assert np.abs(theirs.numpy() - start).max() > 1e-2  # the weights did move
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-6)
    for mine, theirs in zip(optimizer.variables, reference.variables, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-7)

    before = [v.numpy() for v in [*ours, *optimizer.variables]]
    _, finite = our_step([tf.constant(x) for x in grads[0]], loss=float("nan"))
    assert not bool(finite)
    after = [v.numpy() for v in [*ours, *optimizer.variables]]
    assert int(optimizer.iterations) == 6
    for b, a in zip(before, after, strict=True):
        if b.ndim:  # weights and slots as they were; only the scalar counter moved
            np.testing.assert_array_equal(a, b)


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
