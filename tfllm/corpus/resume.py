"""Restartable prepare: the state after the last finished shard, in `<dataset>/.prepare/`.

After every `data.scatter_shards` finished shards, prepare saves what it needs to go on from there:
how many input documents it has consumed, the packers' carried tokens, the windows not yet in a
shard, the counters and the dropped-document sample (`state.npz`, JSON and arrays in one `.npz`,
snapshot.py; written atomically), and the deduplication keys added since the previous save
(`dedup-NNNNN.npz`, append-only, so a save costs what was added, not the whole index). A restart
with the same settings loads them, skips the consumed documents (reading them again, not processing
them) and continues; shards that exist with the same bytes are left untouched. Settings that change
the output (`fingerprint`) start from scratch. The manifest is written last and the state removed
after it, so a dataset without a manifest is unfinished whatever else is there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import posixpath
import zipfile

import numpy as np
import tensorflow as tf

from tfllm.config import Config
from tfllm.corpus import snapshot
from tfllm.data import records
from tfllm.data.packing import ConcatPacker, DocumentPacker
from tfllm.errors import DataError
from tfllm.files import write_atomically

STATE_DIR = ".prepare"
_STATE = "state.npz"
# Settings that do not change a byte of the output: a restart may change them.
# What the state holds besides plain data: the packers and the shard writers of each split.
snapshot.register(ConcatPacker, DocumentPacker, records.ShardWriter)
_FREE = {
    "workers",
    "max_memory_mb",
    "root",
    "shuffle_buffer",
    "interleave_shards",
    "on_corrupt",
    "verify",
}


def fingerprint(cfg: Config) -> str:
    settings = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in _FREE}
    settings["vocabulary_size"] = cfg.model.vocabulary_size
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


class Checkpoint:
    def __init__(self, directory: str, fingerprint_: str):
        self.directory = posixpath.join(directory, STATE_DIR)
        self.fingerprint = fingerprint_
        self.deltas = 0

    def load(self) -> dict | None:
        """The saved state, with `dedup_keys` and `dedup_signatures` of every save, or None."""
        path = posixpath.join(self.directory, _STATE)
        if not tf.io.gfile.exists(path):
            return None
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                state = snapshot.loads(f.read(), path)
            if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
                return None
            return self._load_deltas(state)
        except (DataError, ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile,
                tf.errors.OpError) as err:  # fmt: skip
            # Written by tfllm, then damaged (a disk error, a hand edit): refuse rather than
            # guess, since the shards already written depend on it.
            raise DataError(
                f"the restart state in {self.directory} is damaged ({_first_line(err)}); delete "
                f"{self.directory} to prepare this dataset from the start"
            ) from None

    def _load_deltas(self, state: dict) -> dict:
        self.deltas = int(state["deltas"])
        for key in ("position", "splits", "sources", "dropped", "moved_to_val"):
            if key not in state:
                raise KeyError(f"no {key!r} in the state")
        if not isinstance(state["position"], int) or not isinstance(state["splits"], dict):
            raise TypeError("position or splits of the wrong type")
        keys, signatures = [], []
        for index in range(self.deltas):
            with tf.io.gfile.GFile(self._delta_path(index), "rb") as f:
                delta = np.load(io.BytesIO(f.read()), allow_pickle=False)
                keys.extend(row.tobytes() for row in delta["keys"])
                if "signatures" in delta:
                    signatures.append(delta["signatures"])
        state["dedup_keys"] = keys
        state["dedup_signatures"] = np.concatenate(signatures) if signatures else None
        return state

    def _delta_path(self, index: int) -> str:
        return posixpath.join(self.directory, f"dedup-{index:05d}.npz")

    def save(self, state: dict, keys: list[bytes], signatures: np.ndarray | None) -> None:
        tf.io.gfile.makedirs(self.directory)
        buffer = io.BytesIO()
        # uint8 rows, not "S16": NumPy byte strings lose trailing NUL bytes.
        arrays = {"keys": np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 16)}
        if signatures is not None:
            arrays["signatures"] = signatures
        np.savez(buffer, **arrays)
        with tf.io.gfile.GFile(self._delta_path(self.deltas), "wb") as f:
            f.write(buffer.getvalue())
        self.deltas += 1
        path = posixpath.join(self.directory, _STATE)
        saved = {**state, "fingerprint": self.fingerprint, "deltas": self.deltas}
        write_atomically(path, snapshot.dumps(saved))

    def clear(self) -> None:
        if tf.io.gfile.exists(self.directory):
            tf.io.gfile.rmtree(self.directory)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
