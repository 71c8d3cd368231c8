"""`python -m tfllm.prepare`: text -> cleaning -> SentencePiece tokenizer -> packed TFRecord shards.

    python -m tfllm.prepare --config configs/tiny.yaml [--force | --verify]

Writes `<data.root>/<data.name>/{train,val}-*.tfrecord`, `tokenizer.model` and
`manifest.json` (shards with record and token counts, sizes and sha256, the tokenizer and its
checksum, cleaning counts). `--verify` checks every shard and the tokenizer against the manifest.
"""

from __future__ import annotations

import posixpath
import random
import time

import tensorflow as tf

from tfllm.config import Config, DataConfig
from tfllm.data import records, tokenizer
from tfllm.data.clean import Cleaner, CleaningStats, Document
from tfllm.data.corpus import read_raw, split_of
from tfllm.data.packing import pack_split
from tfllm.errors import DataError

_ORDER_SEED = 1234  # document order before packing: fixed, so a dataset is reproducible
SPLITS = ("train", "val")


def data_dir(cfg: Config) -> str:
    return posixpath.join(cfg.data.root, cfg.data.name)


def read_corpus(data: DataConfig, stats: CleaningStats) -> dict[str, list[Document]]:
    """Reads and cleans every document once (deduplicating across splits), then orders each
    split by a fixed seed."""
    cleaner = Cleaner(data.utf8_policy, data.min_doc_chars, data.max_doc_chars, stats)
    docs: dict[str, list[Document]] = {split: [] for split in SPLITS}
    for raw in read_raw(data.source, data.text_field, data.tfds_data_dir, stats):
        doc = cleaner(raw.name, raw.data)
        if doc is not None:
            docs[split_of(raw.name, data.val_fraction)].append(doc)
    for split, items in docs.items():
        if not items:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "nothing read"
            raise DataError(
                f"data.source {data.source!r} gave no usable {split} documents ({counts})"
            )
        random.Random(_ORDER_SEED).shuffle(items)
    return docs


def prepare(cfg: Config, log=print, timings: dict | None = None) -> dict:
    """Builds the dataset of `cfg.data`; returns its manifest.

    `timings`, when given, receives the seconds of each phase (read, tokenizer, pack).
    """
    timings = {} if timings is None else timings
    d = cfg.data
    out = data_dir(cfg)
    tf.io.gfile.makedirs(out)
    start = time.time()
    stats = CleaningStats()
    docs = read_corpus(d, stats)
    timings["read"] = time.time() - start
    log(f"corpus: {len(docs['train'])} train / {len(docs['val'])} val documents")
    log("cleaning: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))

    if d.tokenizer:  # a given tokenizer (an imported model's): the data must be read with it
        if not tf.io.gfile.exists(d.tokenizer):
            raise DataError(f"data.tokenizer {d.tokenizer} not found")
        with tf.io.gfile.GFile(d.tokenizer, "rb") as f:
            proto = f.read()
    else:
        proto = tokenizer.train_tokenizer(
            (piece for doc in docs["train"] for piece in doc.pieces),
            cfg.model.vocabulary_size,
            d.tokenizer_type,
            d.tokenizer_sample_mb,
            d.tokenizer_byte_fallback,
            d.tokenizer_character_coverage,
        )
    tokenizer_path = posixpath.join(out, records.TOKENIZER)
    with tf.io.gfile.GFile(tokenizer_path, "wb") as f:
        f.write(proto)
    sp = tokenizer.load_tokenizer(tokenizer_path)
    timings["tokenizer"] = time.time() - start - timings["read"]
    log(f"tokenizer: {d.tokenizer_type}, {cfg.model.vocabulary_size} pieces -> {tokenizer_path}")

    window_len = d.seq_len + 1
    splits = {}
    for split in SPLITS:
        writer = records.ShardWriter(out, split, window_len, d.records_per_shard, d.compression)
        splits[split] = pack_split(docs[split], sp, writer, d.packing)
        if splits[split]["records"] == 0:
            raise DataError(
                f"{split} split has {splits[split]['tokens_in']} tokens, fewer than one window "
                f"of data.seq_len + 1 = {window_len}; use more text or a smaller data.seq_len"
            )
        log(
            f"{split}: {splits[split]['records']} windows of {window_len} tokens in "
            f"{len(splits[split]['shards'])} shards ({splits[split]['tokens_dropped']} tail "
            f"tokens dropped, {splits[split]['tokens_padding']} padding)"
        )
    manifest = {
        "version": records.MANIFEST_VERSION,
        "name": d.name,
        "source": d.source,
        "seq_len": d.seq_len,
        "window_len": window_len,
        "packing": d.packing,
        "compression": d.compression,
        "vocabulary_size": cfg.model.vocabulary_size,
        "eos_id": tokenizer.EOS_ID,
        "tokenizer": {
            "file": records.TOKENIZER,
            "sha256": tokenizer.sha256(proto),
            "type": d.tokenizer_type,
            "byte_fallback": d.tokenizer_byte_fallback,
            "character_coverage": d.tokenizer_character_coverage,
            "sample_mb": d.tokenizer_sample_mb,
        },
        "cleaning": dict(sorted(stats.items())),
        "splits": splits,
    }
    records.write_manifest(out, manifest)
    megabytes = stats["bytes_read"] / 1e6
    seconds = time.time() - start
    timings["pack"] = seconds - timings["read"] - timings["tokenizer"]
    rate = megabytes / max(seconds, 1e-9)
    log(
        f"prepared {out} in {seconds:.1f}s ({megabytes:.1f} MB of text, {rate:.2f} MB/s; "
        + ", ".join(f"{phase} {t:.1f}s" for phase, t in timings.items())
        + ")"
    )
    return manifest


def ensure_prepared(cfg: Config, log=print) -> dict:
    """Returns the manifest of `cfg.data`, preparing the dataset first when it is missing."""
    directory = data_dir(cfg)
    if not tf.io.gfile.exists(posixpath.join(directory, records.MANIFEST)):
        log(f"{directory}/{records.MANIFEST} not found: preparing the data first")
        return prepare(cfg, log)
    return check_compatible(cfg, records.read_manifest(directory))


def check_compatible(cfg: Config, manifest: dict) -> dict:
    """Refuses shards made for another sequence length or vocabulary."""
    where = posixpath.join(data_dir(cfg), records.MANIFEST)
    if manifest["packing"] != cfg.data.packing:
        raise DataError(
            f"{where} was prepared with data.packing {manifest['packing']}, the config asks for "
            f"{cfg.data.packing}; use another data.name or run prepare --force"
        )
    if manifest["seq_len"] != cfg.data.seq_len:
        raise DataError(
            f"{where} was prepared with seq_len {manifest['seq_len']}, the config asks for "
            f"{cfg.data.seq_len}; use another data.name or run prepare --force"
        )
    if manifest["vocabulary_size"] > cfg.model.vocabulary_size:
        raise DataError(
            f"{where} has a {manifest['vocabulary_size']}-piece tokenizer, larger than "
            f"model.vocabulary_size {cfg.model.vocabulary_size}"
        )
    return manifest
