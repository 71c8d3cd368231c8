"""Shared fixtures: a small real corpus (a slice of the stdlib) and tiny configs over it."""

from __future__ import annotations

import pathlib
import shutil
import sysconfig

import pytest

from tfllm.config import Config, load_config

TINY_MODEL = [
    "model.vocabulary_size=512",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.hidden_dim=32",
    "model.intermediate_dim=64",
    "model.max_sequence_length=64",
    "data.seq_len=32",
    "data.records_per_shard=200",
    "data.tokenizer_sample_mb=1",
    "data.val_fraction=0.1",
    "train.global_batch_size=8",
    "train.learning_rate=0.01",
    "train.warmup_steps=5",
    "train.steps_per_loop=10",
    "train.eval_batches=2",
    "train.sample_tokens=8",
]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> pathlib.Path:
    """About 300 KB of real Python source: the stdlib's `json` and `email` packages."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    target = tmp_path_factory.mktemp("corpus")
    for package in ("json", "email"):
        shutil.copytree(root / package, target / package, ignore=shutil.ignore_patterns("*.pyc"))
    return target


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("tfrecords")


@pytest.fixture
def make_config(corpus_dir, data_root, tmp_path):
    """Builds a tiny Config over the shared corpus; extra overrides win."""

    def make(*overrides: str, workdir: pathlib.Path | None = None) -> Config:
        base = [
            *TINY_MODEL,
            "data.name=tiny-test",
            f"data.source={corpus_dir}",
            f"data.root={data_root}",
            f"runtime.workdir={workdir or tmp_path / 'run'}",
        ]
        return load_config([], [*base, *overrides])

    return make
