"""Shared fixtures: a small real corpus (a slice of the stdlib), the one tiny model shape and
tiny configs over it, and a small workdir trained once per session by tfllm's own trainer."""

from __future__ import annotations

import os
import pathlib
import shutil
import sysconfig

import pytest

# As the commands do (tfllm.cli): TensorFlow's C++ start-up lines stay off the console. An
# xdist worker's stderr is not captured while it imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfllm.config import Config, load_config
from tfllm.corpus.prepare import prepare
from tfllm.training import loop

# The one tiny model shape of the tests (ModelConfig keys). Fixtures that need another derive
# it from this one and say why (tiny_run, _data_helpers, hub_fixtures, keras_hub_presets).
TINY_SHAPE = {
    "vocabulary_size": 512,  # SentencePiece's byte fallback alone needs 256 pieces
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "max_sequence_length": 64,
}


def shape_overrides(**changes) -> list[str]:
    """TINY_SHAPE (with `changes`) as `model.key=value` overrides for load_config."""
    return [f"model.{key}={value}" for key, value in {**TINY_SHAPE, **changes}.items()]


TINY_MODEL = [
    *shape_overrides(),
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


@pytest.fixture(scope="session")
def trained_workdir(corpus_dir, data_root, tmp_path_factory) -> Config:
    """A tiny model trained 300 steps on the shared corpus by the `tfllm.train` command's own
    code (prepare, then the training loop; the stdlib eval tasks run at the final evaluation):
    the config of that workdir, for every test that needs "a small trained model". Tests read
    it; one that changes the workdir copies it first."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    cfg = load_config(
        [],
        [
            *TINY_MODEL,
            "data.name=tiny-test",
            f"data.source={corpus_dir}",
            f"data.root={data_root}",
            f"runtime.workdir={workdir}",
            "train.steps=300",
            "train.eval_every=300",
            "train.checkpoint_every=300",
            "train.eval_tasks=stdlib",
        ],
    )
    loop.train(cfg, build_data=prepare)
    return cfg
