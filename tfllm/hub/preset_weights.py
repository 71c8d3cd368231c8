"""A keras-hub backbone's variables as its family's Hugging Face tensors (`preset.load`).

Per family, `HF name: [keras-hub variable paths..., how they make the HF tensor]`, `{i}` the
layer; keras-hub's kernels are (in, heads, head_dim) for Q, K, V (Gemma's (heads, in,
head_dim)), (heads, head_dim, out) for the attention output and (in, out) for dense layers, where
HF's torch Linear weights are (out, in) and GPT-2's Conv1D weights (in, out).
"""

from __future__ import annotations

import numpy as np

from tfllm.hub.hf_config import HubError


# HF name template -> (keras-hub variable paths, how they make the HF tensor); `{i}` the layer.
def _in(x):  # (in, heads, head_dim) -> torch Linear (heads * head_dim, in)
    return x.reshape(x.shape[0], -1).T


def _out(x):  # (heads, head_dim, out) -> (out, heads * head_dim)
    return x.reshape(-1, x.shape[-1]).T


_LAYERS = {
    "model.layers.{i}.input_layernorm.weight": ["self_attention_layernorm/scale"],
    "model.layers.{i}.post_attention_layernorm.weight": ["feedforward_layernorm/scale"],
    "model.layers.{i}.mlp.gate_proj.weight": ["feedforward_gate_dense/kernel", np.transpose],
    "model.layers.{i}.mlp.up_proj.weight": ["feedforward_intermediate_dense/kernel", np.transpose],
    "model.layers.{i}.mlp.down_proj.weight": ["feedforward_output_dense/kernel", np.transpose],
    "model.layers.{i}.self_attn.o_proj.weight": ["self_attention/attention_output/kernel", _out],
    **{
        f"model.layers.{{i}}.self_attn.{p}_proj.weight": [f"self_attention/{n}/kernel", _in]
        for p, n in (("q", "query"), ("k", "key"), ("v", "value"))
    },
    **{
        f"model.layers.{{i}}.self_attn.{p}_proj.bias": [f"self_attention/{n}/bias", np.ravel]
        for p, n in (("q", "query"), ("k", "key"), ("v", "value"))
    },
    "model.layers.{i}.self_attn.q_norm.weight": ["self_attention/query_dense_layernorm/scale"],
    "model.layers.{i}.self_attn.k_norm.weight": ["self_attention/key_dense_layernorm/scale"],
}
_DECODER = {
    "model.embed_tokens.weight": ["token_embedding/embeddings"],
    "lm_head.weight": ["token_embedding/reverse_embeddings", np.transpose],
    "model.norm.weight": ["sequence_output_layernorm/scale"],
    **{k: [f"transformer_layer_{{i}}/{v[0]}", *v[1:]] for k, v in _LAYERS.items()},
}
_GEMMA = {
    "model.embed_tokens.weight": ["token_embedding/embeddings"],
    "model.norm.weight": ["final_normalization/scale"],
    "model.layers.{i}.input_layernorm.weight": ["decoder_block_{i}/pre_attention_norm/scale"],
    "model.layers.{i}.mlp.gate_proj.weight": ["decoder_block_{i}/ffw_gating/kernel", np.transpose],
    "model.layers.{i}.mlp.up_proj.weight": ["decoder_block_{i}/ffw_gating_2/kernel", np.transpose],
    "model.layers.{i}.mlp.down_proj.weight": ["decoder_block_{i}/ffw_linear/kernel", np.transpose],
    "model.layers.{i}.self_attn.o_proj.weight": [
        "decoder_block_{i}/attention/attention_output/kernel",
        _out,
    ],
    # Gemma's Q, K, V kernels are (heads, in, head_dim).
    **{
        f"model.layers.{{i}}.self_attn.{p}_proj.weight": [
            f"decoder_block_{{i}}/attention/{n}/kernel",
            lambda x: _in(x.transpose(1, 0, 2)),
        ]
        for p, n in (("q", "query"), ("k", "key"), ("v", "value"))
    },
}
_GEMMA1 = {
    **_GEMMA,
    "model.layers.{i}.post_attention_layernorm.weight": ["decoder_block_{i}/pre_ffw_norm/scale"],
}
_GEMMA2 = {
    **_GEMMA,
    "model.layers.{i}.pre_feedforward_layernorm.weight": ["decoder_block_{i}/pre_ffw_norm/scale"],
    "model.layers.{i}.post_attention_layernorm.weight": [
        "decoder_block_{i}/post_attention_norm/scale"
    ],
    "model.layers.{i}.post_feedforward_layernorm.weight": ["decoder_block_{i}/post_ffw_norm/scale"],
}
_QKV = [f"transformer_layer_{{i}}/self_attention/{n}" for n in ("query", "key", "value")]
_GPT2 = {  # Conv1D weights are (in, out): no transpose; c_attn is Q, K, V side by side
    "wte.weight": ["token_embedding/embeddings"],
    "wpe.weight": ["position_embedding/embeddings"],
    "ln_f.weight": ["layer_norm/gamma"],
    "ln_f.bias": ["layer_norm/beta"],
    "h.{i}.ln_1.weight": ["transformer_layer_{i}/self_attention_layer_norm/gamma"],
    "h.{i}.ln_1.bias": ["transformer_layer_{i}/self_attention_layer_norm/beta"],
    "h.{i}.ln_2.weight": ["transformer_layer_{i}/feedforward_layer_norm/gamma"],
    "h.{i}.ln_2.bias": ["transformer_layer_{i}/feedforward_layer_norm/beta"],
    "h.{i}.attn.c_attn.weight": [
        *[f"{p}/kernel" for p in _QKV],
        lambda *xs: np.concatenate([x.reshape(x.shape[0], -1) for x in xs], axis=-1),
    ],
    "h.{i}.attn.c_attn.bias": [
        *[f"{p}/bias" for p in _QKV],
        lambda *xs: np.concatenate([x.ravel() for x in xs]),
    ],
    "h.{i}.attn.c_proj.weight": [
        "transformer_layer_{i}/self_attention/attention_output/kernel",
        lambda x: x.reshape(-1, x.shape[-1]),
    ],
    "h.{i}.attn.c_proj.bias": ["transformer_layer_{i}/self_attention/attention_output/bias"],
    "h.{i}.mlp.c_fc.weight": ["transformer_layer_{i}/feedforward_intermediate_dense/kernel"],
    "h.{i}.mlp.c_fc.bias": ["transformer_layer_{i}/feedforward_intermediate_dense/bias"],
    "h.{i}.mlp.c_proj.weight": ["transformer_layer_{i}/feedforward_output_dense/kernel"],
    "h.{i}.mlp.c_proj.bias": ["transformer_layer_{i}/feedforward_output_dense/bias"],
}
_MAPS = {"gpt2": _GPT2, "gemma": _GEMMA1, "gemma2": _GEMMA2}


def hf_tensors(backbone, family: str, num_layers: int, origin: str) -> dict:
    """{HF name: a function returning (the tensor, where it comes from)} of the backbone's
    variables; a variable that no HF tensor takes is an architecture tfllm does not read."""
    variables = {v.path: v for v in backbone.weights}
    tensors, used = {}, set()
    for template, (*paths, make) in _entries(_MAPS.get(family, _DECODER)):
        for i in range(num_layers) if "{i}" in template else [None]:
            names = [p.replace("{i}", str(i)) for p in paths]
            if not all(n in variables for n in names):
                continue
            used.update(names)

            def read(names=names, make=make):
                arrays = [np.asarray(variables[n].numpy()) for n in names]
                return make(*arrays), f"{origin} ({names[0]})"

            tensors[template.replace("{i}", str(i))] = read
    unused = sorted(set(variables) - used)
    if unused:
        raise HubError(f"{origin}: keras-hub variable {unused[0]} is not read by tfllm's {family}")
    return tensors


def _entries(mapping: dict):
    for template, spec in mapping.items():
        make = spec[-1] if callable(spec[-1]) else (lambda x: x)
        paths = spec[:-1] if callable(spec[-1]) else spec
        yield template, (*paths, make)
