"""Where a prepared dataset lives and what it holds: its directory, its tokenizer, which split
a document belongs to, and whether the dataset on disk fits a config.

Training, evaluation, serving and the prepare pipeline all ask these questions; the answers
live here so that none of them imports the pipeline to learn a path.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Callable

import tensorflow as tf

from tfllm.config import Config, DataConfig
from tfllm.data import fingerprint, records
from tfllm.errors import DataError

logger = logging.getLogger(__name__)


def data_dir(cfg: Config) -> str:
    """The dataset's directory: `<data.root>/<data.name>`."""
    return posixpath.join(cfg.data.root, cfg.data.name)


def stored_tokenizer(data: DataConfig) -> str:
    """The name of the dataset's copy of its tokenizer: `tokenizer.json` when data.tokenizer is
    a tokenizer.json, else `tokenizer.model` (given or trained)."""
    return "tokenizer.json" if data.tokenizer.endswith(".json") else records.TOKENIZER


def tokenizer_path(cfg: Config) -> str:
    """The model's tokenizer: `data.tokenizer` when given (an imported model's), else the one
    prepare trained and stored with the dataset."""
    return cfg.data.tokenizer or posixpath.join(data_dir(cfg), records.TOKENIZER)


def name_hash(name: str) -> float:
    """A document's place in [0, 1), from a hash of its name: stable across machines."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_of(name: str, val_fraction: float) -> str:
    """Assigns a document to train or val by a hash of its name."""
    return "val" if name_hash(name) < val_fraction else "train"


def ensure_prepared(cfg: Config, build: Callable | None = None) -> dict:
    """The manifest of `cfg.data`'s dataset, checked against the config.

    A missing dataset is made by `build(cfg)` when given (the prepare stage, passed in by
    the commands and the Python API), else it is an error that says how to make it.
    """
    directory = data_dir(cfg)
    if not tf.io.gfile.exists(posixpath.join(directory, records.MANIFEST)):
        if build is None:
            raise DataError(
                f"no prepared data: {directory}/{records.MANIFEST} is missing "
                "(run python -m tfllm.prepare)"
            )
        logger.info(f"{directory}/{records.MANIFEST} not found: preparing the data first")
        return build(cfg)
    manifest = records.read_manifest(directory)
    fingerprint.check(cfg, manifest, posixpath.join(directory, records.MANIFEST))
    return manifest
