"""Fine-tuning's base model: a run with `train.init_from` starts from another workdir's weights.

`resolve` takes the base's model section and tokenizer into the run's config (the model must
be the base's; the data must be tokenized as the base was), `load_base` copies the base's
weights (`tfllm.runs.trained.load_base`: read by `load_trained`, so a base that is itself a
LoRA run comes merged), and
`identity` names the base checkpoint by path and sha256 of its files: a LoRA run's checkpoints
hold adapters only, meaningful with exactly that base.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath

import tensorflow as tf

from tfllm.config import Config, load_config
from tfllm.data import layout
from tfllm.errors import TfllmError

logger = logging.getLogger(__name__)


def base_config(workdir: str) -> Config:
    path = posixpath.join(workdir, "config.yaml")
    if not tf.io.gfile.exists(path):
        raise TfllmError(f"train.init_from: {path} not found: is {workdir} a tfllm workdir?")
    return load_config([path])


def resolve(cfg: Config) -> Config:
    """`cfg` with the base's model section and (unless set) its tokenizer; `cfg` itself
    without `train.init_from`. The result is what the run's config.yaml records."""
    if not cfg.train.init_from:
        return cfg
    base = base_config(cfg.train.init_from)
    data = cfg.data
    if not data.tokenizer:
        data = dataclasses.replace(data, tokenizer=layout.tokenizer_path(base))
    return dataclasses.replace(cfg, model=base.model, data=data)


def identity(trained) -> dict:
    """{"workdir", "checkpoint", "sha256": {file: digest}} of a `TrainedModel`'s checkpoint."""
    directory, prefix = posixpath.split(trained.checkpoint)
    name = posixpath.basename(prefix)
    digests = {}
    for file in sorted(tf.io.gfile.listdir(directory)):
        if file.startswith(name + ".") and not file.endswith(".json"):
            digest = hashlib.sha256()
            with tf.io.gfile.GFile(posixpath.join(directory, file), "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
            digests[file] = digest.hexdigest()
    return {"workdir": posixpath.dirname(directory), "checkpoint": name, "sha256": digests}
