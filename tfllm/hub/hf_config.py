"""`config.json` <-> the model section of a tfllm config, per family (`families.FAMILIES`).

Every key of a config.json is either read, known to be harmless, or required to hold its
neutral value: a key that would change the architecture and that tfllm does not model is
refused, never ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math

from tfllm.config import ModelConfig
from tfllm.errors import TfllmError
from tfllm.hub.families import _NEUTRAL, FAMILIES, HARMLESS
from tfllm.validation import describe_range, in_range

_LLAMA3_KEYS = {
    "factor": "rope_scaling_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_positions",
}


_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


class HubError(TfllmError):
    """A Hugging Face directory or config that tfllm cannot read or write."""


def read_json(path: str) -> dict:
    """A config file of a checkpoint directory; unreadable or malformed JSON is a HubError."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise HubError(f"{path}: cannot read JSON: {err}") from None


def _number(value: object, key: str, name: str, origin: str) -> int | float:
    """A config.json value for ModelConfig field `name`, of its type and in its range."""
    field = _FIELDS[name]
    wanted = int if field.type == "int" else float
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and wanted is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # 256.0: an integer written as a float
    if not ok or (wanted is int and not isinstance(value, int)):
        kind = "an integer" if wanted is int else "a number"
        raise HubError(f"{origin}: {key} must be {kind}, got {value!r}")
    interval = field.metadata.get("range")
    if not math.isfinite(value) or (interval and not in_range(value, interval)):
        raise HubError(f"{origin}: {key} must be {describe_range(interval)}, got {value!r}")
    return wanted(value)


def _mapping(hf: dict, key: str, origin: str) -> dict:
    value = hf.get(key)
    if value is not None and not isinstance(value, dict):
        raise HubError(f"{origin}: {key} must be an object or null, got {value!r}")
    return value or {}


def _rope(hf: dict, origin: str) -> dict:
    """rope_theta and the Llama 3.1 scaling from `rope_scaling` (transformers v4) or
    `rope_parameters` (v5, which also holds rope_theta)."""
    params = dict(_mapping(hf, "rope_parameters", origin))
    params.update(_mapping(hf, "rope_scaling", origin))
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    out = {"rope_max_wavelength": _number(theta, "rope_theta", "rope_max_wavelength", origin)}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "llama3":
        out["rope_scaling"] = "llama3"
        for key, name in _LLAMA3_KEYS.items():
            if key not in params:
                raise HubError(f"{origin}: llama3 rope scaling without {key}")
            out[name] = _number(params[key], key, name, origin)
    elif kind != "default":
        raise HubError(
            f"{origin}: rope type {kind!r} is not supported (supported: default, llama3)"
        )
    return out


def to_model_config(
    hf: object, origin: str = "config.json", ignored: list | None = None
) -> tuple[str, dict]:
    """config.json as parsed JSON -> (family, the model section of a tfllm config as a dict).

    Keys tfllm does not know are judged by their value: null or false says the feature is off
    (transformers 5 writes such keys for every model), so it is accepted and its name added to
    `ignored`; any other value is refused, since it may change the architecture.
    """
    if not isinstance(hf, dict):
        raise HubError(f"{origin}: expected a JSON object, got {type(hf).__name__}")
    family = hf.get("model_type")
    if not isinstance(family, str) or family not in FAMILIES:
        raise HubError(
            f"{origin}: model_type {family!r} is not supported; supported: " + ", ".join(FAMILIES)
        )
    spec = FAMILIES[family]
    model = dataclasses.asdict(ModelConfig())
    read = set()
    for hf_key, key, default in spec["keys"]:
        value = hf.get(hf_key)
        read.add(hf_key)
        if value is None:
            if hf_key == "n_inner":  # GPT-2: 4 x hidden when absent
                value = 4 * model["hidden_dim"]
            elif default is None:
                raise HubError(f"{origin}: {hf_key} is missing")
            else:
                value = default
        model[key] = _number(value, hf_key, key, origin)
    # Spelled-out defaults read as tfllm's "0 = derived", so equal models have equal configs.
    if model["num_key_value_heads"] == model["num_heads"]:
        model["num_key_value_heads"] = 0
    if model["head_dim"] == model["hidden_dim"] // model["num_heads"]:
        model["head_dim"] = 0
    model.update(spec["fixed"])
    model.update(_rope(hf, origin) if model["positions"] == "rotary" else {})
    tie = hf.get("tie_word_embeddings", spec["tie_default"])
    if not isinstance(tie, bool):
        raise HubError(f"{origin}: tie_word_embeddings must be true or false, got {tie!r}")
    model["tie_embeddings"] = tie
    activation = (
        hf.get("hidden_activation") or hf.get("hidden_act") or hf.get("activation_function")
    )
    allowed = spec.get("activations", ("silu",))
    if activation is not None and activation not in allowed:
        raise HubError(f"{origin}: activation {activation!r} is not supported for {family}")
    neutral = {**_NEUTRAL, **spec.get("neutral", {})}
    for key, value in hf.items():
        if key in read or key in HARMLESS or key in spec.get("ignored", ()):
            continue
        if key == "layer_types":
            _check_layer_types(value, model, origin)
        elif key.endswith("_pdrop") or key in ("attention_dropout", "n_ctx", "hidden_act"):
            continue  # dropout rates (training only) and aliases read above
        elif key in neutral and value != neutral[key] and value is not None:
            raise HubError(
                f"{origin}: {key}={value!r} changes the architecture and is not supported "
                f"(tfllm supports {neutral[key]!r})"
            )
        elif key not in neutral:
            if value is not None and value is not False:
                raise HubError(
                    f"{origin}: key {key!r} (= {value!r}) is not understood by tfllm's "
                    f"{family} import; only null or false is accepted for a key it does not know"
                )
            if ignored is not None:
                ignored.append(key)
    return family, model


