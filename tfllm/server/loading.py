"""What the server serves: a workdir's newest usable checkpoint (a LoRA run merged, as
`tfllm generate` reads it) or an export's weights, as a Keras model with its tokenizer.

An export is read back into the same `TransformerLM` (from its assets/config.yaml) so that it
runs through the same compiled prefill and decode step as a workdir: the SavedModel's own
signatures decode a whole batch at a time and cannot admit a request mid-way.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath

import tensorflow as tf

from tfllm.config import Config, load_config
from tfllm.errors import TfllmError
from tfllm.model.lm import TransformerLM, build_model
from tfllm.runs.trained import load_trained

logger = logging.getLogger(__name__)

_TOKENIZER_ASSETS = ("tokenizer.model", "tokenizer.json")


@dataclasses.dataclass
class Served:
    """A model ready to serve and what belongs with it."""

    cfg: Config
    model: TransformerLM
    tokenizer_path: str
    name: str  # the model id clients send and /v1/models lists
    source: str  # the checkpoint or export version read


def load_served(workdir: str | None = None, export: str | None = None) -> Served:
    """Reads `workdir` (newest usable checkpoint) or `export` (a version directory, or a base
    path: its newest integer version)."""
    if (workdir is None) == (export is None):
        raise TfllmError("give one of --workdir or --export")
    if workdir is not None:
        trained = load_trained(workdir)
        name = posixpath.basename(workdir.rstrip("/"))
        return Served(trained.cfg, trained.model, trained.tokenizer_path, name, trained.checkpoint)
    return _load_export(export)


def _version_dir(path: str) -> str:
    if tf.saved_model.contains_saved_model(path):
        return path
    names = tf.io.gfile.listdir(path) if tf.io.gfile.isdir(path) else []
    versions = sorted(int(n.rstrip("/")) for n in names if n.rstrip("/").isdigit())
    if not versions:
        raise TfllmError(f"--export {path}: neither a SavedModel nor a base path with versions")
    return posixpath.join(path, str(versions[-1]))


def _load_export(path: str) -> Served:
    version = _version_dir(path)
    assets = posixpath.join(version, "assets")
    if tf.io.gfile.exists(posixpath.join(assets, "quantization.json")):
        raise TfllmError(
            f"--export {version}: an int8 export; serve a float32 export or the workdir"
        )
    cfg = load_config([posixpath.join(assets, "config.yaml")])
    tokenizer_path = next(
        (
            posixpath.join(assets, name)
            for name in _TOKENIZER_ASSETS
            if tf.io.gfile.exists(posixpath.join(assets, name))
        ),
        None,
    )
    if tokenizer_path is None:
        raise TfllmError(f"--export {version}: no tokenizer in {assets}")
    loaded = tf.saved_model.load(version)
    model = build_model(cfg.model, initialize=False)
    # The export tracks the model's variables as one list in the model's own order.
    stored = list(loaded.weights)
    if [tuple(v.shape) for v in stored] != [tuple(v.shape) for v in model.weights]:
        raise TfllmError(f"--export {version}: its weights do not match its config.yaml")
    for target, source in zip(model.weights, stored, strict=True):
        target.assign(source)
    name = posixpath.basename(path.rstrip("/"))
    if name.isdigit():  # a version directory: the model's name is its base path's
        name = posixpath.basename(posixpath.dirname(path.rstrip("/"))) or name
    return Served(cfg, model, tokenizer_path, name, version)
