"""Tiny random keras-hub preset directories, written by keras-hub itself (`save_to_preset`).

One per backbone class and variant: grouped-query attention (4 query / 2 key-value heads),
head_dim != hidden / heads where the class has the key, tied and untied heads, Llama 3.1 rope
frequency adjustment, Qwen's Q/K/V biases, Qwen3's query/key norms, Gemma 2's post norms, soft
caps and sliding window.
"""

from __future__ import annotations

import numpy as np
from hub_fixtures import TINY

# The hub families' tiny shape (hub_fixtures.TINY, from conftest's one shape) in keras-hub's names.
_DECODER = {k: TINY[k] for k in ("vocabulary_size", "num_layers", "hidden_dim", "intermediate_dim")}
_GQA = {"num_query_heads": TINY["num_heads"], "num_key_value_heads": TINY["num_key_value_heads"]}
PRESETS = {
    "llama3": (
        "Llama3Backbone",
        {
            **_GQA,
            "tie_word_embeddings": False,
            "rope_max_wavelength": 500000,
            "rope_frequency_adjustment_factor": 8.0,
            "rope_low_freq_factor": 1.0,
            "rope_high_freq_factor": 4.0,
            "rope_pretraining_sequence_length": 16,
        },
    ),
    "llama2": ("LlamaBackbone", {**_GQA}),
    "mistral": ("MistralBackbone", {**_GQA, "head_dim": 12, "sliding_window": 5}),
    "qwen2": ("QwenBackbone", {**_GQA, "tie_word_embeddings": False}),
    "qwen3": ("Qwen3Backbone", {**_GQA, "head_dim": 12, "rope_max_wavelength": 1e6}),
    "gemma": ("GemmaBackbone", {**_GQA, "head_dim": 12}),
    "gemma2": (
        "GemmaBackbone",
        {
            **_GQA,
            "head_dim": 12,
            # query_head_dim_normalize stays True: keras-hub's GemmaDecoderBlock passes True
            # to its attention whatever the config says (tfllm reads False as HF's
            # query_pre_attn_scalar = hidden / heads, Gemma 2 27B's)
            "use_post_ffw_norm": True,
            "use_post_attention_norm": True,
            "attention_logit_soft_cap": 5.0,
            "final_logit_soft_cap": 3.0,
            "use_sliding_window_attention": True,
            "sliding_window_size": 4,
        },
    ),
    "gpt2": (
        "GPT2Backbone",
        {
            "num_heads": TINY["num_heads"],
            "max_sequence_length": TINY["max_sequence_length"],
            "dropout": 0.0,
        },
    ),
}


def write_preset(directory: str, variant: str, seed: int = 0, **changes):
    """Builds the variant's backbone with random weights, saves it as a preset; returns it."""
    import keras_hub

    name, keys = PRESETS[variant]
    backbone = getattr(keras_hub.models, name)(**{**_DECODER, **keys, **changes})
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    backbone.save_to_preset(directory)
    return backbone


def write_llama3_tokenizer(directory: str, source) -> object:
    """Saves a keras-hub Llama3Tokenizer made from the vocabulary and merges of the `tokenizers`
    tokenizer.json in `source` (tests/hf_tokenizer_files.py) into the preset; returns it."""
    import json

    import keras_hub

    spec = json.loads((source / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab.update({t["content"]: t["id"] for t in spec["added_tokens"]})
    # keras-hub's Llama3Tokenizer reloads only with its header tokens in the vocabulary
    for token in ("<|start_header_id|>", "<|end_header_id|>"):
        vocab[token] = len(vocab)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tokenizer = keras_hub.models.Llama3Tokenizer(vocabulary=vocab, merges=merges)
    tokenizer.save_to_preset(directory)
    return tokenizer


def write_gemma_tokenizer(directory: str) -> object:
    """Saves a keras-hub GemmaTokenizer over a small SentencePiece model with Gemma's special
    pieces (<pad> 0, <eos> 1, <bos> 2, <unk> 3); returns it."""
    import io

    import keras_hub
    import sentencepiece as spm
    from hf_tokenizer_files import CORPUS

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=model,
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        character_coverage=1.0,
        minloglevel=2,
    )
    tokenizer = keras_hub.models.GemmaTokenizer(proto=model.getvalue())
    tokenizer.save_to_preset(directory)
    return tokenizer