def _check_layer_types(types: object, model: dict, origin: str) -> None:
    """transformers v5 spells the sliding-window pattern out per layer: it must be ours."""
    if not isinstance(types, list):
        raise HubError(f"{origin}: layer_types must be a list, got {types!r}")
    period, window = model["sliding_window_period"], model["sliding_window"]
    expected = [
        "sliding_attention" if window and i % period == 0 else "full_attention"
        for i in range(model["num_layers"])
    ]
    if list(types) != expected:
        raise HubError(f"{origin}: layer_types {types} is not supported (expected {expected})")


def from_model_config(family: str, model: dict, base: dict | None = None) -> dict:
    """The model section of a tfllm config -> config.json for `family`, over `base` (the
    imported config.json, so keys tfllm does not model, such as token ids, are kept)."""
    spec = FAMILIES[family]
    hf = dict(base or {"architectures": [_ARCHITECTURES[family]]})
    hf["model_type"] = family
    for key, value in spec.get("written", {}).items():  # keys transformers' configs always have
        hf.setdefault(key, value)
    for hf_key, key, _ in spec["keys"]:
        value = model[key]
        if key in ("num_key_value_heads", "head_dim") and not value:
            value = (
                model["num_heads"]
                if key == "num_key_value_heads"
                else (model["hidden_dim"] // model["num_heads"])
            )
        elif key == "sliding_window" and not value:
            value = None
        elif hf_key in _INTEGER_KEYS and float(value).is_integer():
            value = int(value)  # transformers v5's strict configs refuse 256.0
        hf[hf_key] = value
    hf["tie_word_embeddings"] = model["tie_embeddings"]
    if model["positions"] == "rotary":
        rope = {"rope_type": "default"}
        if model["rope_scaling"] == "llama3":
            rope = {"rope_type": "llama3", **{k: model[v] for k, v in _LLAMA3_KEYS.items()}}
        if "rope_parameters" in hf:
            hf["rope_parameters"] = {**rope, "rope_theta": model["rope_max_wavelength"]}
        else:
            hf["rope_theta"] = model["rope_max_wavelength"]
            hf["rope_scaling"] = None if model["rope_scaling"] == "none" else rope
    if family == "gpt2":
        hf.setdefault("activation_function", "gelu_new")
    elif family.startswith("gemma"):
        hf.setdefault("hidden_activation", "gelu_pytorch_tanh")
    else:
        hf.setdefault("hidden_act", "silu")
    if "dtype" not in hf:  # transformers v5 writes `dtype`, v4 `torch_dtype`
        hf.setdefault("torch_dtype", "float32")
    read_back = to_model_config(hf, f"{family} export")[1]
    differ = [f"model.{k} {model[k]!r}" for k in model if read_back.get(k) != model[k]]
    if differ:
        raise HubError(
            f"this model's architecture is not {family}'s ({', '.join(differ)}): it cannot be "
            "written as a Hugging Face checkpoint of that family"
        )
    return hf


_INTEGER_KEYS = {"query_pre_attn_scalar"}  # floats in ModelConfig, ints in transformers' configs
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
