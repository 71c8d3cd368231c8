"""The manifest of a dataset with one example per window (SFT and preference data): what both
write the same way (header, tokenizer by checksum, the account of the records), and the
report lines that account gives at the end of prepare."""

from __future__ import annotations

import logging
import posixpath

import tensorflow as tf

from tfllm.config import Config
from tfllm.data import fingerprint, records

logger = logging.getLogger(__name__)


def build(cfg: Config, tokenizer, stats, dropped: list, **fields) -> dict:
    """The common header and records account, with each format's own `fields` (window
    lengths, what is trained on, the splits) in between."""
    d = cfg.data
    return {
        "version": records.MANIFEST_VERSION,
        "name": d.name,
        "source": d.source,
        "built_from": fingerprint.describe(cfg),
        "format": d.format,
        "tokenizer": _tokenizer_entry(d.tokenizer),
        "seq_len": d.seq_len,
        "packing": "document",
        "loss_mask": True,
        "compression": d.compression,
        "vocabulary_size": int(getattr(tokenizer, "vocabulary_size", 0) or tokenizer.vocab_size()),
        **fields,
        "records": {
            "read": stats.read,
            "used": stats.used,
            "skipped": dict(stats.skipped),
            "named": stats.named,
            "dropped_too_long": len(dropped),
            "dropped_named": dropped[:5],
        },
    }


def split_entry(info: dict, **counts) -> dict:
    """One split's manifest entry from what the packer counted, with the format's own
    `counts` (examples or pairs, how many were cut) first."""
    return {
        **counts,
        "tokens_trained": info["trained"],
        "tokens_masked": info["masked"],
        "records": sum(s["records"] for s in info["shards"]),
        "shards": info["shards"],
    }


def report_records(manifest: dict) -> None:
    """Logs how many examples were read, used, skipped by reason (a few named) and dropped."""
    r = manifest["records"]
    skipped = "".join(f", {k} {v}" for k, v in sorted(r["skipped"].items()))
    too_long = r["dropped_too_long"]
    logger.info(
        f"records: {r['read']} read, {r['used']} used{skipped}"
        + (f", {too_long} too long (data.truncate=drop)" if too_long else "")
    )
    for line in r["named"] + r["dropped_named"]:
        logger.info(f"  skipped {line}")


def tokenizer_dir(path: str) -> str:
    """The directory of a tokenizer given as a file or a directory (its chat template's home)."""
    return path if tf.io.gfile.isdir(path) else posixpath.dirname(path)


def _tokenizer_entry(path: str) -> dict:
    """The model's tokenizer file, by path and checksum (`prepare --verify` checks it)."""
    if tf.io.gfile.isdir(path):
        names = ("tokenizer.json", "tokenizer.model")
        path = next((posixpath.join(path, n) for n in names if tf.io.gfile.exists(
            posixpath.join(path, n))), path)  # fmt: skip
    return {"file": path, "sha256": records.file_sha256(path)}
