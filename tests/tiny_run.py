"""A tiny trained-looking workdir and its export, built once per test session.

Random weights with a large spread (std 0.5) instead of training: the logits are far from
uniform, so greedy decoding and the parity checks are not trivially satisfied.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np
import tensorflow as tf

from tfllm import export, generate, tokenizer
from tfllm.config import Config, load_config, save_config
from tfllm.model import build_model

SEQ = 32
VOCAB = 512  # byte fallback alone needs 256 pieces


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
def build(root: str) -> TinyRun:
    root_path = pathlib.Path(root)
    workdir = root_path / "run"
    cfg = load_config(
        overrides=[
            "model.num_layers=2",
            "model.hidden_dim=32",
            "model.num_heads=2",
            "model.intermediate_dim=64",
            f"model.vocabulary_size={VOCAB}",
            f"model.max_sequence_length={SEQ}",
            f"data.seq_len={SEQ}",
            f"data.root={root_path / 'data'}",
            "data.name=tiny",
            f"runtime.workdir={workdir}",
            "train.sample_tokens=8",
        ]
    )
    sources = sorted((pathlib.Path(tokenizer.__file__).parent).glob("*.py"))
    tokenizer_path = root_path / "data" / "tiny" / "tokenizer.model"
    tokenizer_path.parent.mkdir(parents=True)
    tokenizer_path.write_bytes(tokenizer.train_tokenizer([p.read_text() for p in sources], VOCAB))
    workdir.mkdir()
    save_config(cfg, str(workdir / "config.yaml"))
    model = build_model(cfg.model)
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
    tf.train.Checkpoint(model=model).save(str(workdir / "checkpoints" / "ckpt"))
    export_dir = str(root_path / "export" / "tiny")
    export.export(str(workdir), export_dir, log=lambda _: None)
    generator = generate.Generator(model, str(tokenizer_path))
    return TinyRun(cfg, str(workdir), str(tokenizer_path), export_dir, model, generator)
