"""The supported Hugging Face families as data: how each `config.json` reads as a ModelConfig,
and which HF tensors make each tfllm variable.

A tensor map entry is `tfllm variable path: (kind, [HF tensor names])`, `{i}` standing for the
layer. Several HF tensors fuse into one tfllm variable along its last axis (Q, K, V into the QKV
kernel; gate and up into the MLP's input kernel), in that order. `linear` tensors are torch
`nn.Linear` weights, (out, in), transposed on the way in; `copy` tensors are laid out as tfllm's
(vectors, GPT-2's `Conv1D` weights, which are (in, out), and its position table). Import and
export read the same entry, so the round trip is exact by construction. HF's rotary layout is
rotate-half, as tfllm's (`tfllm.model.primitives.apply_rotary`): no Q/K permutation.
"""

from __future__ import annotations

_LLAMA_BLOCK = {
    "block_{i}/attention_norm/scale": ("copy", ["model.layers.{i}.input_layernorm.weight"]),
    "block_{i}/attention/qkv_kernel": (
        "linear",
        [f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"],
    ),
    "block_{i}/attention/qkv_bias": (
        "copy",
        [f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"],
    ),
    "block_{i}/attention/query_norm/scale": ("copy", ["model.layers.{i}.self_attn.q_norm.weight"]),
    "block_{i}/attention/key_norm/scale": ("copy", ["model.layers.{i}.self_attn.k_norm.weight"]),
    "block_{i}/attention/output_kernel": ("linear", ["model.layers.{i}.self_attn.o_proj.weight"]),
    "block_{i}/mlp_norm/scale": ("copy", ["model.layers.{i}.post_attention_layernorm.weight"]),
    "block_{i}/mlp/input_kernel": (
        "linear",
        [f"model.layers.{{i}}.mlp.{p}_proj.weight" for p in ("gate", "up")],
    ),
    "block_{i}/mlp/output_kernel": ("linear", ["model.layers.{i}.mlp.down_proj.weight"]),
}
_LLAMA = {
    "token_embedding/kernel": ("linear", ["model.embed_tokens.weight"]),
    "token_embedding/head_kernel": ("linear", ["lm_head.weight"]),
    "final_norm/scale": ("copy", ["model.norm.weight"]),
    **_LLAMA_BLOCK,
}
# Gemma 2's `post_attention_layernorm` norms the attention output; Gemma 1's (as Llama's) is
# the norm in front of the MLP.
_GEMMA2 = {
    **_LLAMA,
    "block_{i}/mlp_norm/scale": ("copy", ["model.layers.{i}.pre_feedforward_layernorm.weight"]),
    "block_{i}/attention_output_norm/scale": (
        "copy",
        ["model.layers.{i}.post_attention_layernorm.weight"],
    ),
    "block_{i}/mlp_output_norm/scale": (
        "copy",
        ["model.layers.{i}.post_feedforward_layernorm.weight"],
    ),
}
_GPT2 = {
    "token_embedding/kernel": ("linear", ["wte.weight"]),
    "position_embedding/embeddings": ("copy", ["wpe.weight"]),
    "final_norm/scale": ("copy", ["ln_f.weight"]),
    "final_norm/bias": ("copy", ["ln_f.bias"]),
    "block_{i}/attention_norm/scale": ("copy", ["h.{i}.ln_1.weight"]),
    "block_{i}/attention_norm/bias": ("copy", ["h.{i}.ln_1.bias"]),
    "block_{i}/attention/qkv_kernel": ("copy", ["h.{i}.attn.c_attn.weight"]),
    "block_{i}/attention/qkv_bias": ("copy", ["h.{i}.attn.c_attn.bias"]),
    "block_{i}/attention/output_kernel": ("copy", ["h.{i}.attn.c_proj.weight"]),
    "block_{i}/attention/output_bias": ("copy", ["h.{i}.attn.c_proj.bias"]),
    "block_{i}/mlp_norm/scale": ("copy", ["h.{i}.ln_2.weight"]),
    "block_{i}/mlp_norm/bias": ("copy", ["h.{i}.ln_2.bias"]),
    "block_{i}/mlp/input_kernel": ("copy", ["h.{i}.mlp.c_fc.weight"]),
    "block_{i}/mlp/input_bias": ("copy", ["h.{i}.mlp.c_fc.bias"]),
    "block_{i}/mlp/output_kernel": ("copy", ["h.{i}.mlp.c_proj.weight"]),
    "block_{i}/mlp/output_bias": ("copy", ["h.{i}.mlp.c_proj.bias"]),
}

# Per family: the tensor map; HF config keys read as ModelConfig keys (HF name, tfllm name,
# default when absent); fixed ModelConfig values; HF keys that must hold a neutral value when
# present (anything else changes the architecture in a way tfllm does not model).
_DECODER_KEYS = [
    ("vocab_size", "vocabulary_size", None),
    ("num_hidden_layers", "num_layers", None),
    ("num_attention_heads", "num_heads", None),
    ("hidden_size", "hidden_dim", None),
    ("intermediate_size", "intermediate_dim", None),
    ("max_position_embeddings", "max_sequence_length", None),
    ("rms_norm_eps", "layer_norm_epsilon", 1e-6),
    ("num_key_value_heads", "num_key_value_heads", 0),
    ("head_dim", "head_dim", 0),
]
_NEUTRAL = {
    "attention_bias": False,
    "mlp_bias": False,
    "pretraining_tp": 1,
    "use_sliding_window": False,
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "layer_types": None,  # checked against the sliding-window pattern instead
}
FAMILIES = {
    "llama": {
        "tensors": _LLAMA,
        "keys": _DECODER_KEYS,
        "fixed": {"activation": "swiglu"},
        "tie_default": False,
    },
    "mistral": {
        "tensors": _LLAMA,
        "keys": [*_DECODER_KEYS, ("sliding_window", "sliding_window", 0)],
        "fixed": {"activation": "swiglu"},
        "tie_default": False,
    },
    "qwen2": {
        "tensors": _LLAMA,
        "keys": _DECODER_KEYS,
        "fixed": {"activation": "swiglu", "qkv_bias": True},
        "tie_default": False,
        "ignored": ("sliding_window", "max_window_layers"),  # used only with use_sliding_window
        "written": {"use_sliding_window": False, "sliding_window": None, "max_window_layers": 0},
    },
    "qwen3": {
        "tensors": _LLAMA,
        "keys": _DECODER_KEYS,
        "fixed": {"activation": "swiglu", "qk_norm": True},
        "tie_default": True,
        "ignored": ("sliding_window", "max_window_layers"),
        "written": {"use_sliding_window": False, "sliding_window": None, "max_window_layers": 0},
    },
    "gemma": {
        "tensors": _LLAMA,
        "keys": _DECODER_KEYS,
        "fixed": {"activation": "geglu", "norm": "rms_plus_one", "embedding_scale": True},
        "tie_default": True,
        "activations": ("gelu_pytorch_tanh", "gelu"),  # HF runs Gemma's "gelu" as tanh too
    },
    "gemma2": {
        "tensors": _GEMMA2,
        "keys": [
            *_DECODER_KEYS,
            ("sliding_window", "sliding_window", 0),
            ("attn_logit_softcapping", "attention_softcap", 0.0),
            ("final_logit_softcapping", "final_softcap", 0.0),
            ("query_pre_attn_scalar", "query_pre_attn_scalar", 0.0),
        ],
        "fixed": {
            "activation": "geglu",
            "norm": "rms_plus_one",
            "embedding_scale": True,
            "post_norms": True,
            "sliding_window_period": 2,
        },
        "tie_default": True,
        "activations": ("gelu_pytorch_tanh",),
        "ignored": ("cache_implementation",),
    },
    "gpt2": {
        "tensors": _GPT2,
        "keys": [
            ("vocab_size", "vocabulary_size", None),
            ("n_layer", "num_layers", None),
            ("n_head", "num_heads", None),
            ("n_embd", "hidden_dim", None),
            ("n_inner", "intermediate_dim", None),
            ("n_positions", "max_sequence_length", None),
            ("layer_norm_epsilon", "layer_norm_epsilon", 1e-5),
        ],
        "fixed": {"activation": "gelu", "norm": "layer", "positions": "learned", "bias": True},
        "tie_default": True,
        "activations": ("gelu_new", "gelu_pytorch_tanh"),
        "written": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
        "neutral": {
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "add_cross_attention": False,
            "n_ctx": None,  # an old alias of n_positions
            "attn_pdrop": None,
            "embd_pdrop": None,
            "resid_pdrop": None,
        },
        "ignored": (
            "summary_type",
            "summary_use_proj",
            "summary_activation",
            "summary_proj_to_labels",
            "summary_first_dropout",
            "task_specific_params",
        ),
    },
}
# Keys that say nothing about the computation of the logits.
HARMLESS = {
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
    "initializer_range",
    "tie_word_embeddings",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "hidden_act",
    "hidden_activation",
    "activation_function",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
}
# Buffers some checkpoints carry that are not weights.
IGNORED_TENSORS = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def tensor_map(family: str, num_layers: int) -> dict[str, tuple[str, list[str]]]:
    """tfllm variable path -> (kind, HF names), with `{i}` expanded for every layer."""
    expanded = {}
    for path, (kind, names) in FAMILIES[family]["tensors"].items():
        layers = range(num_layers) if "{i}" in path else [None]
        for i in layers:
            key = path if i is None else path.replace("{i}", str(i))
            expanded[key] = (kind, [n if i is None else n.replace("{i}", str(i)) for n in names])
    return expanded
