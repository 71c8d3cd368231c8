"""Shard verification against the manifest: before training, and `python -m tfllm.prepare --verify`.

TFRecord readers only see damage when they reach it, deep inside a tf.data iterator, as an error
without a file name (and `ignore_errors` hides the rest of the file without a count). So every
shard is checked before the reader opens it: it exists, it is readable, its size matches the
manifest (one stat: catches truncation, zero-byte files, gzip/raw mix-ups, foreign files) and,
with `data.verify: sha256` (the default), its checksum does (catches flipped bytes and shards
rewritten after prepare). Hashing reads every byte once, about a second per GB per core,
paid once per start; `size` is for datasets too large for that.

A damaged shard stops the run with its name and reason (`data.on_corrupt: error`), or is left
out whole with its manifest record count reported as lost (`skip`). Whole shards keep the
global order arithmetic exact: a restart with the same damage sees the same stream.
"""

from __future__ import annotations

import gzip
import logging
import posixpath
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import tensorflow as tf

from tfllm.data import records
from tfllm.errors import DataError

logger = logging.getLogger(__name__)
# The op names TF wraps around an iterator error: "{{function_node ...}} ... [Op:...] name: ".
_TF_NOISE = re.compile(r"\{\{.*?\}\}\s*|\s*\[Op:.*$")


@dataclass
class ShardSet:
    """The usable shards of one split, as the reader needs them."""

    paths: list[str]
    records: list[int]  # per path, from the manifest
    window_len: int
    segments: bool  # document packing: records carry segment ids
    compression: str  # TFRecord compression type: "" or "GZIP"
    lost: dict[str, int] = field(default_factory=dict)  # shard file -> records lost

    @property
    def total_records(self) -> int:
        return sum(self.records)


def shard_problem(path: str, entry: dict, level: str) -> str | None:
    """Why the shard at `path` does not match its manifest entry, or None when it does."""
    if not tf.io.gfile.exists(path):
        return "is missing"
    try:
        size = tf.io.gfile.stat(path).length
        if tf.io.gfile.isdir(path):
            return "is unreadable (a directory)"
    except tf.errors.OpError as err:
        return f"is unreadable ({err.message})"
    if size != entry["bytes"]:
        return f"is {size} bytes, the manifest says {entry['bytes']}"
    if level == "sha256":
        try:
            digest = records.file_sha256(path)
        except tf.errors.OpError as err:
            return f"is unreadable ({err.message})"
        if digest != entry["sha256"]:
            return "has a different sha256 than the manifest (changed after prepare)"
    return None


def _framing_problem(path: str, compression: str) -> str | None:
    """Walks the record headers: TF's reader crashes the process (segfault, seen with TF 2.21)
    on a length field whose own checksum is valid but that points past the end of the file."""
    with tf.io.gfile.GFile(path, "rb") as raw:
        f = gzip.GzipFile(fileobj=raw) if compression == "GZIP" else raw
        try:
            size = len(f.read()) if compression == "GZIP" else tf.io.gfile.stat(path).length
            f.seek(0)
            offset = count = 0
            while offset < size:
                header = f.read(12)  # uint64 length, uint32 masked CRC32C of the length
                if len(header) < 12:
                    return f"; record {count} has a truncated header"
                (length,) = struct.unpack("<Q", header[:8])
                if length + 16 > size - offset:
                    return f"; record {count} declares {length} bytes, past the end of the file"
                offset += length + 16
                f.seek(offset)
                count += 1
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            return f"; not readable as {compression or 'uncompressed'} TFRecords ({err})"
    return None


def first_bad_record(path: str, compression: str, window_len: int) -> str:
    """Reads a damaged shard record by record; says where reading or parsing first fails."""
    framing = _framing_problem(path, compression)
    if framing:
        return framing
    count = 0
    try:
        for serialized in tf.data.TFRecordDataset(path, compression):
            records.parse_batch(serialized[None], window_len)
            count += 1
    except tf.errors.OpError as err:
        return f"; record {count} fails: {_TF_NOISE.sub('', err.message.splitlines()[0])}"
    return f"; its {count} records read and parse cleanly"


def check_split(
    directory: str, manifest: dict, split: str, level: str, on_corrupt: str
) -> ShardSet:
    """Checks every shard of `split`; raises on damage, or leaves it out and counts the loss."""
    entries = manifest["splits"].get(split, {}).get("shards", [])
    if not entries:
        raise DataError(f"{directory}: the manifest lists no {split} shards")
    compression = records.COMPRESSION[manifest["compression"]]
    segments = manifest["packing"] == "document"
    shards = ShardSet([], [], manifest["window_len"], segments, compression)
    for entry in entries:
        path = posixpath.join(directory, entry["file"])
        problem = shard_problem(path, entry, level)
        if problem is None:
            shards.paths.append(path)
            shards.records.append(entry["records"])
            continue
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            problem += first_bad_record(path, compression, manifest["window_len"])
        if on_corrupt == "error":
            raise DataError(
                f"damaged shard {path}: {problem} (data.on_corrupt: skip leaves it out, "
                "counted; python -m tfllm.prepare --verify checks them all)"
            )
        shards.lost[entry["file"]] = entry["records"]
        logger.warning(
            f"skipping damaged shard {entry['file']}: {problem}; {entry['records']} records lost"
        )
    if shards.lost:
        lost = sum(shards.lost.values())
        logger.warning(
            f"{split}: {len(shards.lost)} damaged shards skipped, {lost} of "
            f"{lost + shards.total_records} records lost"
        )
    if not shards.paths:
        raise DataError(f"{directory}: no usable {split} shard is left")
    return shards


def verify_dataset(directory: str) -> Iterator[str]:
    """Checks the tokenizer and every shard against the manifest: yields one report line per
    shard (`ok  ...` or `BAD ...`), then raises DataError naming the damaged count, if any."""
    manifest = records.read_manifest(directory)
    bad = checked = 0
    tokenizer_path = posixpath.join(directory, manifest["tokenizer"]["file"])
    if not tf.io.gfile.exists(tokenizer_path):
        yield f"BAD {tokenizer_path}: missing"
        bad += 1
    elif records.file_sha256(tokenizer_path) != manifest["tokenizer"]["sha256"]:
        yield f"BAD {tokenizer_path}: sha256 differs from the manifest"
        bad += 1
    compression = records.COMPRESSION[manifest["compression"]]
    for split, info in manifest["splits"].items():
        for entry in info["shards"]:
            checked += 1
            path = posixpath.join(directory, entry["file"])
            problem = shard_problem(path, entry, "sha256")
            if problem is None:
                yield f"ok  {entry['file']}: {entry['records']} records, {entry['tokens']} tokens"
                continue
            bad += 1
            if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
                problem += first_bad_record(path, compression, manifest["window_len"])
            yield f"BAD {entry['file']} ({split}): {problem}; {entry['records']} records"
    if bad:
        raise DataError(f"{directory}: {bad} damaged file(s) among {checked} shards and tokenizer")
    yield f"{directory}: all {checked} shards and the tokenizer match the manifest"
