"""Configuration: one dataclass per concern, defaults in code, YAML files as partial overlays.

Precedence: dataclass defaults < each ``--config`` file in order < each ``--set a.b=c``
(`tfllm.overlays` reads and type-checks them); `tfllm.validation` then checks ranges and
combinations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from tfllm import overlays
from tfllm.errors import ConfigError
from tfllm.validation import validate

# The named configs. In the repository `tfllm/configs` is a link to the top-level `configs/`
# (their one source); a wheel holds a copy of those files (pyproject.toml's package data).
CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def ranged(default: int | float, interval: str):
    """A numeric field with its allowed range as metadata, in interval notation: `[0, 1)`,
    `(0, inf)`, `[1, inf)`. `tfllm.validation` enforces it (finite values only) and the
    configuration reference prints it."""
    return field(default=default, metadata={"range": interval})


@dataclass(frozen=True)  # the model reads its settings from it: none may change under it
class ModelConfig:
    # tokenizer pieces (the tokenizer is trained to this size)
    vocabulary_size: int = ranged(2048, "[1, inf)")
    num_layers: int = ranged(2, "[1, inf)")  # Transformer blocks
    # attention heads (hidden_dim / num_heads must be even: rotary embeddings)
    num_heads: int = ranged(4, "[1, inf)")
    hidden_dim: int = ranged(128, "[1, inf)")  # width of the residual stream
    intermediate_dim: int = ranged(512, "[1, inf)")  # MLP width
    max_sequence_length: int = ranged(256, "[1, inf)")  # longest context the model accepts
    activation: str = "swiglu"  # swiglu (SiLU-gated) | geglu (GELU-tanh-gated) | gelu (plain)
    # dropout on attention probabilities and residual branches
    dropout: float = ranged(0.0, "[0, 1)")
    rope_max_wavelength: float = ranged(10000.0, "(0, inf)")  # HF rope_theta
    layer_norm_epsilon: float = ranged(1e-5, "(0, inf)")  # epsilon of the RMSNorm (or LayerNorm)
    # Architecture knobs of open-weight families (docs: Open weights); the
    # defaults are tfllm's own model.
    num_key_value_heads: int = ranged(0, "[0, inf)")  # grouped-query attention; 0 = num_heads
    head_dim: int = ranged(0, "[0, inf)")  # 0 = hidden_dim / num_heads
    tie_embeddings: bool = True  # False: a separate output head
    qkv_bias: bool = False  # biases on Q, K, V (Qwen2)
    bias: bool = False  # biases on every projection (GPT-2)
    norm: str = "rms"  # rms | rms_plus_one (Gemma: x * (1 + w)) | layer (LayerNorm with bias)
    positions: str = "rotary"  # rotary | learned (absolute, GPT-2)
    rope_scaling: str = "none"  # none | llama3 (Llama 3.1 frequency scaling)
    rope_scaling_factor: float = ranged(8.0, "(0, inf)")  # llama3 rope scaling: the factor
    # llama3 rope scaling: the low-frequency factor
    rope_low_freq_factor: float = ranged(1.0, "(0, inf)")
    # llama3 rope scaling: the high-frequency factor
    rope_high_freq_factor: float = ranged(4.0, "(0, inf)")
    # llama3 rope scaling: the context it was trained at
    rope_original_max_positions: int = ranged(8192, "[1, inf)")
    embedding_scale: bool = False  # multiply embeddings by sqrt(hidden_dim) (Gemma)
    post_norms: bool = False  # norms on the attention and MLP outputs too (Gemma 2)
    # cap * tanh(scores / cap); 0 = off (Gemma 2)
    attention_softcap: float = ranged(0.0, "[0, inf)")
    final_softcap: float = ranged(0.0, "[0, inf)")  # the same on the logits; 0 = off (Gemma 2)
    # queries scaled by this ** -0.5; 0 = head dim (Gemma 2)
    query_pre_attn_scalar: float = ranged(0.0, "[0, inf)")
    # keys at most this many positions back (self included); 0 = off
    sliding_window: int = ranged(0, "[0, inf)")
    # layers i with i % period == 0 slide (Gemma 2: 2)
    sliding_window_period: int = ranged(1, "[1, inf)")
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
    # alpaca; anything but text is packed by example with a loss mask (tfllm.corpus.sft_prepare);
    # preference: prompt/chosen/rejected pairs for train.objective dpo (tfllm.corpus.preference)
    format: str = "text"
    train_on: str = "completion"  # completion | assistant | all: which tokens are targets
    chat_template: str = ""  # a Jinja file overriding the tokenizer's own chat template
    truncate: str = "cut"  # cut | drop: an example longer than a window
    tfds_data_dir: str = ""  # TFDS data_dir; empty: the TFDS default (~/tensorflow_datasets)
    seq_len: int = ranged(128, "[1, inf)")  # tokens per training window (records hold seq_len + 1)
    root: str = "tfrecords"  # shards go to <root>/<name>/
    # share of documents (by a hash of their name) held out for validation
    val_fraction: float = ranged(0.02, "(0, 1)")
    utf8_policy: str = "skip"  # skip | replace: what a document with invalid UTF-8 becomes
    min_doc_chars: int = ranged(1, "[0, inf)")  # shorter documents are dropped (and counted)
    # longer documents are split into pieces this long
    max_doc_chars: int = ranged(1_000_000, "[1, inf)")
    packing: str = "concat"  # concat | document (segment ids: no attention across documents)
    records_per_shard: int = ranged(8192, "[1, inf)")  # windows per TFRecord shard
    # Shards of a split prepare fills at once, each document sent to one by a hash of its name
    # (and scatter_seed): every shard is a sample of the corpus, not a slice of its file order.
    # Prepare holds up to this many unfinished shards per split in memory. 1: the input order.
    scatter_shards: int = ranged(16, "[1, inf)")
    # the seed of that hash: another value, another set of shards
    scatter_seed: int = ranged(0, "[0, inf)")
    compression: str = "none"  # none | gzip: how shards are written (and read, per manifest)
    # A tokenizer file to use instead of training one (e.g. the one `tfllm.convert` imported);
    # empty: prepare trains a SentencePiece model on the corpus.
    tokenizer: str = ""
    tokenizer_type: str = "unigram"  # unigram | bpe
    tokenizer_sample_mb: int = ranged(8, "[1, inf)")  # text sampled to train the tokenizer
    tokenizer_byte_fallback: bool = True  # unknown characters become byte pieces, never <unk>
    # share of characters the vocabulary must cover
    tokenizer_character_coverage: float = ranged(0.9995, "(0, 1]")
    # records permuted together (a block of the global order)
    shuffle_buffer: int = ranged(4096, "[1, inf)")
    # Shards the reader reads at once, one record of each in turn (then the next group)
    interleave_shards: int = ranged(16, "[1, inf)")
    on_corrupt: str = "error"  # error | skip: a damaged shard stops the run, or is counted
    verify: str = "sha256"  # sha256 | size: the check of every shard before training
    # processes that clean and tokenize in prepare; 0: one per core
    workers: int = ranged(0, "[0, inf)")
    # prepare's documents in flight are sized to stay under this
    max_memory_mb: int = ranged(2048, "[256, inf)")
    on_bad_input: str = "skip"  # skip | error: a bad line, row or file is counted, or stops
    # dropped documents kept per reason in dropped-sample.jsonl
    dropped_sample: int = ranged(20, "[0, inf)")
    # drop below this share of alphanumeric characters; 0: off
    filter_min_alnum: float = ranged(0.0, "[0, 1]")
    filter_max_line_chars: int = ranged(0, "[0, inf)")  # drop documents with a longer line; 0: off
    # drop above this share of repeated lines; 1: off
    filter_max_repeated_lines: float = ranged(1.0, "[0, 1]")
    near_dedup: bool = False  # MinHash LSH near-duplicate removal (datatrove's defaults below)
    minhash_ngram: int = ranged(5, "[1, inf)")  # words per shingle
    minhash_perms: int = ranged(112, "[1, inf)")  # permutations = minhash_bands x rows per band
    # LSH bands (rows per band = minhash_perms / minhash_bands)
    minhash_bands: int = ranged(14, "[1, inf)")
    # share of equal permutations that makes a duplicate
    minhash_threshold: float = ranged(0.7, "[0, 1]")


@dataclass
class TrainConfig:
    steps: int = ranged(2000, "[1, inf)")  # optimizer steps in the whole run
    seed: int = ranged(0, "[0, 4294967295]")  # seeds initialisation and data order
    global_batch_size: int = ranged(16, "[1, inf)")  # windows per optimizer step, over all replicas
    learning_rate: float = ranged(3e-3, "(0, inf)")  # peak learning rate
    # cosine decay ends at this fraction of the peak
    min_learning_rate_ratio: float = ranged(0.1, "[0, 1]")
    warmup_steps: int = ranged(100, "[0, inf)")  # linear warmup from 0
    # AdamW decoupled weight decay (not applied to norm scales)
    weight_decay: float = ranged(0.1, "[0, inf)")
    beta_1: float = ranged(0.9, "[0, 1)")  # AdamW first-moment decay
    beta_2: float = ranged(0.95, "[0, 1)")  # AdamW second-moment decay
    epsilon: float = ranged(1e-8, "(0, inf)")  # AdamW epsilon
    grad_clip_norm: float = ranged(1.0, "[0, inf)")  # clip the global gradient norm (0 disables)
    # steps per compiled host loop call; one console line each
    steps_per_loop: int = ranged(50, "[1, inf)")
    eval_every: int = ranged(500, "[1, inf)")  # validation every N steps (and at the end)
    eval_batches: int = ranged(20, "[1, inf)")  # validation batches (the same ones every time)
    # tfllm.eval tasks (built-in names or task YAML paths, comma-separated) run at every
    # evaluation, their metrics in TensorBoard next to the validation loss; empty: none
    eval_tasks: str = ""
    checkpoint_every: int = ranged(500, "[1, inf)")  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = ranged(3, "[2, inf)")  # newest checkpoints kept (at least 2)
    on_nonfinite: str = "stop"  # on a non-finite loss or gradient: stop | skip | rollback
    # most rollbacks in one run before rollback stops as stop does
    max_rollbacks: int = ranged(3, "[0, inf)")
    jit_compile: bool = True  # XLA-compile the per-replica step
    # global batch = per-replica batch x replicas x grad_accum_steps
    grad_accum_steps: int = ranged(1, "[1, inf)")
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16 (dynamic loss scaling)
    remat: bool = False  # recompute each Transformer block's activations in the backward pass
    # tokens of the sample written at each evaluation and printed at the end
    sample_tokens: int = ranged(64, "[1, inf)")
    sample_prompt: str = "def "  # the prompt of that sample
    profile_steps: str = ""  # "START,STOP": capture a profiler trace of those steps
    # Fine-tuning (docs: Fine-tuning): start from the weights of another workdir (fresh
    # optimizer and schedule, steps from 0; its model section and tokenizer are used)
    init_from: str = ""
    # > 0: train low-rank adapters only, base weights frozen (needs init_from)
    lora_rank: int = ranged(0, "[0, inf)")
    # the adapters' output is scaled by lora_alpha / lora_rank
    lora_alpha: float = ranged(16.0, "(0, inf)")
    lora_dropout: float = ranged(0.0, "[0, 1)")  # dropout on the adapters' input, as PEFT
    lora_targets: str = "q,v"  # comma-separated among q, k, v, o, gate, up, down
    base_precision: str = "float32"  # float32 | bfloat16: dtype of the frozen base (LoRA only)
    # Post-training (docs/post-training.md): lm, next-token cross-entropy; dpo, preference pairs
    # (data.format preference) against the starting checkpoint (train.init_from) as reference
    objective: str = "lm"
    dpo_beta: float = field(default=0.1, metadata={"range": "(0, inf)"})  # DPO's beta
    dpo_loss: str = "sigmoid"  # sigmoid | ipo | hinge | robust
    # DPO's label smoothing e (sigmoid: conservative DPO; robust: the noise rate, below 0.5)
    dpo_label_smoothing: float = field(default=0.0, metadata={"range": "[0, 0.5)"})
    # weight of an SFT term added to every DPO variant: the chosen completion's negative
    # log-likelihood per token (RPO; TRL's loss_type [sigmoid, sft]); 0: off
    dpo_sft_weight: float = field(default=0.0, metadata={"range": "[0, inf)"})
    # Knowledge distillation: the teacher (a workdir, a Hugging Face directory or a keras-hub
    # preset directory); empty: off
    distill_from: str = ""
    # the KL term's weight: (1 - alpha) x cross-entropy + alpha x T^2 x KL(teacher || student)
    distill_alpha: float = field(default=0.5, metadata={"range": "[0, 1]"})
    # T: both distributions of the KL term are softened by it
    distill_temperature: float = field(default=1.0, metadata={"range": "(0, inf)"})


@dataclass
class RuntimeConfig:
    workdir: str = "runs/tiny"  # the run's directory: checkpoints, config.yaml, TensorBoard logs
    # peak FLOP/s of one device for MFU; 0 = detect (or measure on CPU)
    peak_flops: float = ranged(0.0, "[0, inf)")
    # serve on-demand profiler captures on this port; 0 = off
    profiler_port: int = ranged(0, "[0, 65535]")
    # Memory of one device in GiB for the pre-training estimate's check; 0 = what the GPU or
    # TPU reports (no check on CPU)
    device_memory_gb: float = ranged(0.0, "[0, inf)")

    strategy: str = "auto"  # auto | cpu | gpu | mirrored | multiworker | tpu
    tpu: str = ""  # TPU name, grpc:// address or "local"; empty: $TPU_NAME
    # logical CPU devices for `mirrored` on a host without a GPU
    num_cpu_devices: int = ranged(2, "[1, inf)")
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


_SECTION_CLASSES = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "runtime": RuntimeConfig,
}


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


def load_config(
    config_files: list[str] | None = None, overrides: list[str] | None = None
) -> Config:
    """Builds a Config from defaults, YAML overlays and ``section.key=value`` overrides."""
    values = Config().to_dict()
    for name in config_files or []:
        path = resolve_config_path(name)
        overlays.merge(values, overlays.read(path), str(path), _SECTION_CLASSES)
    for assignment in overrides or []:
        overlay = overlays.parse_set(assignment, _SECTION_CLASSES)
        overlays.merge(values, overlay, f"--set {assignment}", _SECTION_CLASSES)
    cfg = Config(**{name: cls(**values[name]) for name, cls in _SECTION_CLASSES.items()})
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str) -> None:
    """Writes the resolved config (through tf.io.gfile, so gs:// works)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
