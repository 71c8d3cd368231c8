"""Transformer layers in Keras 3: RMSNorm, rotary causal self-attention with a KV cache, MLP,
block.

Shape letters, used in every comment and einsum below:
    B batch, T query length, S key length (T, or the cache size when decoding),
    D hidden_dim, H num_heads, K head dim (D / H), F intermediate_dim.

One attention layer serves training and cached decoding: with `cache` the new keys and values
are written into a fixed-size pair of (B, H, S, K) tensors at `cache_index`, so the decode loop
keeps static shapes and compiles once. Keys and values stay separate tensors: stacking them
(or the layers) into one tensor copied the whole cache at every token, which measured about
0.3 ms of a 2.5 ms decode step.
"""

from __future__ import annotations

import keras
from keras import ops

from tfllm.model import attention
from tfllm.model.projections import dense

HEADS_FIRST = (0, 2, 1, 3)  # (B, T, H, K) <-> (B, H, T, K)


class RMSNorm(keras.layers.Layer):
    """Root-mean-square layer norm (no mean subtraction, no bias), computed in float32."""

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        x32 = ops.cast(x, "float32")
        x32 = x32 * ops.rsqrt(ops.mean(ops.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return ops.cast(x32 * ops.cast(self.scale, "float32"), self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def apply_rotary(x, positions, max_wavelength: float):
    """Rotates (B, T, H, K) queries or keys by their absolute positions (B, T)."""
    half = x.shape[-1] // 2
    inverse_freq = 1.0 / (max_wavelength ** (ops.arange(half, dtype="float32") / half))
    angles = ops.cast(positions, "float32")[..., None] * inverse_freq  # (B, T, K/2)
    cos = ops.cast(ops.cos(angles)[:, :, None, :], x.dtype)  # (B, T, 1, K/2)
    sin = ops.cast(ops.sin(angles)[:, :, None, :], x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return ops.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _cache_slots(batch, heads, length, cache_index):
    """(B, H, T, 3) scatter indices of slots cache_index..cache_index+T-1 in a (B, H, S, K)
    cache.

    A scatter rather than `ops.slice_update`: Keras lowers that to XlaDynamicUpdateSlice, an
    XLA-only op, and the exported serving graph must run without XLA (tensorflow/serving#2214).
    """
    shape = (batch, heads, length)
    rows = ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None, None], shape)
    head = ops.broadcast_to(ops.arange(heads, dtype="int32")[None, :, None], shape)
    slots = ops.broadcast_to(cache_index + ops.arange(length, dtype="int32"), shape)
    return ops.stack([rows, head, slots], axis=-1)


class CausalSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with rotary positions, a fused bias-free QKV projection and
    an optional fixed-size key/value cache."""

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        rope_max_wavelength: float = 10000.0,
        output_init_std: float = 0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.rope_max_wavelength = rope_max_wavelength
        self.output_init_std = output_init_std

    def build(self, input_shape):
        head_dim = self.hidden_dim // self.num_heads
        self.qkv_kernel = self.add_weight(
            name="qkv_kernel",
            shape=(self.hidden_dim, 3, self.num_heads, head_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.num_heads, head_dim, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.output_init_std),
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="attention_dropout")

    def call(self, x, positions, mask, cache=None, cache_index=None, training=False):
        """x (B, T, D), positions (B, T), mask (B, T, S) bool -> (B, T, D), updated cache.

        `cache` is a (keys, values) pair of (B, H, S, K) tensors, or None when training.
        """
        # Projections as plain 2-D matmuls over reshaped kernels (same weights): XLA on CPU ran
        # the 4-D einsums with transposed operands, measurably slower (benchmarks/README.md).
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        head_dim = self.hidden_dim // self.num_heads
        kernel = ops.reshape(self.qkv_kernel, (self.hidden_dim, 3 * self.hidden_dim))
        qkv = dense(x, kernel, training)
        qkv = ops.reshape(qkv, (batch, length, 3, self.num_heads, head_dim))  # (B, T, 3, H, K)
        # Heads first, (B, H, T, K): the cache is kept in this layout, so attention reads it
        # without a transposed copy of every cached key and value at every generated token.
        query = ops.transpose(
            apply_rotary(qkv[:, :, 0], positions, self.rope_max_wavelength), HEADS_FIRST
        )
        key = ops.transpose(
            apply_rotary(qkv[:, :, 1], positions, self.rope_max_wavelength), HEADS_FIRST
        )
        value = ops.transpose(qkv[:, :, 2], HEADS_FIRST)
        if cache is not None:  # write this step's keys and values into their slots
            indices = _cache_slots(batch, self.num_heads, length, cache_index)
            key = ops.scatter_update(cache[0], indices, ops.cast(key, cache[0].dtype))
            value = ops.scatter_update(cache[1], indices, ops.cast(value, cache[1].dtype))
            cache = (key, value)
        query = query * head_dim**-0.5
        if x.shape[1] == 1:  # a decode step: (B, H, 1, K) reshapes to (B, 1, H, K) for free
            attended = attention.attend_one_query(query, key, value, mask)
        else:
            keep = None
            if training and self.dropout > 0:  # the dropout multiplier, one per probability
                shape = (batch, self.num_heads, length, ops.shape(key)[2])
                keep = self.dropout_layer(ops.ones(shape, query.dtype), training=True)
            core = attention.attend_for_training if training else attention.attend
            attended = ops.transpose(core(query, key, value, mask, keep), HEADS_FIRST)
        attended = ops.reshape(attended, (batch, length, self.hidden_dim))  # (B, T, D)
        output = ops.reshape(self.output_kernel, (self.hidden_dim, self.hidden_dim))
        return dense(attended, output, training), cache

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "rope_max_wavelength": self.rope_max_wavelength,
            "output_init_std": self.output_init_std,
        }


class MLP(keras.layers.Layer):
    """Feed-forward: SwiGLU (fused gate and up projections) or GELU, bias-free."""

    def __init__(
        self,
        hidden_dim: int,
        intermediate_dim: int,
        activation: str = "swiglu",
        output_init_std: float = 0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.output_init_std = output_init_std

    def build(self, input_shape):
        gates = 2 if self.activation == "swiglu" else 1
        self.input_kernel = self.add_weight(
            name="input_kernel",
            shape=(self.hidden_dim, gates, self.intermediate_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.intermediate_dim, self.hidden_dim),
            initializer=keras.initializers.RandomNormal(stddev=self.output_init_std),
        )

    def call(self, x, training=False):
        gates = 2 if self.activation == "swiglu" else 1
        kernel = ops.reshape(self.input_kernel, (self.hidden_dim, gates * self.intermediate_dim))
        projected = dense(x, kernel, training)  # (B, T, gates * F)
        if self.activation == "swiglu":
            gate, up = ops.split(projected, 2, axis=-1)
            hidden = ops.silu(gate) * up
        else:
            hidden = ops.gelu(projected, approximate=True)
        return dense(hidden, self.output_kernel, training)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "activation": self.activation,
            "output_init_std": self.output_init_std,
        }


class TransformerBlock(keras.layers.Layer):
    """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        intermediate_dim: int,
        activation: str = "swiglu",
        dropout: float = 0.0,
        rope_max_wavelength: float = 10000.0,
        layer_norm_epsilon: float = 1e-5,
        output_init_std: float = 0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.dropout = dropout
        self.rope_max_wavelength = rope_max_wavelength
        self.layer_norm_epsilon = layer_norm_epsilon
        self.output_init_std = output_init_std

    def build(self, input_shape):
        self.attention_norm = RMSNorm(self.layer_norm_epsilon, name="attention_norm")
        self.attention = CausalSelfAttention(
            self.hidden_dim,
            self.num_heads,
            self.dropout,
            self.rope_max_wavelength,
            self.output_init_std,
            name="attention",
        )
        self.mlp_norm = RMSNorm(self.layer_norm_epsilon, name="mlp_norm")
        self.mlp = MLP(
            self.hidden_dim,
            self.intermediate_dim,
            self.activation,
            self.output_init_std,
            name="mlp",
        )
        self.residual_dropout = keras.layers.Dropout(self.dropout, name="residual_dropout")
        for layer in (self.attention_norm, self.attention, self.mlp_norm, self.mlp):
            layer.build(input_shape)

    def call(self, x, positions, mask, cache=None, cache_index=None, training=False):
        attended, cache = self.attention(
            self.attention_norm(x),
            positions,
            mask,
            cache=cache,
            cache_index=cache_index,
            training=training,
        )
        x = x + self.residual_dropout(attended, training=training)
        mlp = self.mlp(self.mlp_norm(x), training=training)
        x = x + self.residual_dropout(mlp, training=training)
        return x, cache

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "activation": self.activation,
            "dropout": self.dropout,
            "rope_max_wavelength": self.rope_max_wavelength,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "output_init_std": self.output_init_std,
        }
