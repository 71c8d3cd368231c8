"""The checks a config must pass beyond its types: ranges, choices, and the combinations of
keys that cannot work together. `tfllm.config.load_config` runs them on every config."""

from __future__ import annotations

import dataclasses
import math

from tfllm.errors import ConfigError

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multiworker", "tpu")
COLLECTIVES = ("auto", "ring", "nccl")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def parse_range(interval: str) -> tuple[float, bool, float, bool]:
    """`"[0, 1)"` -> (0.0, True, 1.0, False): the bounds and whether each is included."""
    low, high = (part.strip() for part in interval.strip()[1:-1].split(","))
    return float(low), interval.strip()[0] == "[", float(high), interval.strip()[-1] == "]"


def in_range(value: float, interval: str) -> bool:
    low, low_in, high, high_in = parse_range(interval)
    above = value >= low if low_in else value > low
    below = value <= high if high_in else value < high
    return above and below


def check_ranges(cfg) -> None:
    """Every numeric key against the range its field declares (`tfllm.config.ranged`);
    NaN and infinities are refused everywhere: no setting means anything with them."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for key in dataclasses.fields(values):
            value = getattr(values, key.name)
            name = f"{section.name}.{key.name}"
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}")
            interval = key.metadata.get("range")
            if interval and not in_range(value, interval):
                raise ConfigError(f"{name} must be {describe_range(interval)}, got {value}")


def describe_range(interval: str) -> str:
    """`[1, inf)` -> "at least 1", `(0, inf)` -> "greater than 0", else "in [0, 1)"."""
    low, low_in, high, _ = parse_range(interval)
    if math.isinf(high):
        bound = f"{low:g}"
        return f"at least {bound}" if low_in else f"greater than {bound}"
    return f"in {interval}"


def validate(cfg) -> None:
    """The declared ranges, then the checks across keys that a range cannot express."""
    check_ranges(cfg)
    m, d, t = cfg.model, cfg.data, cfg.train
    _validate_architecture(m)
    if d.seq_len > m.max_sequence_length:
        raise ConfigError(
            f"data.seq_len ({d.seq_len}) is larger than model.max_sequence_length "
            f"({m.max_sequence_length})"
        )
    if d.tokenizer_type not in ("unigram", "bpe"):
        raise ConfigError(f"data.tokenizer_type must be unigram or bpe, got {d.tokenizer_type!r}")
    choices = {
        "data.utf8_policy": (d.utf8_policy, ("skip", "replace")),
        "data.packing": (d.packing, ("concat", "document")),
        "data.compression": (d.compression, ("none", "gzip")),
        "data.on_corrupt": (d.on_corrupt, ("error", "skip")),
        "data.verify": (d.verify, ("sha256", "size")),
        "data.on_bad_input": (d.on_bad_input, ("skip", "error")),
        "data.format": (
            d.format,
            ("text", "prompt_completion", "messages", "alpaca", "preference"),
        ),
        "data.train_on": (d.train_on, ("completion", "assistant", "all")),
        "data.truncate": (d.truncate, ("cut", "drop")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be {' or '.join(allowed)}, got {value!r}")
    if d.format != "text" and d.packing != "document":
        raise ConfigError(f"data.format={d.format} packs whole examples: set data.packing=document")
    if d.train_on == "assistant" and d.format != "messages":
        raise ConfigError("data.train_on=assistant needs data.format=messages; use completion")
    if d.max_doc_chars < d.min_doc_chars:
        raise ConfigError(
            f"data.max_doc_chars ({d.max_doc_chars}) must be at least data.min_doc_chars "
            f"({d.min_doc_chars})"
        )
    _validate_prepare(d)
    for key, value in {"runtime.workdir": cfg.runtime.workdir, "data.name": d.name}.items():
        if not value.strip():
            raise ConfigError(f"{key} must name a directory, got {value!r}")
    parse_profile_steps(t.profile_steps)
    if t.on_nonfinite not in ("stop", "skip", "rollback"):
        raise ConfigError(
            f"train.on_nonfinite must be stop, skip or rollback, got {t.on_nonfinite!r}"
        )

    if t.global_batch_size % t.grad_accum_steps:
        raise ConfigError(
            f"train.global_batch_size ({t.global_batch_size}) is not divisible by "
            f"train.grad_accum_steps ({t.grad_accum_steps})"
        )
    choices = {
        "train.precision": (t.precision, PRECISIONS),
        "runtime.strategy": (cfg.runtime.strategy, STRATEGIES),
        "runtime.collective": (cfg.runtime.collective, COLLECTIVES),
    }
    for key, (value, valid) in choices.items():
        if value not in valid:
            raise ConfigError(f"{key} must be one of {', '.join(valid)}, got {value!r}")
    if t.remat and m.dropout > 0:
        # The backward pass would recompute each block with fresh dropout masks: wrong gradients.
        raise ConfigError("train.remat needs model.dropout 0 (recomputation redraws the masks)")
    _validate_lora(t)
    _validate_post_training(d, t)


DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


def _validate_post_training(d, t) -> None:
    """DPO needs preference pairs and a starting checkpoint (its reference); distillation a
    teacher and plain or instruction data."""
    if t.objective not in ("lm", "dpo"):
        raise ConfigError(f"train.objective must be lm or dpo, got {t.objective!r}")
    if t.dpo_loss not in DPO_LOSSES:
        raise ConfigError(
            f"train.dpo_loss must be one of {', '.join(DPO_LOSSES)}, got {t.dpo_loss!r}"
        )
    if t.dpo_beta <= 0 or not 0.0 <= t.dpo_label_smoothing < 0.5:
        raise ConfigError(
            "train.dpo_beta must be > 0 and train.dpo_label_smoothing in [0, 0.5); got "
            f"{t.dpo_beta}, {t.dpo_label_smoothing}"
        )
    if not 0.0 <= t.distill_alpha <= 1.0 or t.distill_temperature <= 0:
        raise ConfigError(
            "train.distill_alpha must be in [0, 1] and train.distill_temperature > 0; got "
            f"{t.distill_alpha}, {t.distill_temperature}"
        )
    if (t.objective == "dpo") != (d.format == "preference"):
        raise ConfigError(
            "train.objective=dpo and data.format=preference go together; got "
            f"train.objective={t.objective}, data.format={d.format}"
        )
    if t.objective == "dpo" and not t.init_from:
        raise ConfigError(
            "train.objective=dpo needs train.init_from: the starting model is the reference"
        )
    if t.distill_from and t.objective != "lm":
        raise ConfigError("train.distill_from needs train.objective=lm (distillation is not DPO)")


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def _validate_lora(t) -> None:
    if t.lora_rank and not t.init_from:
        raise ConfigError("train.lora_rank needs train.init_from (the workdir of the base model)")
    targets = [x.strip() for x in t.lora_targets.split(",") if x.strip()]
    unknown = [x for x in targets if x not in LORA_TARGETS]
    if t.lora_rank and (unknown or not targets):
        raise ConfigError(
            f"train.lora_targets must name some of {', '.join(LORA_TARGETS)}, got "
            f"{t.lora_targets!r}"
        )
    if t.base_precision not in ("float32", "bfloat16"):
        raise ConfigError(
            f"train.base_precision must be float32 or bfloat16, got {t.base_precision!r}"
        )
    if t.base_precision == "bfloat16" and not t.lora_rank:
        raise ConfigError("train.base_precision=bfloat16 needs LoRA (train.lora_rank > 0)")


def _validate_prepare(d) -> None:
    if d.minhash_perms < d.minhash_bands or d.minhash_perms % d.minhash_bands:
        raise ConfigError(
            f"data.minhash_perms ({d.minhash_perms}) must be a multiple of data.minhash_bands "
            f"({d.minhash_bands}): each band takes perms / bands permutations"
        )


def _validate_architecture(m) -> None:
    if m.head_dim == 0 and m.hidden_dim % m.num_heads:
        raise ConfigError(
            f"model.hidden_dim ({m.hidden_dim}) must split into model.num_heads ({m.num_heads}) "
            "heads, or set model.head_dim"
        )
    head_dim = m.head_dim or m.hidden_dim // m.num_heads
    if m.positions == "rotary" and head_dim % 2:
        raise ConfigError(f"head dim {head_dim} must be even (rotary embeddings rotate pairs)")
    kv_heads = m.num_key_value_heads or m.num_heads
    if m.num_heads % kv_heads:
        raise ConfigError(
            f"model.num_heads ({m.num_heads}) must be a multiple of "
            f"model.num_key_value_heads ({m.num_key_value_heads})"
        )
    choices = {
        "model.activation": (m.activation, ("swiglu", "geglu", "gelu")),
        "model.norm": (m.norm, ("rms", "rms_plus_one", "layer")),
        "model.positions": (m.positions, ("rotary", "learned")),
        "model.rope_scaling": (m.rope_scaling, ("none", "llama3")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    if m.rope_scaling == "llama3" and not m.rope_high_freq_factor > m.rope_low_freq_factor:
        raise ConfigError(
            "model.rope_scaling llama3 needs rope_high_freq_factor > rope_low_freq_factor, got "
            f"{m.rope_high_freq_factor} and {m.rope_low_freq_factor}"
        )


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """`"START,STOP"` -> (START, STOP); an empty string -> None (no capture window)."""
    if not spec.strip():
        return None
    try:
        start, stop = (int(part) for part in spec.split(","))
    except ValueError:
        raise ConfigError(
            f"train.profile_steps must be 'START,STOP' (two step numbers), got {spec!r}"
        ) from None
    if not 1 <= start <= stop:
        raise ConfigError(f"train.profile_steps needs 1 <= START <= STOP, got {spec!r}")
    return start, stop
