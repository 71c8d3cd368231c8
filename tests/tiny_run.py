"""A tiny trained-looking workdir and its export, built once per test session through tfllm's
own code: `prepare` writes the dataset and tokenizer, the trainer's `make_checkpointer` writes
the checkpoint (model, optimizer, counters: the files `tfllm.train` writes), `export` the
SavedModel.

Random weights with a large spread (std 0.5) instead of training: the logits are far from
uniform, so greedy decoding and the parity checks are not trivially satisfied.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np
from conftest import TINY_SHAPE, shape_overrides

import tfllm
from tfllm.config import Config, load_config, save_config
from tfllm.corpus import prepare
from tfllm.model.lm import build_model
from tfllm.serve import export, generate
from tfllm.training.optim import make_optimizer
from tfllm.training.session import make_checkpointer, new_counters

# conftest's one tiny shape with a 32-token context: the export and generate tests reach the
# context limit (left truncation, the cache's last slot) with short prompts.
SEQ = 32
VOCAB = TINY_SHAPE["vocabulary_size"]


@dataclasses.dataclass
class TinyRun:
    cfg: Config
    workdir: str
    tokenizer_path: str
    export_dir: str  # the model base path; version 1 is written
    model: object
    generator: generate.Generator

    @property
    def version_dir(self) -> str:
        return f"{self.export_dir}/1"


@functools.cache
def build(root: str, seq: int = SEQ) -> TinyRun:
    """`seq`: max_sequence_length (the server's chat tests need room for a chat template)."""
    root_path = pathlib.Path(root)
    workdir = root_path / "run"
    cfg = load_config(
        overrides=[
            *shape_overrides(max_sequence_length=seq),
            f"data.seq_len={seq}",
            f"data.root={root_path / 'data'}",
            f"data.source={pathlib.Path(tfllm.__file__).parent}",
            "data.name=tiny",
            "data.tokenizer_sample_mb=1",
            f"runtime.workdir={workdir}",
            "train.sample_tokens=8",
        ]
    )
    prepare.prepare(cfg)
    workdir.mkdir()
    save_config(cfg, str(workdir / "config.yaml"))
    model = build_model(cfg.model)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    make_checkpointer(cfg, model, optimizer, new_counters()).save(0)
    export_dir = str(root_path / "export" / "tiny")
    export.export(str(workdir), export_dir)
    tokenizer_path = str(pathlib.Path(prepare.data_dir(cfg)) / "tokenizer.model")
    generator = generate.Generator(model, tokenizer_path)
    return TinyRun(cfg, str(workdir), tokenizer_path, export_dir, model, generator)
