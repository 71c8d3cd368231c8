"""Sampling from a trained model with the model's key/value cache."""

from __future__ import annotations

import tensorflow as tf

from tfllm.tokenizer import EOS_ID


def sample_text(
    model,
    sp,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    seed: int = 0,
) -> str:
    """Prefills the prompt, then samples one token at a time; returns the completion text."""
    prompt_ids = sp.tokenize(tf.constant([prompt]))
    prompt_ids = prompt_ids.to_tensor()[:, -(model.max_sequence_length - max_new_tokens) :]
    if prompt_ids.shape[1] == 0:  # an empty prompt starts as a new document
        prompt_ids = tf.constant([[EOS_ID]], tf.int32)
    length = int(prompt_ids.shape[1])
    cache = model.empty_cache(1, length + max_new_tokens)
    logits, cache = model(prompt_ids, cache=cache, cache_index=0)
    generated = []
    for step in range(max_new_tokens):
        scaled = logits[:, -1, :] / max(temperature, 1e-6)
        token = tf.random.stateless_categorical(scaled, 1, seed=[seed, step], dtype=tf.int32)
        if int(token[0, 0]) == EOS_ID:
            break
        generated.append(int(token[0, 0]))
        logits, cache = model(token, cache=cache, cache_index=length + step)
    return sp.detokenize(tf.constant([generated], tf.int32))[0].numpy().decode("utf-8", "replace")
