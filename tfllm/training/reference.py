"""DPO's reference log-probabilities for a run without LoRA: computed once, before training, in
one pass over the dataset's pairs, and stored next to the dataset.

The file is `<dataset>/reference-logps-<key>.json`, `key` a hash of the reference checkpoint's
files (their sha256, as `tfllm.runs.finetune.identity` names them) and of the dataset's
shards, so a run from another starting model or on rebuilt data never reads a stale table.
It holds one row [chosen, rejected] per pair number (row 0 unused): the reader looks each
batch's rows up by the number its records carry (`tfllm.data.pairs`). A resumed run finds the
file and skips the pass; so does a second run from the same model on the same data.

Under MultiWorkerMirroredStrategy every worker computes the same table from the same weights and
shards (no worker waits on a file another may never write), and only the chief writes it.
Two runs that compute it at once (two jobs on one dataset) each write a temporary file of their
own and rename it into place: the table is the same, and whichever rename lands last stays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import socket
import time

import numpy as np
import tensorflow as tf

from tfllm.data import pairs, records
from tfllm.data.verify import ShardSet
from tfllm.training.dpo import sequence_logps

logger = logging.getLogger(__name__)


def _key(identity: dict, manifest: dict) -> str:
    shards = [s["sha256"] for split in manifest["splits"].values() for s in split["shards"]]
    blob = json.dumps({"reference": identity["sha256"], "shards": shards}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def path_of(directory: str, identity: dict, manifest: dict) -> str:
    return posixpath.join(directory, f"reference-logps-{_key(identity, manifest)}.json")


def _shards(directory: str, manifest: dict) -> ShardSet:
    entries = [s for split in manifest["splits"].values() for s in split["shards"]]
    return ShardSet(
        [posixpath.join(directory, s["file"]) for s in entries],
        [s["records"] for s in entries],
        manifest["window_len"],
        True,
        records.COMPRESSION[manifest["compression"]],
    )


def compute(model, directory: str, manifest: dict, batch_size: int, jit: bool) -> np.ndarray:
    """(pairs + 1, 2) float32: the model's log-probabilities of every pair's completions."""
    table = np.zeros([manifest["pairs"] + 1, 2], np.float32)
    score = tf.function(
        lambda i, t, s: sequence_logps(model, i, t, s, training=False)[0], jit_compile=jit
    )
    for numbers, inputs, targets, segments in pairs.numbered_pairs(
        _shards(directory, manifest), batch_size
    ):
        table[numbers.numpy()] = score(inputs, targets, segments).numpy()
    return table


def _write(path: str, document: dict) -> None:
    """`path` through a temporary file named for this process, then a rename over any copy."""
    temporary = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(json.dumps(document))
    tf.io.gfile.rename(temporary, path, overwrite=True)


def ensure(
    model, directory: str, manifest: dict, identity: dict, train_cfg, chief: bool = True
) -> np.ndarray:
    """The stored table for this reference and dataset, computing it when missing and storing
    it when `chief` (the one writer of a multi-worker job). Call it while `model` holds the
    reference weights (before a checkpoint is restored)."""
    path = path_of(directory, identity, manifest)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            stored = json.load(f)
        logger.info("DPO reference log-probabilities: %s", path)
        return np.asarray(stored["logps"], np.float32)
    started = time.time()
    batch = max(1, train_cfg.global_batch_size // train_cfg.grad_accum_steps)
    table = compute(model, directory, manifest, batch, train_cfg.jit_compile)
    document = {
        "reference": {"workdir": identity["workdir"], "checkpoint": identity["checkpoint"]},
        "sha256": identity["sha256"],
        "pairs": manifest["pairs"],
        "logps": table.tolist(),
    }
    if not chief:
        return table
    _write(path, document)
    logger.info(
        "DPO reference log-probabilities of %d pairs in %.1fs: %s",
        manifest["pairs"],
        time.time() - started,
        path,
    )
    return table
