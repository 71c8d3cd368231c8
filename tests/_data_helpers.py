"""Shared by the data tests: a small synthetic corpus and a config that prepares it in seconds."""

from __future__ import annotations

import hashlib
import pathlib
import random

import numpy as np
from conftest import shape_overrides

from tfllm.config import Config, load_config

WORDS = (
    "def class return import lambda yield while for if else try except with as pass "
    "value index count total window token shard record batch stream epoch seed step "
    "alpha beta gamma delta sigma omega north south east west red green blue"
).split()


def write_corpus(directory: pathlib.Path, files: int = 24, words: int = 600, seed: int = 0):
    """Writes `files` text files of pseudo-code; returns their paths."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        lines = []
        for _ in range(words // 8):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(8)) + f" {rng.randint(0, 999)}")
        path = directory / f"doc{i:03d}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def small_config(root: pathlib.Path, source: str, name: str = "ds", *overrides: str) -> Config:
    return load_config(
        [],
        [
            f"data.source={source}",
            f"data.root={root}",
            f"data.name={name}",
            "data.seq_len=16",
            "data.records_per_shard=64",
            "data.val_fraction=0.2",
            "data.tokenizer_sample_mb=1",
            "data.shuffle_buffer=32",
            # conftest's tiny shape with 320 pieces: the synthetic corpus is too small for
            # SentencePiece to find 512
            *shape_overrides(vocabulary_size=320),
            *overrides,
        ],
    )


def batch_digest(batch) -> str:
    """A hash of every tensor of one batch: equal digests mean identical batches."""
    digest = hashlib.sha256()
    for tensor in batch:
        digest.update(np.ascontiguousarray(tensor.numpy()).tobytes())
    return digest.hexdigest()
