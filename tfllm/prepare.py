"""`python -m tfllm.prepare`: text -> SentencePiece tokenizer -> packed TFRecord shards.

    python -m tfllm.prepare --config configs/tiny.yaml [--force]

Writes `<data.root>/<data.name>/{train,val}-*.tfrecord`, `tokenizer.model` and
`manifest.json` (shards, record and token counts, sha256, tokenizer checksum, cleaning counts).
"""

from __future__ import annotations

import posixpath
import random
import time

import numpy as np
import tensorflow as tf

from tfllm import cli, records, tokenizer
from tfllm.config import Config
from tfllm.corpus import CleaningStats, Document, read_documents
from tfllm.errors import DataError

_DOCS_PER_BATCH = 64
_ORDER_SEED = 1234  # document order before packing: fixed, so a dataset is reproducible


def data_dir(cfg: Config) -> str:
    return posixpath.join(cfg.data.root, cfg.data.name)


def _tokenized_batches(texts: list[str], sp) -> tf.data.Dataset:
    """Tokenizes inside tf.data (parallel, no Python loop per document)."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(texts, dtype=tf.string))
    ds = ds.batch(_DOCS_PER_BATCH)
    ds = ds.map(sp.tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def pack_split(docs: list[Document], sp, writer: records.ShardWriter) -> dict:
    """Packs documents, each followed by EOS, into windows; the tail that fills no window
    is dropped and counted (tokens_in == tokens_written + tokens_dropped, exactly)."""
    window_len = writer.window_len
    carry = np.zeros([0], np.int32)
    tokens_in = 0
    for ids in _tokenized_batches([d.text for d in docs], sp):
        eos = tf.fill([ids.nrows(), 1], tokenizer.EOS_ID)
        flat = tf.concat([ids, eos], axis=1).flat_values.numpy()
        tokens_in += flat.size
        stream = np.concatenate([carry, flat])
        full = stream.size // window_len * window_len
        writer.write(stream[:full].reshape(-1, window_len))
        carry = stream[full:]
    shards = writer.close()
    written = sum(s["tokens"] for s in shards)
    return {
        "documents": len(docs),
        "tokens_in": int(tokens_in),
        "tokens_written": int(written),
        "tokens_dropped": int(tokens_in - written),
        "records": sum(s["records"] for s in shards),
        "shards": shards,
    }


def prepare(cfg: Config, log=print) -> dict:
    """Builds the dataset of `cfg.data`; returns its manifest."""
    out = data_dir(cfg)
    tf.io.gfile.makedirs(out)
    start = time.time()
    stats = {split: CleaningStats() for split in ("train", "val")}
    docs = {
        split: list(read_documents(cfg.data.source, split, cfg.data.val_fraction, stats[split]))
        for split in ("train", "val")
    }
    for split, items in docs.items():
        if not items:
            raise DataError(
                f"data.source {cfg.data.source!r} gave no usable {split} documents "
                f"({dict(stats[split]) or 'no files in this split'})"
            )
        random.Random(_ORDER_SEED).shuffle(items)
    log(f"corpus: {len(docs['train'])} train / {len(docs['val'])} val documents")

    proto = tokenizer.train_tokenizer(
        (d.text for d in docs["train"]),
        cfg.model.vocabulary_size,
        cfg.data.tokenizer_type,
        cfg.data.tokenizer_sample_mb,
    )
    tokenizer_path = posixpath.join(out, records.TOKENIZER)
    with tf.io.gfile.GFile(tokenizer_path, "wb") as f:
        f.write(proto)
    sp = tokenizer.load_tokenizer(tokenizer_path)
    log(f"tokenizer: {cfg.model.vocabulary_size} pieces -> {tokenizer_path}")

    window_len = cfg.data.seq_len + 1
    splits = {}
    for split in ("train", "val"):
        writer = records.ShardWriter(out, split, window_len, cfg.data.records_per_shard)
        splits[split] = pack_split(docs[split], sp, writer)
        splits[split]["cleaning"] = dict(stats[split])
        if splits[split]["records"] == 0:
            raise DataError(
                f"{split} split has {splits[split]['tokens_in']} tokens, fewer than one window "
                f"of data.seq_len + 1 = {window_len}; use more text or a smaller data.seq_len"
            )
        log(
            f"{split}: {splits[split]['records']} windows of {window_len} tokens in "
            f"{len(splits[split]['shards'])} shards ({splits[split]['tokens_dropped']} tail "
            "tokens dropped)"
        )
    manifest = {
        "version": records.MANIFEST_VERSION,
        "name": cfg.data.name,
        "source": cfg.data.source,
        "seq_len": cfg.data.seq_len,
        "window_len": window_len,
        "vocabulary_size": cfg.model.vocabulary_size,
        "eos_id": tokenizer.EOS_ID,
        "tokenizer": {"file": records.TOKENIZER, "sha256": tokenizer.sha256(proto)},
        "splits": splits,
    }
    records.write_manifest(out, manifest)
    megabytes = sum(s["cleaning"].get("bytes", 0) for s in splits.values()) / 1e6
    log(f"prepared {out} in {time.time() - start:.1f}s ({megabytes:.1f} MB of text)")
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


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if prepared")
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    if args.force:
        prepare(cfg)
    else:
        ensure_prepared(cfg)
    return 0


if __name__ == "__main__":
    cli.run_command(main)
