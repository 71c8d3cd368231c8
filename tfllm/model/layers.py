"""Transformer layers in Keras 3: rotary causal self-attention with a KV cache and the block,
with the architecture knobs of the open-weight families (README "Start from open weights").
Each layer takes the `ModelConfig` and reads its settings from it.

Shape letters, used in every comment and einsum below:
    B batch, T query length, S key length (T, or the cache size when decoding),
    D hidden_dim, H num_heads, KV num_key_value_heads (H unless grouped-query attention),
    K head dim (D / H unless set), F intermediate_dim.

One attention layer serves training and cached decoding: with `cache` the new keys and values
are written into a fixed-size pair of (B, KV, S, K) tensors at `cache_index`, so the decode loop
keeps static shapes and compiles once. The cache may also be a pair of variables (the server's,
`tfllm.server.engine`), written in place; a call then uses their first B rows. Keys and values
stay separate tensors: stacking them (or the layers) into one tensor copied the whole cache at
every token (measured in benchmarks/README.md, "Performance changes").
"""

from __future__ import annotations

import keras
from keras import ops

from tfllm.config import ModelConfig
from tfllm.model import attention
from tfllm.model.mlp import MLP
from tfllm.model.primitives import (
    Configured,
    RMSNorm,
    apply_rotary,
    normal,
    residual_normal,
    rotary_frequencies,
)
from tfllm.model.projections import dense

HEADS_FIRST = (0, 2, 1, 3)  # (B, T, H, K) <-> (B, H, T, K)


def _cache_slots(batch, heads, length, cache_index):
    """(B, H, T, 3) scatter indices of slots cache_index..cache_index+T-1 in a (B, H, S, K)
    cache. `cache_index` is a scalar (every row writes the same slots) or (B,) (one per row:
    the serving scheduler's slots each sit at their own position).

    A scatter rather than `ops.slice_update`: Keras lowers that to XlaDynamicUpdateSlice, an
    XLA-only op, and the exported serving graph must run without XLA (tensorflow/serving#2214).
    """
    shape = (batch, heads, length)
    rows = ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None, None], shape)
    head = ops.broadcast_to(ops.arange(heads, dtype="int32")[None, :, None], shape)
    first = ops.reshape(cache_index, (-1, 1, 1))  # (1, 1, 1) or (B, 1, 1)
    slots = ops.broadcast_to(first + ops.arange(length, dtype="int32"), shape)
    return ops.stack([rows, head, slots], axis=-1)


def head_shape(config: ModelConfig) -> tuple[int, int]:
    """(KV, K): the key/value heads and the head size, their 0 defaults resolved."""
    return (
        config.num_key_value_heads or config.num_heads,
        config.head_dim or config.hidden_dim // config.num_heads,
    )


