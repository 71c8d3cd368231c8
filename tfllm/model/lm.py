"""The decoder-only language model: one call path for training, evaluation, decoding and export.

    token ids (B, T) -> tied embedding -> N x TransformerBlock -> RMSNorm -> tied projection
      -> logits (B, T, V) in float32

The open-weight families (Llama, Mistral, Qwen2/3, Gemma 1/2, GPT-2) are this same model with
the knobs of `ARCHITECTURE` set (ModelConfig documents each); their defaults are tfllm's own.

Shape letters as in `tfllm.model.layers`; L is num_layers, V vocabulary_size.
"""

from __future__ import annotations

import contextlib
import math

import keras
from keras import ops

from tfllm.config import ModelConfig
from tfllm.model.layers import TransformerBlock
from tfllm.model.primitives import RMSNorm, weights_to_be_read
from tfllm.model.projections import TiedEmbedding

# ModelConfig keys that TransformerLM takes as its `architecture` dict, with tfllm's defaults.
ARCHITECTURE = {
    "num_key_value_heads": 0,
    "head_dim": 0,
    "tie_embeddings": True,
    "qkv_bias": False,
    "bias": False,
    "norm": "rms",
    "positions": "rotary",
    "rope_scaling": "none",
    "rope_scaling_factor": 8.0,
    "rope_low_freq_factor": 1.0,
    "rope_high_freq_factor": 4.0,
    "rope_original_max_positions": 8192,
    "embedding_scale": False,
    "post_norms": False,
    "attention_softcap": 0.0,
    "final_softcap": 0.0,
    "query_pre_attn_scalar": 0.0,
    "sliding_window": 0,
    "sliding_window_period": 1,
    "qk_norm": False,
}


def _attention_options(a: dict, epsilon: float) -> dict:
    """The architecture dict in the attention layer's terms."""
    llama3 = None
    if a["rope_scaling"] == "llama3":
        llama3 = {
            "factor": a["rope_scaling_factor"],
            "low_freq_factor": a["rope_low_freq_factor"],
            "high_freq_factor": a["rope_high_freq_factor"],
            "original_max_positions": a["rope_original_max_positions"],
        }
    return {
        "num_key_value_heads": a["num_key_value_heads"],
        "head_dim": a["head_dim"],
        "qkv_bias": a["qkv_bias"],
        "bias": a["bias"],
        "rope_llama3": llama3,
        "rotary": a["positions"] == "rotary",
        "softcap": a["attention_softcap"],
        "query_pre_attn_scalar": a["query_pre_attn_scalar"],
        "qk_norm": epsilon if a["qk_norm"] else 0.0,
    }


class TransformerLM(keras.Model):
    """A pre-norm Transformer LM with rotary positions and tied input/output embeddings.

    `call(token_ids)` returns logits; `call(token_ids, cache=..., cache_index=i)` also writes
    the keys and values of the T tokens into cache slots i..i+T-1 of the cache (one
    (keys, values) pair of (B, H, S, K) tensors per layer, from `empty_cache`) and returns
    `(logits, cache)`, for prefill and one-token decode steps alike. `i` is a scalar or (B,),
    one slot per row (continuous batching, `tfllm.server.engine`).

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
        architecture: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.architecture = a = {**ARCHITECTURE, **(architecture or {})}
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
        self.embedding = TiedEmbedding(
            vocabulary_size, hidden_dim, a["tie_embeddings"], name="token_embedding"
        )
        if a["positions"] == "learned":
            self.position_embedding = keras.layers.Embedding(
                max_sequence_length, hidden_dim, name="position_embedding"
            )
        self.kv_heads = a["num_key_value_heads"] or num_heads
        self.head_dim = a["head_dim"] or hidden_dim // num_heads
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
                a["norm"],
                a["post_norms"],
                name=f"block_{i}",
                **_attention_options(a, layer_norm_epsilon),
            )
            for i in range(num_layers)
        ]
        # Keras keeps lists in its own list type, which tf.train.Checkpoint does not look into:
        # without an attribute per block, checkpoints and SavedModels would silently drop them.
        for block in self.blocks:
            setattr(self, block.name, block)
        self.final_norm = RMSNorm(layer_norm_epsilon, a["norm"], name="final_norm")

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
    ):
        """Token ids (B, T) -> float32 logits (B, T, V) [, cache].

        `cache_start` (B,) int32, only with `cache`: leading padding slots per row (default 0).
        `cache_length` (an int, only with a cache of variables): attend over its first
        `cache_length` slots only (the server's decode step, when no busy row reaches further).
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
        a = self.architecture
        window_mask = mask
        if a["sliding_window"]:  # keys fewer than `sliding_window` positions back, as HF
            window_mask = mask & (positions[:, :, None] - key_positions < a["sliding_window"])

        x = self.embedding(token_ids)  # (B, T, D)
        if a["embedding_scale"]:  # Gemma: sqrt(D) rounded to the compute dtype first, as HF
            x = x * ops.cast(self.hidden_dim**0.5, x.dtype)
        if a["positions"] == "learned":  # padding slots (negative positions) read position 0
            x = x + self.position_embedding(ops.maximum(positions, 0))
        new_cache = []
        for i, block in enumerate(self.blocks):
            slides = a["sliding_window"] and i % a["sliding_window_period"] == 0
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
        logits = self.embedding.logits(self.final_norm(x), training)  # (B, T, V)
        if a["final_softcap"]:
            logits = a["final_softcap"] * ops.tanh(logits / a["final_softcap"])
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
            "architecture": self.architecture,
        }


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
        architecture={key: getattr(cfg, key) for key in ARCHITECTURE},
        name="transformer_lm",
    )
    model(ops.zeros((1, 2), dtype="int32"))
    return model
