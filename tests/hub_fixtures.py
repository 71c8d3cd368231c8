"""Tiny random Hugging Face model directories, one per family and variant.

The safetensors and config.json are written by tfllm's exporter (`tfllm.hub`) from a model with
random weights; the parity tests load them with keras-hub's own converter, which reads the
names, layouts and config keys independently, so a wrong map cannot pass.
"""

from __future__ import annotations

import json
import os

import numpy as np
from conftest import TINY_SHAPE

from tfllm.config import ModelConfig
from tfllm.hub import hf_config, weights
from tfllm.model.lm import build_model

# conftest's one tiny shape, as the families need it: no tokenizer to cover (128 ids, which the
# parity tests draw from), grouped-query attention (4 query heads share 2 key/value heads) and
# the families' own norm epsilon.
TINY = {
    **TINY_SHAPE,
    "vocabulary_size": 128,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "layer_norm_epsilon": 1e-6,
}
# family -> (variant name -> (model keys, config.json base keys)).
VARIANTS = {
    "llama": (  # Llama 3.1 scaling; original context 16 puts one frequency in each band
        "llama",
        {
            "tie_embeddings": False,
            "rope_scaling": "llama3",
            "rope_original_max_positions": 16,
            "rope_max_wavelength": 10000.0,
        },
        {},
    ),
    "llama_v5": (  # transformers v5 config: rope_parameters, tied head
        "llama",
        {"rope_max_wavelength": 500000.0},
        {"rope_parameters": {}},
    ),
    # keras-hub's mistral converter rounds every tensor to float16: the fixture is written in
    # float16 (exact for both readers)
    "mistral": ("mistral", {"head_dim": 12, "tie_embeddings": False, "sliding_window": 5}, {}),
    "qwen2": ("qwen2", {"qkv_bias": True, "tie_embeddings": False}, {}),
    "qwen3": ("qwen3", {"qk_norm": True, "head_dim": 12, "rope_max_wavelength": 1e6}, {}),
    "gemma": (
        "gemma",
        {"head_dim": 12, "activation": "geglu", "norm": "rms_plus_one", "embedding_scale": True},
        {},
    ),
    "gemma2": (
        "gemma2",
        {
            "head_dim": 12,
            "activation": "geglu",
            "norm": "rms_plus_one",
            "embedding_scale": True,
            "post_norms": True,
            "attention_softcap": 5.0,
            "final_softcap": 3.0,
            # keras-hub scales queries by head_dim whatever query_pre_attn_scalar says; its
            # effect is tested on its own (test_query_pre_attn_scalar)
            "query_pre_attn_scalar": 12.0,
            "sliding_window": 4,
            "sliding_window_period": 2,
        },
        {},
    ),
    "gpt2": (
        "gpt2",
        {
            "num_key_value_heads": 0,
            "activation": "gelu",
            "norm": "layer",
            "positions": "learned",
            "bias": True,
            "layer_norm_epsilon": 1e-5,
            "intermediate_dim": 128,  # keras-hub reads no n_inner: 4 x hidden
        },
        {},
    ),
}


def model_config(variant: str, **changes) -> tuple[str, ModelConfig]:
    family, keys, _ = VARIANTS[variant]
    return family, ModelConfig(**{**TINY, **keys, **changes})


def write_hf_dir(
    directory: str,
    variant: str,
    dtype: str = "float32",
    seed: int = 0,
    shard_bytes: int = 1 << 30,
    **changes,
):
    """Writes a random model of `variant` (with `changes` to its model config) as an HF
    directory; returns the tfllm model."""
    family, cfg = model_config(variant, **changes)
    model = build_model(cfg)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    os.makedirs(directory, exist_ok=True)
    base = {
        "architectures": [hf_config._ARCHITECTURES[family]],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
        **VARIANTS[variant][2],
    }
    section = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    config = hf_config.from_model_config(family, section, base)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": [2, 3]}, f)
    weights.write_weights(directory, family, model, dtype, shard_bytes)
    return model


def cached_logits(model, ids, prefill: int):
    """Logits of every position: a prefill of `prefill` tokens, then one token per step."""
    cache = model.empty_cache(ids.shape[0], ids.shape[1])
    logits, cache = model(ids[:, :prefill], cache=cache, cache_index=0)
    steps = [np.asarray(logits)]
    for i in range(prefill, ids.shape[1]):
        logits, cache = model(ids[:, i : i + 1], cache=cache, cache_index=i)
        steps.append(np.asarray(logits))
    return np.concatenate(steps, axis=1)