class CausalSelfAttention(Configured, keras.layers.Layer):
    """Multi-head (or grouped-query) self-attention with rotary positions, a fused QKV
    projection and an optional fixed-size key/value cache.

    Reads from `config`: num_heads, num_key_value_heads, head_dim, qkv_bias, bias (output bias
    too), the rope_* settings, positions (learned: no rotation here, positions are added to the
    embeddings), attention_softcap, query_pre_attn_scalar, qk_norm, dropout.
    """

    _lora = None  # LoRA adapters (`tfllm.model.lora`), set while fine-tuning

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.kv_heads, self.head_dim = head_shape(config)
        self.query_scale = (config.query_pre_attn_scalar or self.head_dim) ** -0.5

    def build(self, input_shape):
        c = self.config
        h, kv, k, d = c.num_heads, self.kv_heads, self.head_dim, c.hidden_dim
        # tfllm's own layout (D, 3, H, K) when every head has its keys; (D, H + 2 KV, K) else.
        shape = (d, 3, h, k) if kv == h else (d, h + 2 * kv, k)
        self.qkv_kernel = self.add_weight(name="qkv_kernel", shape=shape, initializer=normal(0.02))
        self.output_kernel = self.add_weight(
            name="output_kernel", shape=(h, k, d), initializer=residual_normal(c)
        )
        if c.qkv_bias or c.bias:
            self.qkv_bias = self.add_weight(
                name="qkv_bias", shape=((h + 2 * kv) * k,), initializer="zeros"
            )
        if c.bias:
            self.output_bias = self.add_weight(name="output_bias", shape=(d,), initializer="zeros")
        if c.qk_norm:  # Qwen3: a plain RMSNorm per head, whatever the model's own norm kind
            self.query_norm = RMSNorm(c.layer_norm_epsilon, name="query_norm")
            self.key_norm = RMSNorm(c.layer_norm_epsilon, name="key_norm")
            self.query_norm.build((k,))
            self.key_norm.build((k,))
        self.dropout_layer = keras.layers.Dropout(c.dropout, name="attention_dropout")

    def call(
        self, x, positions, mask, cache=None, cache_index=None, cache_length=None, training=False
    ):
        """x (B, T, D), positions (B, T), mask (B, T, S) bool -> (B, T, D), updated cache.

        `cache` is a (keys, values) pair of (B, KV, S, K) tensors, or None when training.
        `cache_length` (an int, variables only): attend over the first `cache_length` columns
        of the cache, the ones the server's busy slots use, instead of all of them.
        """
        # Projections as plain 2-D matmuls over reshaped kernels (same weights): XLA on CPU ran
        # the 4-D einsums with transposed operands, measurably slower (benchmarks/README.md).
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        c = self.config
        h, kv, k, d = c.num_heads, self.kv_heads, self.head_dim, c.hidden_dim
        kernel = ops.reshape(self.qkv_kernel, (d, (h + 2 * kv) * k))
        qkv = dense(x, kernel, training)
        if self._lora is not None:
            qkv = self._lora.add(x, qkv, [("q", h * k), ("k", kv * k), ("v", kv * k)], training)
        if c.qkv_bias or c.bias:
            qkv = qkv + self.qkv_bias
        qkv = ops.reshape(qkv, (batch, length, h + 2 * kv, k))  # (B, T, H + 2 KV, K)
        query, key, value = qkv[:, :, :h], qkv[:, :, h : h + kv], qkv[:, :, h + kv :]
        if c.qk_norm:
            query, key = self.query_norm(query), self.key_norm(key)
        if c.positions == "rotary":
            inverse_freq = rotary_frequencies(c, k)
            query = apply_rotary(query, positions, inverse_freq)
            key = apply_rotary(key, positions, inverse_freq)
        # Heads first, (B, H, T, K): the cache is kept in this layout, so attention reads it
        # without a transposed copy of every cached key and value at every generated token.
        query, key, value = (ops.transpose(t, HEADS_FIRST) for t in (query, key, value))
        if cache is not None:  # write this step's keys and values into their slots
            indices = _cache_slots(batch, kv, length, cache_index)
            key, value = ops.cast(key, cache[0].dtype), ops.cast(value, cache[1].dtype)
            if hasattr(cache[0], "scatter_nd_update"):  # variables, written in place (server)
                cache[0].scatter_nd_update(indices, key)
                cache[1].scatter_nd_update(indices, value)
                # The first B rows (the server steps over its busy slots only), gathered: after
                # a scatter TF reads a variable by copying all of it.
                if cache_length is None:
                    rows = ops.arange(batch, dtype="int32")
                    key, value = cache[0].sparse_read(rows), cache[1].sparse_read(rows)
                else:  # columns 0..cache_length-1 of the first B rows, gathered the same way
                    window = _cache_slots(batch, kv, cache_length, 0)
                    key, value = cache[0].gather_nd(window), cache[1].gather_nd(window)
            else:
                key = ops.scatter_update(cache[0], indices, key)
                value = ops.scatter_update(cache[1], indices, value)
                cache = (key, value)
        query = query * ops.cast(self.query_scale, query.dtype)
        if x.shape[1] == 1:  # a decode step: (B, H, 1, K) reshapes to (B, 1, H, K) for free
            attended = attention.attend_one_query(query, key, value, mask, c.attention_softcap)
        else:
            if kv != h:  # query head j reads key/value head j // (H / KV), as HF's repeat_kv
                key, value = ops.repeat(key, h // kv, axis=1), ops.repeat(value, h // kv, axis=1)
            keep = None
            if training and c.dropout > 0:  # the dropout multiplier, one per probability
                shape = (batch, h, length, ops.shape(key)[2])
                keep = self.dropout_layer(ops.ones(shape, query.dtype), training=True)
            core = attention.attend_for_training if training else attention.attend
            attended = core(query, key, value, mask, keep, c.attention_softcap)
            attended = ops.transpose(attended, HEADS_FIRST)
        attended = ops.reshape(attended, (batch, length, h * k))  # (B, T, H K)
        output = dense(attended, ops.reshape(self.output_kernel, (h * k, d)), training)
        if self._lora is not None:
            output = self._lora.add(attended, output, [("o", d)], training)
        if c.bias:
            output = output + self.output_bias
        return output, cache


class TransformerBlock(Configured, keras.layers.Layer):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x)); with `config.post_norms`
    (Gemma 2) each branch's output is normed too before it is added."""

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config

    def build(self, input_shape):
        c = self.config
        eps, kind = c.layer_norm_epsilon, c.norm
        self.attention_norm = RMSNorm(eps, kind, name="attention_norm")
        self.attention = CausalSelfAttention(c, name="attention")
        self.mlp_norm = RMSNorm(eps, kind, name="mlp_norm")
        self.mlp = MLP(c, name="mlp")
        self.residual_dropout = keras.layers.Dropout(c.dropout, name="residual_dropout")
        layers = [self.attention_norm, self.attention, self.mlp_norm, self.mlp]
        if c.post_norms:
            self.attention_output_norm = RMSNorm(eps, kind, name="attention_output_norm")
            self.mlp_output_norm = RMSNorm(eps, kind, name="mlp_output_norm")
            layers += [self.attention_output_norm, self.mlp_output_norm]
        for layer in layers:
            layer.build(input_shape)

    def call(
        self, x, positions, mask, cache=None, cache_index=None, cache_length=None, training=False
    ):
        attended, cache = self.attention(
            self.attention_norm(x),
            positions,
            mask,
            cache=cache,
            cache_index=cache_index,
            cache_length=cache_length,
            training=training,
        )
        if self.config.post_norms:
            attended = self.attention_output_norm(attended)
        x = x + self.residual_dropout(attended, training=training)
        mlp = self.mlp(self.mlp_norm(x), training=training)
        if self.config.post_norms:
            mlp = self.mlp_output_norm(mlp)
        x = x + self.residual_dropout(mlp, training=training)
        return x, cache
