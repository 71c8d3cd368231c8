"""Configuration: one dataclass per concern, defaults in code, YAML files as partial overlays.

Precedence: dataclass defaults < each ``--config`` file in order < each ``--set a.b=c``.
Unknown keys and wrong types are refused with the closest valid key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from tfllm.errors import ConfigError
from tfllm.validation import validate

# The named configs. In the repository `tfllm/configs` is a link to the top-level `configs/`
# (their one source); a wheel holds a copy of those files (pyproject.toml's package data).
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


@dataclass
class ModelConfig:
    vocabulary_size: int = 2048  # tokenizer pieces (the tokenizer is trained to this size)
    num_layers: int = 2  # Transformer blocks
    num_heads: int = 4  # attention heads (hidden_dim / num_heads must be even: rotary embeddings)
    hidden_dim: int = 128  # width of the residual stream
    intermediate_dim: int = 512  # MLP width
    max_sequence_length: int = 256  # longest context the model accepts
    activation: str = "swiglu"  # swiglu (SiLU-gated) | geglu (GELU-tanh-gated) | gelu (plain)
    dropout: float = 0.0  # dropout on attention probabilities and residual branches
    rope_max_wavelength: float = 10000.0  # HF rope_theta
    layer_norm_epsilon: float = 1e-5  # epsilon of the RMSNorm (or LayerNorm)
    # Architecture knobs of open-weight families (docs: Open weights); the
    # defaults are tfllm's own model.
    num_key_value_heads: int = 0  # grouped-query attention; 0 = num_heads
    head_dim: int = 0  # 0 = hidden_dim / num_heads
    tie_embeddings: bool = True  # False: a separate output head
    qkv_bias: bool = False  # biases on Q, K, V (Qwen2)
    bias: bool = False  # biases on every projection (GPT-2)
    norm: str = "rms"  # rms | rms_plus_one (Gemma: x * (1 + w)) | layer (LayerNorm with bias)
    positions: str = "rotary"  # rotary | learned (absolute, GPT-2)
    rope_scaling: str = "none"  # none | llama3 (Llama 3.1 frequency scaling)
    rope_scaling_factor: float = 8.0  # llama3 rope scaling: the factor
    rope_low_freq_factor: float = 1.0  # llama3 rope scaling: the low-frequency factor
    rope_high_freq_factor: float = 4.0  # llama3 rope scaling: the high-frequency factor
    rope_original_max_positions: int = 8192  # llama3 rope scaling: the context it was trained at
    embedding_scale: bool = False  # multiply embeddings by sqrt(hidden_dim) (Gemma)
    post_norms: bool = False  # norms on the attention and MLP outputs too (Gemma 2)
    attention_softcap: float = 0.0  # cap * tanh(scores / cap); 0 = off (Gemma 2)
    final_softcap: float = 0.0  # the same on the logits; 0 = off (Gemma 2)
    query_pre_attn_scalar: float = 0.0  # queries scaled by this ** -0.5; 0 = head dim (Gemma 2)
    sliding_window: int = 0  # keys at most this many positions back (self included); 0 = off
    sliding_window_period: int = 1  # layers i with i % period == 0 slide (Gemma 2: 2)
    qk_norm: bool = False  # RMSNorm of each query and key head (Qwen3)


@dataclass
class DataConfig:
    name: str = "stdlib"  # dataset folder under data.root
    # "stdlib"; files, directories and globs separated by commas (by format: text, JSON Lines
    # .jsonl[.gz|.zst], .parquet, save_to_disk directories); "tfds:NAME[/CONFIG]:SPLIT"; or a
    # weighted mixture "a.parquet:0.7,b/*.jsonl.zst:0.3" (in YAML also a list of such entries)
    source: str = "stdlib"
    text_field: str = "text"  # the field holding the text in JSON Lines and TFDS examples
    # Instruction and chat data (docs: Fine-tuning): text | prompt_completion | messages |
    # alpaca; anything but text is packed by example with a loss mask (tfllm.corpus.sft_prepare).
    format: str = "text"
    train_on: str = "completion"  # completion | assistant | all: which tokens are targets
    chat_template: str = ""  # a Jinja file overriding the tokenizer's own chat template
    truncate: str = "cut"  # cut | drop: an example longer than a window
    tfds_data_dir: str = ""  # TFDS data_dir; empty: the TFDS default (~/tensorflow_datasets)
    seq_len: int = 128  # tokens per training window (records hold seq_len + 1)
    root: str = "tfrecords"  # shards go to <root>/<name>/
    # share of documents (by a hash of their name) held out for validation
    val_fraction: float = 0.02
    utf8_policy: str = "skip"  # skip | replace: what a document with invalid UTF-8 becomes
    min_doc_chars: int = 1  # shorter documents are dropped (and counted)
    max_doc_chars: int = 1_000_000  # longer documents are split into pieces this long
    packing: str = "concat"  # concat | document (segment ids: no attention across documents)
    records_per_shard: int = 8192  # windows per TFRecord shard
    # Shards of a split prepare fills at once, each document sent to one by a hash of its name
    # (and scatter_seed): every shard is a sample of the corpus, not a slice of its file order.
    # Prepare holds up to this many unfinished shards per split in memory. 1: the input order.
    scatter_shards: int = field(default=16, metadata={"range": "[1, inf)"})
    scatter_seed: int = 0  # the seed of that hash: another value, another set of shards
    compression: str = "none"  # none | gzip: how shards are written (and read, per manifest)
    # A tokenizer file to use instead of training one (e.g. the one `tfllm.convert` imported);
    # empty: prepare trains a SentencePiece model on the corpus.
    tokenizer: str = ""
    tokenizer_type: str = "unigram"  # unigram | bpe
    tokenizer_sample_mb: int = 8  # text sampled to train the tokenizer
    tokenizer_byte_fallback: bool = True  # unknown characters become byte pieces, never <unk>
    tokenizer_character_coverage: float = 0.9995  # share of characters the vocabulary must cover
    shuffle_buffer: int = 4096  # records permuted together (a block of the global order)
    # Shards the reader reads at once, one record of each in turn (then the next group)
    interleave_shards: int = field(default=16, metadata={"range": "[1, inf)"})
    on_corrupt: str = "error"  # error | skip: a damaged shard stops the run, or is counted
    verify: str = "sha256"  # sha256 | size: the check of every shard before training
    workers: int = 0  # processes that clean and tokenize in prepare; 0: one per core
    max_memory_mb: int = 2048  # prepare's documents in flight are sized to stay under this
    on_bad_input: str = "skip"  # skip | error: a bad line, row or file is counted, or stops
    dropped_sample: int = 20  # dropped documents kept per reason in dropped-sample.jsonl
    filter_min_alnum: float = 0.0  # drop below this share of alphanumeric characters; 0: off
    filter_max_line_chars: int = 0  # drop documents with a longer line; 0: off
    filter_max_repeated_lines: float = 1.0  # drop above this share of repeated lines; 1: off
    near_dedup: bool = False  # MinHash LSH near-duplicate removal (datatrove's defaults below)
    minhash_ngram: int = 5  # words per shingle
    minhash_perms: int = 112  # permutations = minhash_bands x rows per band
    minhash_bands: int = 14  # LSH bands (rows per band = minhash_perms / minhash_bands)
    minhash_threshold: float = 0.7  # share of equal permutations that makes a duplicate


@dataclass
class TrainConfig:
    steps: int = 2000  # optimizer steps in the whole run
    seed: int = 0  # seeds initialisation and data order
    global_batch_size: int = 16  # windows per optimizer step, over all replicas
    learning_rate: float = 3e-3  # peak learning rate
    min_learning_rate_ratio: float = 0.1  # cosine decay ends at this fraction of the peak
    warmup_steps: int = 100  # linear warmup from 0
    weight_decay: float = 0.1  # AdamW decoupled weight decay (not applied to norm scales)
    beta_1: float = 0.9  # AdamW first-moment decay
    beta_2: float = 0.95  # AdamW second-moment decay
    epsilon: float = 1e-8  # AdamW epsilon
    grad_clip_norm: float = 1.0  # clip the global gradient norm (0 disables)
    steps_per_loop: int = 50  # steps per compiled host loop call; one console line each
    eval_every: int = 500  # validation every N steps (and at the end)
    eval_batches: int = 20  # validation batches (the same ones every time)
    # tfllm.eval tasks (built-in names or task YAML paths, comma-separated) run at every
    # evaluation, their metrics in TensorBoard next to the validation loss; empty: none
    eval_tasks: str = ""
    checkpoint_every: int = 500  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept (at least 2)
    on_nonfinite: str = "stop"  # on a non-finite loss or gradient: stop | skip | rollback
    max_rollbacks: int = 3  # most rollbacks in one run before rollback stops as stop does
    jit_compile: bool = True  # XLA-compile the per-replica step
    grad_accum_steps: int = 1  # global batch = per-replica batch x replicas x grad_accum_steps
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16 (dynamic loss scaling)
    remat: bool = False  # recompute each Transformer block's activations in the backward pass
    sample_tokens: int = (
        64  # tokens of the sample written at each evaluation and printed at the end
    )
    sample_prompt: str = "def "  # the prompt of that sample
    profile_steps: str = ""  # "START,STOP": capture a profiler trace of those steps
    # Fine-tuning (docs: Fine-tuning): start from the weights of another workdir (fresh
    # optimizer and schedule, steps from 0; its model section and tokenizer are used)
    init_from: str = ""
    lora_rank: int = 0  # > 0: train low-rank adapters only, base weights frozen (needs init_from)
    lora_alpha: float = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0  # dropout on the adapters' input, as PEFT
    lora_targets: str = "q,v"  # comma-separated among q, k, v, o, gate, up, down
    base_precision: str = "float32"  # float32 | bfloat16: dtype of the frozen base (LoRA only)


@dataclass
class RuntimeConfig:
    workdir: str = "runs/tiny"  # the run's directory: checkpoints, config.yaml, TensorBoard logs
    peak_flops: float = 0.0  # peak FLOP/s of one device for MFU; 0 = detect (or measure on CPU)
    profiler_port: int = 0  # serve on-demand profiler captures on this port; 0 = off
    # Memory of one device in GiB for the pre-training estimate's check; 0 = what the GPU or
    # TPU reports (no check on CPU)
    device_memory_gb: float = 0.0

    strategy: str = "auto"  # auto | cpu | gpu | mirrored | multiworker | tpu
    tpu: str = ""  # TPU name, grpc:// address or "local"; empty: $TPU_NAME
    num_cpu_devices: int = 2  # logical CPU devices for `mirrored` on a host without a GPU
    collective: str = "auto"  # multiworker all-reduce: auto | ring | nccl


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def fingerprint(self, section: str = "model") -> str:
        """A short stable hash of one section, e.g. to tie a checkpoint to a model shape."""
        blob = json.dumps(self.to_dict()[section], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_SECTION_CLASSES = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
}


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(choices)}"


def _check_type(key: str, value: Any, expected: type, origin: str) -> Any:
    # bool is an int in Python; a YAML `true` for an int field is a mistake, not a 1.
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"{origin}: {key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
    )


def _field_type(section: str, key: str) -> type:
    types = {f.name: f.type for f in dataclasses.fields(_SECTION_CLASSES[section])}
    return {"int": int, "float": float, "str": str, "bool": bool}[types[key]]


def _merge(values: dict, overlay: Any, origin: str) -> None:
    if overlay is None:
        return
    if not isinstance(overlay, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(overlay).__name__}")
    for section, entries in overlay.items():
        if section not in _SECTIONS:
            raise ConfigError(
                f"{origin}: unknown section {section}{_suggest(section, [*_SECTIONS])}"
            )
        if not isinstance(entries, dict):
            raise ConfigError(f"{origin}: section {section} must be a mapping of keys")
        for key, value in entries.items():
            valid = list(values[section])
            if key not in valid:
                raise ConfigError(
                    f"{origin}: unknown key {section}.{key}{_suggest(str(key), valid)}"
                )
            expected = _field_type(section, key)
            if (section, key) == ("data", "source") and isinstance(value, list):
                value = ",".join(map(str, value))  # a YAML list of mixture entries
            values[section][key] = _check_type(f"{section}.{key}", value, expected, origin)


def resolve_config_path(name: str) -> pathlib.Path:
    """`configs/tiny.yaml`, `tiny.yaml` or `tiny`: a path as given, else a shipped file."""
    path = pathlib.Path(name)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file not found: {name} (named configs: {shipped})")


def _parse_set(assignment: str) -> dict:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected section.key=value")
    dotted, raw = assignment.split("=", 1)
    if dotted.count(".") != 1:
        raise ConfigError(f"--set {assignment}: expected section.key=value")
    section, key = dotted.split(".")
    if section in _SECTION_CLASSES and key in {
        f.name for f in dataclasses.fields(_SECTION_CLASSES[section])
    }:
        expected = _field_type(section, key)
        if expected is str:
            return {section: {key: raw}}  # "--set data.name=123" is the string "123"
        if expected is float:  # YAML 1.1 reads "1e-3" as a string; Python reads it as a float
            try:
                return {section: {key: float(raw)}}
            except ValueError:
                pass
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment}: cannot parse value: {err}") from None
    return {section: {key: value}}


def load_config(
    config_files: list[str] | None = None, overrides: list[str] | None = None
) -> Config:
    """Builds a Config from defaults, YAML overlays and ``section.key=value`` overrides."""
    values = Config().to_dict()
    for name in config_files or []:
        path = resolve_config_path(name)
        try:
            overlay = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: YAML syntax error: {err}".replace("\n", " ")) from None
        _merge(values, overlay, str(path))
    for assignment in overrides or []:
        _merge(values, _parse_set(assignment), f"--set {assignment}")
    cfg = Config(**{name: cls(**values[name]) for name, cls in _SECTION_CLASSES.items()})
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str) -> None:
    """Writes the resolved config (through tf.io.gfile, so gs:// works)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
