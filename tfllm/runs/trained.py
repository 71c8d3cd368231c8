"""Loading a trained model from a workdir: the one reader that `generate`, `export` (and later
`eval` and `convert`) share.

It reads checkpoints exactly as training restores them (`Checkpointer`: completion marker,
sizes, CRC, fallback to an older checkpoint with the reason logged, refusal of a checkpoint
written for another model), but only the model's variables. A LoRA workdir's checkpoints hold
adapters only: its base (`train.init_from`, checked against the identity the checkpoint names)
is loaded first and the adapters are merged into it, so every reader sees a plain model.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath

import tensorflow as tf

from tfllm.config import Config, load_config
from tfllm.data import layout
from tfllm.errors import TfllmError
from tfllm.model import lora
from tfllm.model.lm import TransformerLM, build_model
from tfllm.runs import finetune
from tfllm.runs.checkpoint import Checkpointer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainedModel:
    """A model with the weights of one checkpoint, and what belongs with it."""

    cfg: Config  # the workdir's resolved config.yaml
    model: TransformerLM
    tokenizer_path: str
    checkpoint: str  # the restored checkpoint's path prefix
    step: int
    adapters: lora.Adapters | None = None  # a LoRA workdir read with merge=False


def load_trained(workdir: str, step: int | None = None, merge: bool = True) -> TrainedModel:
    """The newest usable checkpoint of `workdir` (or ckpt-`step`), with its config and tokenizer.
    A LoRA workdir's adapters are merged into the base, unless `merge` is False: then the model
    is the base with the adapters attached (`.adapters`, e.g. to export them alone).

    Raises:
        TfllmError: not a workdir, no checkpoint, or none usable (each named with its reason).
    """
    config_path = posixpath.join(workdir, "config.yaml")
    if not tf.io.gfile.exists(config_path):
        raise TfllmError(f"{config_path} not found: is {workdir} a training workdir?")
    cfg = load_config([config_path])
    model = build_model(cfg.model, initialize=False)
    tracked, base, adapters = model, None, None
    if cfg.train.lora_rank:
        base = load_base(cfg, model)
        tracked = adapters = lora.attach(model, cfg.train)
    checkpointer = Checkpointer(workdir, tracked, model_config=cfg.to_dict()["model"], base=base)
    path = checkpointer.restore_latest(step)
    if path is None:
        raise TfllmError(
            f"no checkpoint in {checkpointer.directory}: train first "
            f"(python -m tfllm.train --config {config_path})"
        )
    if adapters is not None and merge:
        adapters.merge()
        model.trainable = True
        adapters = None
    tokenizer_path = layout.tokenizer_path(cfg)
    restored_step = int(posixpath.basename(path).split("-")[1])
    return TrainedModel(cfg, model, tokenizer_path, path, restored_step, adapters)


def load_base(cfg: Config, model) -> dict:
    """Copies the weights of `cfg.train.init_from`'s newest usable checkpoint into `model`
    (built from the same model section, in any dtype); returns the base's identity."""
    base = load_trained(cfg.train.init_from)
    for target, source in zip(model.weights, base.model.weights, strict=True):
        target.assign(tf.cast(source, target.dtype))
    logger.debug(f"fine-tuning from {base.checkpoint} (weights only; fresh optimizer, step 0)")
    return finetune.identity(base)
