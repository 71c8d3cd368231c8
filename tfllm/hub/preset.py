"""keras-hub preset directories, as `Backbone.save_to_preset` and a tokenizer's `save_to_preset`
write them (config.json with `registered_name`, model.weights.h5, tokenizer.json,
assets/tokenizer/...), read as the family's Hugging Face checkpoint.

keras-hub's own loader builds the backbone and the tokenizer; the backbone's config becomes the
family's config.json (then read by `hf_config`, with all its refusals) and its variables the
family's HF tensors (then assigned by `weights.assign_weights`, with its shape checks), so a
preset takes the same path as a Hugging Face directory. Every keras-hub config key is read,
harmless or required to hold its neutral value, and every variable must be used.
"""

from __future__ import annotations

import os

from tfllm.hub.hf_config import HubError, read_json
from tfllm.hub.preset_weights import hf_tensors

# registered_name -> family; the context length keras-hub does not store (rotary has no table):
# the HF config's of the family's checkpoints, as keras-hub's own exporter writes them.
BACKBONES = {
    "keras_hub>LlamaBackbone": ("llama", 4096),
    "keras_hub>Llama3Backbone": ("llama", 8192),
    "keras_hub>MistralBackbone": ("mistral", 32768),
    "keras_hub>QwenBackbone": ("qwen2", 32768),
    "keras_hub>Qwen3Backbone": ("qwen3", 32768),
    "keras_hub>GemmaBackbone": ("gemma", 8192),
    "keras_hub>GPT2Backbone": ("gpt2", 0),
}
_DECODER_KEYS = {
    "vocabulary_size": "vocab_size",
    "num_layers": "num_hidden_layers",
    "num_query_heads": "num_attention_heads",
    "hidden_dim": "hidden_size",
    "intermediate_dim": "intermediate_size",
    "num_key_value_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "layer_norm_epsilon": "rms_norm_eps",
    "rope_max_wavelength": "rope_theta",
}
_GPT2_KEYS = {
    "vocabulary_size": "vocab_size",
    "num_layers": "n_layer",
    "num_heads": "n_head",
    "hidden_dim": "n_embd",
    "intermediate_dim": "n_inner",
    "max_sequence_length": "n_positions",
}
_HARMLESS = {"name", "trainable", "dtype", "dropout", "tie_word_embeddings"}
# keras-hub keys whose other values change the computation in ways tfllm does not model.
_NEUTRAL = {
    "rope_position_scaling_factor": 1.0,
    "rope_scaling_factor": 1.0,
    "use_sliding_window_attention": False,  # Qwen2's; Gemma's is read below
}
_LLAMA3_KEYS = {
    "rope_frequency_adjustment_factor": "factor",
    "rope_low_freq_factor": "low_freq_factor",
    "rope_high_freq_factor": "high_freq_factor",
    "rope_pretraining_sequence_length": "original_max_position_embeddings",
}
_GEMMA_KEYS = {
    "query_head_dim_normalize",
    "use_post_ffw_norm",
    "use_post_attention_norm",
    "attention_logit_soft_cap",
    "final_logit_soft_cap",
    "use_sliding_window_attention",
    "sliding_window_size",
}


