"""The TFRecord schema in one place: shard writer, manifest, and batch decoding.

A record is one packed window of `seq_len + 1` token ids (the causal shift happens in the
reader). Shards are named `train-00000-of-00016.tfrecord`; each is written under a temporary
name and renamed once complete, so a shard that exists is a shard that was finished.
"""

from __future__ import annotations

import hashlib
import json
import posixpath

import numpy as np
import tensorflow as tf

from tfllm.errors import DataError

TOKENS_KEY = "tokens"
SEGMENTS_KEY = "segments"  # document packing only: 1, 2, ... per document in a window, 0 = pad
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
MANIFEST_VERSION = 2
COMPRESSION = {"none": "", "gzip": "GZIP"}  # data.compression -> TFRecord compression type


def serialize_window(window: np.ndarray, segments: np.ndarray | None = None) -> bytes:
    features = {TOKENS_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=window.tolist()))}
    if segments is not None:
        features[SEGMENTS_KEY] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=segments.tolist())
        )
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def parse_batch(
    serialized: tf.Tensor, window_len: int, segments: bool = False
) -> dict[str, tf.Tensor]:
    """Decodes a batch of serialized records into int32 (B, window_len) tensors by key."""
    spec = {TOKENS_KEY: tf.io.FixedLenFeature([window_len], tf.int64)}
    if segments:
        spec[SEGMENTS_KEY] = tf.io.FixedLenFeature([window_len], tf.int64)
    return {k: tf.cast(v, tf.int32) for k, v in tf.io.parse_example(serialized, spec).items()}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class ShardWriter:
    """Writes windows into shards of `records_per_shard` records each.

    The total shard count is only known at the end, so shards are written as `*.tmp` and
    renamed to their final `-of-N` names by `close()`.
    """

    def __init__(
        self,
        directory: str,
        split: str,
        window_len: int,
        records_per_shard: int,
        compression: str = "none",
    ):
        self.directory, self.split = directory, split
        self.window_len, self.records_per_shard = window_len, records_per_shard
        self._options = tf.io.TFRecordOptions(compression_type=COMPRESSION[compression])
        self._writer: tf.io.TFRecordWriter | None = None
        self._temp_paths: list[str] = []
        self._records: list[int] = []
        self._tokens: list[int] = []

    def write(self, windows: np.ndarray, segments: np.ndarray | None = None) -> None:
        """Writes (N, window_len) token windows [and their segment ids; 0 marks padding]."""
        for i, window in enumerate(windows):
            if self._writer is None or self._records[-1] == self.records_per_shard:
                self._open_next()
            row_segments = None if segments is None else segments[i]
            self._writer.write(serialize_window(window, row_segments))
            self._records[-1] += 1
            real = self.window_len if segments is None else int(np.sum(segments[i] > 0))
            self._tokens[-1] += real

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = posixpath.join(self.directory, f".{self.split}-{len(self._temp_paths):05d}.tmp")
        self._temp_paths.append(path)
        self._records.append(0)
        self._tokens.append(0)
        self._writer = tf.io.TFRecordWriter(path, self._options)

    def close(self) -> list[dict]:
        """Finishes the last shard, renames all into place; returns their manifest entries."""
        if self._writer is not None:
            self._writer.close()
        shards = []
        counts = zip(self._temp_paths, self._records, self._tokens, strict=True)
        for index, (temp, records, tokens) in enumerate(counts):
            name = shard_name(self.split, index, len(self._temp_paths))
            final = posixpath.join(self.directory, name)
            tf.io.gfile.rename(temp, final, overwrite=True)
            shards.append(
                {
                    "file": name,
                    "records": records,
                    "tokens": tokens,  # real tokens: padding is not counted
                    "bytes": tf.io.gfile.stat(final).length,
                    "sha256": file_sha256(final),
                }
            )
        return shards


def write_atomically(path: str, text: str) -> None:
    """Writes `path` through `path.tmp` and a rename: a reader sees the old file or the whole
    new one, never a torn write."""
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(text)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def write_manifest(directory: str, manifest: dict) -> None:
    write_atomically(posixpath.join(directory, MANIFEST), json.dumps(manifest, indent=2))


def read_manifest(directory: str) -> dict:
    path = posixpath.join(directory, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise DataError(f"no prepared data: {path} is missing (run python -m tfllm.prepare)")
    try:
        with tf.io.gfile.GFile(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(
            f"{path}: manifest version {manifest.get('version')!r} is not supported "
            f"(expected {MANIFEST_VERSION}); run python -m tfllm.prepare --force"
        )
    return manifest
