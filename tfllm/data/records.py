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
from tfllm.files import write_atomically

TOKENS_KEY = "tokens"
# Document packing only: 1, 2, ... per document in a window, 0 = padding; -k: a token of
# document k that is context but not a target (instruction data's prompts, `corpus/sft_prepare.py`).
SEGMENTS_KEY = "segments"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.model"
MANIFEST_VERSION = 3  # 3: `built_from`, what the dataset was made from (fingerprint.py)
COMPRESSION = {"none": "", "gzip": "GZIP"}  # data.compression -> TFRecord compression type


def _varint(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Protobuf int64 varints, as (..., lanes) byte cells (lanes: the longest varint), the mask
    of the cells in use, and the byte count of each value. A negative value is its 64-bit two's
    complement (ten bytes), as protobuf writes it: the sign of an SFT segment id."""
    values = np.asarray(values, np.int64).view(np.uint64)
    top = int(values.max(initial=0))
    count = np.ones(values.shape, np.int32)
    for bits in range(7, 64, 7):
        if top < 1 << bits:  # no value has more bytes: skip the passes over the array
            break
        count += values >= np.uint64(1 << bits)
    lanes = int(count.max(initial=1))
    cells = np.empty((*values.shape, lanes), np.uint8)
    for lane in range(lanes):  # 7 bits per byte, the high bit set on all but the last
        low = (values >> np.uint64(7 * lane)) & np.uint64(0x7F)
        cells[..., lane] = low.astype(np.uint8) | (count > lane + 1).astype(np.uint8) << 7
    return cells, np.arange(lanes) < count[..., None], count


def _constant(rows: int, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    cells = np.broadcast_to(np.frombuffer(data, np.uint8), (rows, len(data)))
    return cells, np.ones(cells.shape, bool)


def _feature(name: str, values: np.ndarray) -> tuple[list, np.ndarray]:
    """The cells of one `features.feature` map entry {name: Int64List(values)} per row, and
    each row's entry size."""
    rows, key = len(values), name.encode()
    payload, in_use, count = _varint(values)
    sizes = [count.sum(axis=1)]  # the packed values, Int64List, Feature, map entry
    for overhead in (1, 1, 3 + len(key)):
        sizes.append(overhead + _varint(sizes[-1])[2] + sizes[-1])
    packed, int64_list, feature, entry = sizes
    parts = [_constant(rows, b"\x0a"), _varint(entry)[:2]]
    parts += [_constant(rows, bytes([0x0A, len(key)]) + key + b"\x12"), _varint(feature)[:2]]
    parts += [_constant(rows, b"\x1a"), _varint(int64_list)[:2]]
    parts += [_constant(rows, b"\x0a"), _varint(packed)[:2]]
    parts.append((payload.reshape(rows, -1), in_use.reshape(rows, -1)))
    return parts, 1 + _varint(entry)[2] + entry


def serialize_windows(windows: np.ndarray, segments: np.ndarray | None = None) -> list[bytes]:
    """The serialized tf.train.Example of each (N, window_len) window [and its segment ids],
    byte for byte what `tf.train.Example(...).SerializeToString(deterministic=True)` gives
    (features sorted by key, values packed), built with NumPy for all windows at once:
    building each proto in Python cost prepare as much as tokenizing. Sorted keys, as
    protobuf's deterministic mode writes them: its default map order differs between
    protobuf versions (6.33 and 7.36 here), shard bytes must not."""
    parts, features = _feature(TOKENS_KEY, windows)
    if segments is not None:  # "segments" < "tokens"
        more, size = _feature(SEGMENTS_KEY, segments)
        parts, features = more + parts, features + size
    parts = [_constant(len(windows), b"\x0a"), _varint(features)[:2], *parts]
    cells = np.concatenate(
        [np.broadcast_to(c, m.shape).reshape(len(windows), -1) for c, m in parts], 1
    )
    in_use = np.concatenate([m.reshape(len(windows), -1) for _, m in parts], 1)
    flat = cells[in_use].tobytes()  # row-major: record after record
    ends = np.cumsum(in_use.sum(axis=1)).tolist()
    return [flat[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def serialize_window(window: np.ndarray, segments: np.ndarray | None = None) -> bytes:
    return serialize_windows(window[None], None if segments is None else segments[None])[0]


def parse_batch(
    serialized: tf.Tensor, window_len: int, segments: bool = False
) -> dict[str, tf.Tensor]:
    """Decodes a batch of serialized records into int32 (B, window_len) tensors by key."""
    spec = {TOKENS_KEY: tf.io.FixedLenFeature([window_len], tf.int64)}
    if segments:
        spec[SEGMENTS_KEY] = tf.io.FixedLenFeature([window_len], tf.int64)
    return {k: tf.cast(v, tf.int32) for k, v in tf.io.parse_example(serialized, spec).items()}


def mix64(seeds: list[int], count: int) -> np.ndarray:
    """`count` pseudo-random uint64 keys from `seeds` (splitmix64 over a running state): the
    same on every machine and NumPy version, unlike NumPy's generators' methods."""
    state = np.uint64(0)
    for value in seeds:
        state = _splitmix(np.array([state ^ np.uint64(value & (2**64 - 1))], np.uint64))[0]
    return _splitmix(state + np.arange(1, count + 1, dtype=np.uint64))


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as intended
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class ShardWriter:
    """Collects windows and writes each full shard of `records_per_shard` records at once.

    A shard is written as `.{split}-{i}.tmp` and renamed to `.{split}-{i}.shard` when complete
    (`.{split}-l{lane}-{i}` for one of several writers of a split); `close()` writes the last
    one and renames all to their `-of-N` names (the count is only known then; a rename keeps
    the modification time); `finish` and `publish` do the same for several writers. With
    `order_seed`, each shard's records are written in an order drawn from (seed, lane, shard
    index), so any stretch of a shard holds windows from all its documents. Holds plain data
    only, so a restartable prepare saves it (`corpus/resume.py`) with the windows not yet in a
    shard. A shard that already exists with the same sha256 (a restart redoing work) is left
    untouched.
    """

    def __init__(
        self,
        directory: str,
        split: str,
        window_len: int,
        records_per_shard: int,
        compression: str = "none",
        lane: int | None = None,
        order_seed: int | None = None,
    ):
        self.directory, self.split = directory, split
        # Hidden names carry the lane: prepare fills several shards of a split at once.
        self.prefix = f".{split}" if lane is None else f".{split}-l{lane:03d}"
        self.lane, self.order_seed = lane or 0, order_seed
        self.window_len, self.records_per_shard = window_len, records_per_shard
        self.compression = compression
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._pending_records = 0
        self.shards: list[dict] = []  # finished shards' entries, file = the hidden name

    def write(self, windows: np.ndarray, segments: np.ndarray | None = None) -> int:
        """Adds (N, window_len) token windows [and segment ids; 0 marks padding]; returns the
        number of shards finished by this call."""
        finished = 0
        while len(windows):
            take = self.records_per_shard - self._pending_records
            self._pending.append((windows[:take], None if segments is None else segments[:take]))
            self._pending_records += len(windows[:take])
            windows = windows[take:]
            segments = None if segments is None else segments[take:]
            if self._pending_records == self.records_per_shard:
                self._flush()
                finished += 1
        return finished

    def _flush(self) -> None:
        name = f"{self.prefix}-{len(self.shards):05d}"
        temp = posixpath.join(self.directory, name + ".tmp")
        final = posixpath.join(self.directory, name + ".shard")
        options = tf.io.TFRecordOptions(compression_type=COMPRESSION[self.compression])
        tokens = 0
        pending = self._pending
        if self.order_seed is not None:
            pending = self._shuffled(pending)
        with tf.io.TFRecordWriter(temp, options) as writer:
            for windows, segments in pending:
                for record in serialize_windows(windows, segments):
                    writer.write(record)
                tokens += windows.size if segments is None else int(np.sum(segments != 0))
        digest = file_sha256(temp)
        if tf.io.gfile.exists(final) and file_sha256(final) == digest:
            tf.io.gfile.remove(temp)
        else:
            tf.io.gfile.rename(temp, final, overwrite=True)
        entry = {"file": name + ".shard", "records": self._pending_records, "tokens": tokens}
        entry.update(bytes=tf.io.gfile.stat(final).length, sha256=digest)
        self.shards.append(entry)  # tokens: real tokens, padding is not counted
        self._pending, self._pending_records = [], 0

    def _shuffled(self, pending: list) -> list:
        """The pending windows as one chunk, in the order of this shard's seeded keys."""
        windows = np.concatenate([w for w, _ in pending])
        keys = mix64([self.order_seed, self.lane, len(self.shards)], len(windows))
        order = np.argsort(keys, kind="stable")
        if pending[0][1] is None:
            return [(windows[order], None)]
        return [(windows[order], np.concatenate([s for _, s in pending])[order])]

    def finish(self) -> list[dict]:
        """Writes the last partial shard; returns the entries of all (under hidden names)."""
        if self._pending_records:
            self._flush()
        return self.shards

    def close(self) -> list[dict]:
        """Writes the last partial shard, renames all into place; returns their entries."""
        return publish(self.directory, self.split, self.finish())


def publish(directory: str, split: str, entries: list[dict]) -> list[dict]:
    """Renames finished shards (hidden names) to `{split}-i-of-N` in the order given; returns
    their entries under the new names."""
    shards = []
    for index, entry in enumerate(entries):
        name = shard_name(split, index, len(entries))
        hidden = posixpath.join(directory, entry["file"])
        if tf.io.gfile.exists(hidden):  # else renamed by a run killed before its manifest
            tf.io.gfile.rename(hidden, posixpath.join(directory, name), overwrite=True)
        shards.append({**entry, "file": name})
    return shards


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
