"""Prefill and one-token decode as plain functions of explicit KV-cache tensors.

Runtimes outside TensorFlow (LiteRT on devices, ONNX Runtime) run neither the SentencePiece ops
nor the `tf.while_loop` with stateless sampling of the SavedModel's `serving_default`, so the
caller owns the loop: it tokenizes, calls `prefill` once and `decode` once per token, picks the
next token from the logits and passes the cache back in.

Both are the same function of a different length T:

    tokens (B, T) int32, input_pos (T,) int32 (the positions of the T tokens, consecutive),
    kv_cache_k_<i>, kv_cache_v_<i> (B, H, C, K) float32 for every layer i
    -> logits (B, T, V) float32, kv_cache_k_<i>, kv_cache_v_<i> (the cache with slots
       input_pos written)

A call reads cache slots up to its own positions only, so a prompt shorter than the prefill
length may be right-padded with any token: the slots written past its end are masked out until
decode steps overwrite them. Names follow LiteRT-LM (`kv_cache_k_<i>`, `input_pos`); the cache
layout is heads first, the model's own.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.model.lm import TransformerLM


def cache_names(num_layers: int) -> list[str]:
    """kv_cache_k_0, kv_cache_v_0, kv_cache_k_1, ...: the cache inputs and outputs in order."""
    return [f"kv_cache_{kind}_{i}" for i in range(num_layers) for kind in ("k", "v")]


def cache_spec(model: TransformerLM, batch: int | None, cache_length: int | None) -> list:
    shape = [batch, model.kv_heads, cache_length, model.head_dim]  # only the key/value heads
    return [tf.TensorSpec(shape, tf.float32, name=n) for n in cache_names(model.config.num_layers)]


def step_function(
    model: TransformerLM, batch=None, length=None, cache_length=None, output_prefix: str = ""
):
    """A tf.function over (tokens, input_pos, *caches) -> {logits, caches}; None dims are free.

    The names of the inputs are the TensorSpec names, so signatures built from it take
    `tokens`, `input_pos` and `kv_cache_*` as their keys. The updated caches are output as
    `output_prefix` + their input name: ONNX needs a prefix (a graph output may not have the
    name of an input), LiteRT signatures keep inputs and outputs apart and need none.
    """
    names = cache_names(model.config.num_layers)
    outputs = [output_prefix + name for name in names]
    specs = [
        tf.TensorSpec([batch, length], tf.int32, name="tokens"),
        tf.TensorSpec([length], tf.int32, name="input_pos"),
        *cache_spec(model, batch, cache_length),
    ]

    @tf.function(input_signature=specs)
    def step(tokens, input_pos, *flat_cache):
        cache = tuple(zip(flat_cache[0::2], flat_cache[1::2], strict=True))
        positions = tf.broadcast_to(input_pos[None, :], tf.shape(tokens))
        logits, cache = model(tokens, positions=positions, cache=cache, cache_index=input_pos[0])
        flat = [tensor for pair in cache for tensor in pair]
        return {"logits": logits, **dict(zip(outputs, flat, strict=True))}

    return step
