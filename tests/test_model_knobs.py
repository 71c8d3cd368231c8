"""The architecture knobs keep tfllm's fast paths right: the hand-written backward passes give
autodiff's gradients for every family's variant, the KV cache holds only the key/value heads,
and `query_pre_attn_scalar` scales the queries as Gemma 2 does."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tensorflow as tf
from hub_fixtures import VARIANTS, model_config

from tfllm.model import attention, layers, projections
from tfllm.model.lm import build_model
from tfllm.observe import flops


@contextlib.contextmanager
def _autodiff_only():
    """TensorFlow differentiates the forward pass itself (as benchmarks/backward_bench.py)."""
    saved = attention.attend_for_training, layers.dense

    def plain_dense(x, kernel, training=False):
        return projections.dense(x, kernel)

    attention.attend_for_training, layers.dense = attention.attend, plain_dense
    try:
        yield
    finally:
        attention.attend_for_training, layers.dense = saved


def _random_model(variant, **changes):
    model = build_model(model_config(variant, **changes)[1])
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    return model


def _gradients(model, ids):
    with tf.GradientTape() as tape:
        logits = model(ids[:, :-1], training=True)
        loss = tf.reduce_mean(
            tf.keras.losses.sparse_categorical_crossentropy(ids[:, 1:], logits, from_logits=True)
        )
    return tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("variant", ["gemma2", "gpt2", "qwen3", "llama"])
def test_hand_written_backward_equals_autodiff(variant):
    model = _random_model(variant)
    ids = tf.constant(np.random.default_rng(1).integers(0, 128, (2, 10)), tf.int32)
    fast = _gradients(model, ids)
    with _autodiff_only():
        plain = _gradients(model, ids)
    for variable, a, b in zip(model.trainable_variables, fast, plain, strict=True):
        a, b = tf.convert_to_tensor(a).numpy(), tf.convert_to_tensor(b).numpy()  # GPT-2 positions
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=variable.path)


def test_kv_cache_holds_only_key_value_heads():
    model = _random_model("mistral")  # 4 query heads, 2 key/value heads, head_dim 12
    keys, values = model.empty_cache(3, 16)[0]
    assert keys.shape == values.shape == (3, 2, 16, 12)


def test_query_pre_attn_scalar_scales_queries():
    """Scaling queries by s ** -0.5 instead of K ** -0.5 equals scaling W_q by sqrt(K / s)."""
    scalar, heads, head_dim = 27.0, 4, VARIANTS["gemma2"][1]["head_dim"]
    scaled = _random_model("gemma2", query_pre_attn_scalar=scalar)
    plain = _random_model("gemma2")
    for block in plain.blocks:
        kernel = block.attention.qkv_kernel.numpy()  # (D, H + 2 KV, K): queries first
        kernel[:, :heads] *= np.sqrt(head_dim / scalar)
        block.attention.qkv_kernel.assign(kernel)
    ids = np.random.default_rng(2).integers(0, 128, (2, 7)).astype("int32")
    np.testing.assert_allclose(np.asarray(scaled(ids)), np.asarray(plain(ids)), atol=1e-5)


@pytest.mark.parametrize("variant", ["llama", "mistral", "gemma"])
def test_mfu_parameter_count_follows_gqa_head_dim_and_untied_head(variant):
    cfg = model_config(variant)[1]
    assert flops.count_parameters(cfg) == build_model(cfg).count_params()
