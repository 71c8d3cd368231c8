"""The decoder-only language model: one call path for training, evaluation, decoding and export.

    token ids (B, T) -> tied embedding -> N x TransformerBlock -> RMSNorm -> tied projection
      -> logits (B, T, V) in float32

The open-weight families (Llama, Mistral, Qwen2/3, Gemma 1/2, GPT-2) are this same model with
the architecture knobs of its `ModelConfig` set (the dataclass documents each; their defaults
are tfllm's own). The model and each of its layers read their settings from that one config.

Shape letters as in `tfllm.model.layers`; L is num_layers, V vocabulary_size.
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from tfllm.config import ModelConfig
from tfllm.model.layers import TransformerBlock, head_shape
from tfllm.model.primitives import Configured, RMSNorm, weights_to_be_read
from tfllm.model.projections import TiedEmbedding


class TransformerLM(Configured, keras.Model):
    """A pre-norm Transformer LM with rotary positions and tied input/output embeddings, by
    default; `config` (a `ModelConfig`) holds its every setting, `remat` recomputes each block's
    activations in the backward pass (a training choice, not part of the model).

    `call(token_ids)` returns logits; `call(token_ids, cache=..., cache_index=i)` also writes
    the keys and values of the T tokens into cache slots i..i+T-1 of the cache (one
    (keys, values) pair of (B, KV, S, K) tensors per layer, from `empty_cache`) and returns
    `(logits, cache)`, for prefill and one-token decode steps alike. `i` is a scalar or (B,),
    one slot per row (continuous batching, `tfllm.server.engine`).

    A batch of prompts of different lengths is left-padded: `cache_start` (B,) says how many
    leading slots of each row are padding, so slot s of row b holds position s - cache_start[b]
    and padding slots are never attended to.
    """

    def __init__(self, config: ModelConfig, remat: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.config, self.remat = config, remat
        self.kv_heads, self.head_dim = head_shape(config)
        self.embedding = TiedEmbedding(config, name="token_embedding")
        if config.positions == "learned":
            self.position_embedding = keras.layers.Embedding(
                config.max_sequence_length, config.hidden_dim, name="position_embedding"
            )
        self.blocks = [
            TransformerBlock(config, name=f"block_{i}") for i in range(config.num_layers)
        ]
        # Keras keeps lists in its own list type, which tf.train.Checkpoint does not look into:
        # without an attribute per block, checkpoints and SavedModels would silently drop them.
        for block in self.blocks:
            setattr(self, block.name, block)
        self.final_norm = RMSNorm(config.layer_norm_epsilon, config.norm, name="final_norm")

    def call(
        self,
        token_ids,
        positions=None,
        segment_ids=None,
        cache=None,
        cache_index=0,
        cache_start=None,
        cache_length=None,
        training=False,
        last_only=False,
    ):
        """Token ids (B, T) -> float32 logits (B, T, V) [, cache].

        `cache_start` (B,) int32, only with `cache`: leading padding slots per row (default 0).
        `cache_length` (an int, only with a cache of variables): attend over its first
        `cache_length` slots only (the server's decode step, when no busy row reaches further).
        `last_only`: logits (B, 1, V) of the last position only, for a prefill that samples the
        next token: the vocabulary-wide head over every prompt position is a large share of a
        small model's prefill, and outside XLA slicing its output does not skip the work.
        """
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        if cache is not None and cache_start is None:
            cache_start = ops.zeros((batch,), dtype="int32")
        restart = positions is None and segment_ids is not None
        if positions is None:
            positions = ops.arange(length, dtype="int32")[None, :] + ops.reshape(
                cache_index, (-1, 1)
            )
            if cache_start is not None:
                positions = positions - cache_start[:, None]
            positions = ops.broadcast_to(positions, ops.shape(token_ids))
        if cache is None:  # keys are the queries' own positions: causal within each window
            key_positions = positions[:, None, :]  # (B, 1, T)
            mask = key_positions <= positions[:, :, None]  # (B, T, T)
            if segment_ids is not None:  # document packing: never attend across documents
                mask = mask & (segment_ids[:, None, :] == segment_ids[:, :, None])
            if restart:
                # Positions restart at each document, as generation sees a prompt: a packed
                # document's position is the count of its earlier tokens (they are contiguous).
                positions = ops.sum(ops.cast(mask, "int32"), axis=-1) - 1
                key_positions = positions[:, None, :]
        else:  # slot s of row b holds position s - cache_start[b]; negative ones are padding
            slots = ops.arange(cache_length or ops.shape(cache[0][0])[2], dtype="int32")
            key_positions = (slots[None, :] - cache_start[:, None])[:, None, :]  # (B, 1, S)
            mask = (key_positions >= 0) & (key_positions <= positions[:, :, None])  # (B, T, S)
        c = self.config
        window_mask = mask
        if c.sliding_window:  # keys fewer than `sliding_window` positions back, as HF
            window_mask = mask & (positions[:, :, None] - key_positions < c.sliding_window)

        x = self.embedding(token_ids)  # (B, T, D)
        if c.embedding_scale:  # Gemma: sqrt(D) rounded to the compute dtype first, as HF
            x = x * ops.cast(c.hidden_dim**0.5, x.dtype)
        if c.positions == "learned":  # padding slots (negative positions) read position 0
            x = x + self.position_embedding(ops.maximum(positions, 0))
        new_cache = []
        for i, block in enumerate(self.blocks):
            slides = c.sliding_window and i % c.sliding_window_period == 0
            block_mask = window_mask if slides else mask
            if self.remat and cache is None:
                x = self._rematerialized(block, x, positions, block_mask, training)
                continue
            layer_cache = None if cache is None else cache[i]
            x, layer_cache = block(
                x,
                positions,
                block_mask,
                cache=layer_cache,
                cache_index=cache_index,
                cache_length=cache_length,
                training=training,
            )
            new_cache.append(layer_cache)
        if last_only:
            x = x[:, -1:]
        logits = self.embedding.logits(self.final_norm(x), training)  # (B, T, V)
        if c.final_softcap:
            logits = c.final_softcap * ops.tanh(logits / c.final_softcap)
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
        (B, KV, S, K) tensors (only the key/value heads, fewer than H with grouped queries)."""
        shape = (batch_size, self.kv_heads, length, self.head_dim)
        return tuple(
            (ops.zeros(shape, dtype=dtype), ops.zeros(shape, dtype=dtype))
            for _ in range(self.config.num_layers)
        )

    def get_config(self):
        return {**super().get_config(), "remat": self.remat}


def build_model(
    cfg: ModelConfig, precision: str = "float32", remat: bool = False, initialize: bool = True
) -> TransformerLM:
    """Creates the model of `cfg` with its weights (a two-token call builds every layer).

    `precision` is a Keras dtype policy (`float32`, `mixed_bfloat16`, `mixed_float16`): layers
    compute in it and keep float32 variables; logits stay float32. Sublayers are created in
    `build()`, so the policy is set globally for the whole construction and restored after.
    `initialize=False` skips the random draws, for a model whose weights are read next (a
    checkpoint, an import).
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        with contextlib.nullcontext() if initialize else weights_to_be_read():
            return _build(cfg, remat)
    finally:
        keras.config.set_dtype_policy(previous)


def _build(cfg: ModelConfig, remat: bool) -> TransformerLM:
    model = TransformerLM(cfg, remat, name="transformer_lm")
    model(ops.zeros((1, 2), dtype="int32"))
    return model
