"""The checks a config must pass beyond its types: ranges, choices, and the combinations of
keys that cannot work together. `tfllm.config.load_config` runs them on every config."""

from __future__ import annotations

from tfllm.errors import ConfigError

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multiworker", "tpu")
COLLECTIVES = ("auto", "ring", "nccl")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def validate(cfg) -> None:
    """Cross-field checks that a type check cannot catch."""
    m, d, t = cfg.model, cfg.data, cfg.train
    positive = {
        "model.vocabulary_size": m.vocabulary_size,
        "model.num_layers": m.num_layers,
        "model.num_heads": m.num_heads,
        "model.hidden_dim": m.hidden_dim,
        "model.intermediate_dim": m.intermediate_dim,
        "data.seq_len": d.seq_len,
        "data.records_per_shard": d.records_per_shard,
        "data.scatter_shards": d.scatter_shards,
        "data.interleave_shards": d.interleave_shards,
        "train.steps": t.steps,
        "train.global_batch_size": t.global_batch_size,
        "train.steps_per_loop": t.steps_per_loop,
        "train.eval_every": t.eval_every,
        "train.checkpoint_every": t.checkpoint_every,
        "train.grad_accum_steps": t.grad_accum_steps,
        "runtime.num_cpu_devices": cfg.runtime.num_cpu_devices,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
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
        "data.format": (d.format, ("text", "prompt_completion", "messages", "alpaca")),
        "data.train_on": (d.train_on, ("completion", "assistant", "all")),
        "data.truncate": (d.truncate, ("cut", "drop")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be {' or '.join(allowed)}, got {value!r}")
    if d.min_doc_chars < 0 or d.max_doc_chars < max(1, d.min_doc_chars):
        raise ConfigError(
            f"data.max_doc_chars ({d.max_doc_chars}) must be at least 1 and at least "
            f"data.min_doc_chars ({d.min_doc_chars}, itself at least 0)"
        )
    if d.shuffle_buffer < 1 or d.tokenizer_sample_mb < 1:
        raise ConfigError("data.shuffle_buffer and data.tokenizer_sample_mb must be at least 1")
    if not 0.0 < d.tokenizer_character_coverage <= 1.0:
        raise ConfigError(
            "data.tokenizer_character_coverage must be in (0, 1], got "
            f"{d.tokenizer_character_coverage}"
        )
    if d.format != "text" and d.packing != "document":
        raise ConfigError(f"data.format={d.format} packs whole examples: set data.packing=document")
    if d.train_on == "assistant" and d.format != "messages":
        raise ConfigError("data.train_on=assistant needs data.format=messages; use completion")
    _validate_prepare(d)
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    if cfg.runtime.peak_flops < 0:
        raise ConfigError(f"runtime.peak_flops must be >= 0, got {cfg.runtime.peak_flops}")
    if not 0 <= cfg.runtime.profiler_port < 65536:
        raise ConfigError(
            f"runtime.profiler_port must be a port number or 0, got {cfg.runtime.profiler_port}"
        )
    parse_profile_steps(t.profile_steps)
    if t.on_nonfinite not in ("stop", "skip", "rollback"):
        raise ConfigError(
            f"train.on_nonfinite must be stop, skip or rollback, got {t.on_nonfinite!r}"
        )
    if t.max_rollbacks < 0:
        raise ConfigError(f"train.max_rollbacks must be at least 0, got {t.max_rollbacks}")

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
    if t.keep_checkpoints < 2:
        raise ConfigError(f"train.keep_checkpoints must be at least 2, got {t.keep_checkpoints}")
    _validate_lora(t)


LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


def _validate_lora(t) -> None:
    if t.lora_rank < 0 or t.lora_alpha <= 0 or not 0.0 <= t.lora_dropout < 1.0:
        raise ConfigError(
            "train.lora_rank must be >= 0, train.lora_alpha > 0 and train.lora_dropout in "
            f"[0, 1); got {t.lora_rank}, {t.lora_alpha}, {t.lora_dropout}"
        )
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
    if d.workers < 0 or d.max_memory_mb < 256 or d.dropped_sample < 0:
        raise ConfigError(
            "data.workers must be at least 0 (0: one per core), data.max_memory_mb at least "
            f"256, data.dropped_sample at least 0; got {d.workers}, {d.max_memory_mb}, "
            f"{d.dropped_sample}"
        )
    shares = {
        "data.filter_min_alnum": d.filter_min_alnum,
        "data.filter_max_repeated_lines": d.filter_max_repeated_lines,
        "data.minhash_threshold": d.minhash_threshold,
    }
    for key, value in shares.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")
    if d.filter_max_line_chars < 0 or d.minhash_ngram < 1 or d.minhash_bands < 1:
        raise ConfigError(
            "data.filter_max_line_chars must be at least 0, data.minhash_ngram and "
            "data.minhash_bands at least 1"
        )
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
    if m.num_key_value_heads < 0 or m.num_heads % kv_heads:
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
    at_least = {
        "model.head_dim": (m.head_dim, 0),
        "model.attention_softcap": (m.attention_softcap, 0),
        "model.final_softcap": (m.final_softcap, 0),
        "model.query_pre_attn_scalar": (m.query_pre_attn_scalar, 0),
        "model.sliding_window": (m.sliding_window, 0),
        "model.sliding_window_period": (m.sliding_window_period, 1),
    }
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{key} must be at least {low}, got {value}")
    if m.rope_scaling == "llama3" and not (
        m.rope_scaling_factor > 0 and m.rope_high_freq_factor > m.rope_low_freq_factor > 0
    ):
        raise ConfigError(
            "model.rope_scaling llama3 needs rope_scaling_factor > 0 and "
            "rope_high_freq_factor > rope_low_freq_factor > 0"
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
