"""The decoder-only language model: one call path for training, evaluation, decoding and export.

    token ids (B, T) -> tied embedding -> N x TransformerBlock -> RMSNorm -> tied projection
      -> logits (B, T, V) in float32

Shape letters as in `tfllm.layers`; L is num_layers, V vocabulary_size.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tfllm.config import ModelConfig
from tfllm.model.layers import RMSNorm, TransformerBlock
from tfllm.model.projections import TiedEmbedding


class TransformerLM(keras.Model):
    """A pre-norm Transformer LM with rotary positions and tied input/output embeddings.

    `call(token_ids)` returns logits; `call(token_ids, cache=..., cache_index=i)` also writes
    the keys and values of the T tokens into cache slots i..i+T-1 of the cache (one
    (keys, values) pair of (B, H, S, K) tensors per layer, from `empty_cache`) and returns
    `(logits, cache)`, for prefill and one-token decode steps alike.

    A batch of prompts of different lengths is left-padded: `cache_start` (B,) says how many
    leading slots of each row are padding, so slot s of row b holds position s - cache_start[b]
    and padding slots are never attended to.
    """

    def __init__(
        self,
        vocabulary_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        intermediate_dim: int,
        max_sequence_length: int,
        activation: str = "swiglu",
        dropout: float = 0.0,
        rope_max_wavelength: float = 10000.0,
        layer_norm_epsilon: float = 1e-5,
        remat: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.max_sequence_length = max_sequence_length
        self.activation = activation
        self.dropout = dropout
        self.rope_max_wavelength = rope_max_wavelength
        self.layer_norm_epsilon = layer_norm_epsilon
        self.remat = remat
        self.embedding = TiedEmbedding(vocabulary_size, hidden_dim, name="token_embedding")
        # GPT-2's scaled init: each residual branch's output starts at std 0.02 / sqrt(2L).
        output_init_std = 0.02 / math.sqrt(2 * num_layers)
        self.blocks = [
            TransformerBlock(
                hidden_dim,
                num_heads,
                intermediate_dim,
                activation,
                dropout,
                rope_max_wavelength,
                layer_norm_epsilon,
                output_init_std,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        # Keras keeps lists in its own list type, which tf.train.Checkpoint does not look into:
        # without an attribute per block, checkpoints and SavedModels would silently drop them.
        for block in self.blocks:
            setattr(self, block.name, block)
        self.final_norm = RMSNorm(layer_norm_epsilon, name="final_norm")

    def call(
        self,
        token_ids,
        positions=None,
        segment_ids=None,
        cache=None,
        cache_index=0,
        cache_start=None,
        training=False,
    ):
        """Token ids (B, T) -> float32 logits (B, T, V) [, cache].

        `cache_start` (B,) int32, only with `cache`: leading padding slots per row (default 0).
        """
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        if cache is not None and cache_start is None:
            cache_start = ops.zeros((batch,), dtype="int32")
        if positions is None:
            positions = ops.arange(length, dtype="int32")[None, :] + cache_index
            if cache_start is not None:
                positions = positions - cache_start[:, None]
            positions = ops.broadcast_to(positions, ops.shape(token_ids))
        if cache is None:  # keys are the queries' own positions: causal within each window
            mask = positions[:, None, :] <= positions[:, :, None]  # (B, T, T)
            if segment_ids is not None:  # document packing: never attend across documents
                mask = mask & (segment_ids[:, None, :] == segment_ids[:, :, None])
        else:  # slot s of row b holds position s - cache_start[b]; negative ones are padding
            slots = ops.arange(ops.shape(cache[0][0])[2], dtype="int32")
            key_positions = (slots[None, :] - cache_start[:, None])[:, None, :]  # (B, 1, S)
            mask = (key_positions >= 0) & (key_positions <= positions[:, :, None])  # (B, T, S)

        x = self.embedding(token_ids)  # (B, T, D)
        new_cache = []
        for i, block in enumerate(self.blocks):
            if self.remat and cache is None:
                x = self._rematerialized(block, x, positions, mask, training)
                continue
            layer_cache = None if cache is None else cache[i]
            x, layer_cache = block(
                x, positions, mask, cache=layer_cache, cache_index=cache_index, training=training
            )
            new_cache.append(layer_cache)
        logits = self.embedding.logits(self.final_norm(x), training)  # (B, T, V)
        if cache is None:
            return logits
        return logits, tuple(new_cache)

    @staticmethod
    def _rematerialized(block, x, positions, mask, training):
        """Runs `block` keeping only its input for the backward pass, which recomputes the
        block's activations: memory per block drops from O(activations) to O(B*T*D)."""

        def forward(h):
            return block(h, positions, mask, training=training)[0]

        return keras.remat(forward)(x)

    def empty_cache(self, batch_size: int, length: int, dtype: str = "float32"):
        """A zero cache for `length` positions: per layer a (keys, values) pair of
        (B, H, S, K) tensors."""
        head_dim = self.hidden_dim // self.num_heads
        shape = (batch_size, self.num_heads, length, head_dim)
        return tuple(
            (ops.zeros(shape, dtype=dtype), ops.zeros(shape, dtype=dtype))
            for _ in range(self.num_layers)
        )

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "max_sequence_length": self.max_sequence_length,
            "activation": self.activation,
            "dropout": self.dropout,
            "rope_max_wavelength": self.rope_max_wavelength,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "remat": self.remat,
        }


def build_model(cfg: ModelConfig, precision: str = "float32", remat: bool = False) -> TransformerLM:
    """Creates the model of `cfg` with its weights (a two-token call builds every layer).

    `precision` is a Keras dtype policy (`float32`, `mixed_bfloat16`, `mixed_float16`): layers
    compute in it and keep float32 variables; logits stay float32. Sublayers are created in
    `build()`, so the policy is set globally for the whole construction and restored after.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        return _build(cfg, remat)
    finally:
        keras.config.set_dtype_policy(previous)


def _build(cfg: ModelConfig, remat: bool) -> TransformerLM:
    model = TransformerLM(
        vocabulary_size=cfg.vocabulary_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        hidden_dim=cfg.hidden_dim,
        intermediate_dim=cfg.intermediate_dim,
        max_sequence_length=cfg.max_sequence_length,
        activation=cfg.activation,
        dropout=cfg.dropout,
        rope_max_wavelength=cfg.rope_max_wavelength,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        remat=remat,
        name="transformer_lm",
    )
    model(ops.zeros((1, 2), dtype="int32"))
    return model