def preset_family(directory: str) -> tuple[str, dict]:
    """(family, the backbone's config) of a preset directory, checked before any loading."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise HubError(f"{directory}: no config.json (is it a keras-hub preset directory?)")
    spec = read_json(path)
    name = spec.get("registered_name")
    if name is None:
        raise HubError(
            f"{path}: no registered_name, not a keras-hub preset (a Hugging Face directory? "
            "use --from_hf)"
        )
    if name not in BACKBONES:
        raise HubError(
            f"{path}: registered_name {name!r} is not supported; supported: "
            + ", ".join(sorted(BACKBONES))
        )
    if not os.path.isfile(os.path.join(directory, "model.weights.h5")):
        raise HubError(f"{directory}: no model.weights.h5 (Backbone.save_to_preset writes it)")
    return name, spec.get("config", {})


def hf_config(name: str, config: dict, tied: bool, origin: str) -> dict:
    """A keras-hub backbone config -> the family's config.json."""
    family, context = BACKBONES[name]
    keys = _GPT2_KEYS if family == "gpt2" else _DECODER_KEYS
    policy = config.get("dtype")  # a DTypePolicy's config, or its name
    dtype = policy.get("config", {}).get("name") if isinstance(policy, dict) else policy
    dtype = dtype if dtype in ("bfloat16", "float16") else "float32"  # --to_hf writes it
    hf = {"model_type": family, "tie_word_embeddings": tied, "torch_dtype": dtype}
    hf.update({keys[k]: v for k, v in config.items() if k in keys})
    known = {*keys, *_HARMLESS, *(_GEMMA_KEYS if family == "gemma" else ())}
    for key, value in config.items():
        if key in _LLAMA3_KEYS and name.startswith("keras_hub>Llama"):
            if value is not None:  # Llama 3.1 frequency adjustment
                hf.setdefault("rope_scaling", {"rope_type": "llama3"})[_LLAMA3_KEYS[key]] = value
                context = 131072
        elif key == "sliding_window" and family == "mistral":
            hf["sliding_window"] = value
        elif key == "sliding_window_size" and family == "qwen2":
            continue  # used only with use_sliding_window_attention, which must be off
        elif key == "sliding_window_size" and family == "qwen3":
            if value and value < context:  # keras-hub windows every Qwen3 layer, HF none
                raise HubError(f"{origin}: sliding_window_size={value} is not supported")
        elif key in _NEUTRAL and family != "gemma":
            if value != _NEUTRAL[key]:
                raise HubError(
                    f"{origin}: {key}={value!r} changes the architecture and is not supported "
                    f"(tfllm supports {_NEUTRAL[key]!r})"
                )
        elif key not in known:
            raise HubError(f"{origin}: key {key!r} is not understood by tfllm's {family} import")
    if family == "gemma":
        hf.update(_gemma(config, origin))
    if "head_dim" in keys and hf.get("head_dim") is None:
        hf.pop("head_dim", None)  # None: hidden / heads
    if family == "gpt2":
        hf["layer_norm_epsilon"] = 1e-5  # keras-hub's GPT2Backbone fixes it
    else:
        hf["max_position_embeddings"] = context
    return hf


def _gemma(config: dict, origin: str) -> dict:
    """Gemma's keys: keras-hub's GemmaBackbone is Gemma 1 and 2 (post norms, soft caps, a
    window on even layers); its intermediate_dim is twice HF's (gate and up together)."""
    out = {"intermediate_size": config["intermediate_dim"] // 2}
    scalar = config["head_dim"]
    if not config.get("query_head_dim_normalize", True):
        scalar = config["hidden_dim"] // config["num_query_heads"]
    post = (config.get("use_post_ffw_norm", False), config.get("use_post_attention_norm", False))
    gemma2 = any(post) or any(
        config.get(k) for k in ("attention_logit_soft_cap", "final_logit_soft_cap")
    )
    gemma2 = gemma2 or config.get("use_sliding_window_attention", False)
    if not gemma2:
        if scalar != config["head_dim"]:
            raise HubError(f"{origin}: query_head_dim_normalize=False is Gemma 2's, not Gemma's")
        return out
    if not all(post):
        raise HubError(f"{origin}: use_post_ffw_norm and use_post_attention_norm differ")
    window = config.get("sliding_window_size") if config.get("use_sliding_window_attention") else 0
    return {
        **out,
        "model_type": "gemma2",
        "attn_logit_softcapping": config.get("attention_logit_soft_cap"),
        "final_logit_softcapping": config.get("final_logit_soft_cap"),
        "query_pre_attn_scalar": scalar,
        "sliding_window": window or None,
    }


def load(directory: str):
    """(family, config.json, {HF name: reader}, tokenizer or None) of a preset directory,
    through keras-hub's own loader."""
    name, config = preset_family(directory)
    import keras_hub

    origin = os.path.join(directory, "config.json")
    try:
        backbone = keras_hub.models.Backbone.from_preset(directory)
    except Exception as err:  # keras-hub raises ValueError, OSError, KeyError, h5py's ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(f"{directory}: keras-hub cannot load the backbone: {first}") from None
    tied = not any(v.path.endswith("reverse_embeddings") for v in backbone.weights)
    hf = hf_config(name, config, tied, origin)
    tensors = hf_tensors(backbone, hf["model_type"], backbone.num_layers, directory)
    tokenizer = None
    if os.path.isfile(os.path.join(directory, "tokenizer.json")):
        try:
            tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(directory)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise HubError(f"{directory}: keras-hub cannot load the tokenizer: {first}") from None
    return hf["model_type"], hf, tensors, tokenizer
