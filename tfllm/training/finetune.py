"""`tfllm.finetune`: keyword arguments -> a fine-tuning config -> a trained run to chat with
and export. Every argument is a config key, and the run's config.yaml reproduces it with
`python -m tfllm.train --config <workdir>/config.yaml`."""

from __future__ import annotations

import dataclasses
import posixpath

from tfllm.config import Config, load_config
from tfllm.errors import ConfigError
from tfllm.runs import finetune as base_runs

_FIELDS = {
    s: {f.name for f in dataclasses.fields(getattr(Config(), s))}
    for s in ("train", "data", "runtime")
}


def _key(name: str) -> str:
    """`learning_rate` -> `train.learning_rate`: the one section that has the key."""
    if "." in name:
        return name
    owners = [s for s in _FIELDS if name in _FIELDS[s]]
    if len(owners) != 1:
        raise ConfigError(f"tfllm.finetune: {name!r} is not a train, data or runtime key")
    return f"{owners[0]}.{name}"


def config(base: str, data: str, format: str, workdir: str, **options) -> Config:
    """The run's config: tfllm's defaults, the base's model and tokenizer, the data, options."""
    base_cfg = base_runs.base_config(base)
    values = {
        "train.init_from": base,
        "runtime.workdir": workdir,
        "data.source": data,
        "data.format": format,
        "data.root": posixpath.join(workdir, "data"),
        "data.name": "finetune",
        "data.packing": "concat" if format == "text" else "document",
        "model.max_sequence_length": base_cfg.model.max_sequence_length,
        "data.seq_len": base_cfg.model.max_sequence_length,
    }
    steps = options.get("steps", 2000)
    values["train.warmup_steps"] = max(1, steps // 10)
    values.update({_key(k): v for k, v in options.items()})
    cfg = load_config([], [f"{k}={v}" for k, v in values.items()])
    return base_runs.resolve(cfg)


@dataclasses.dataclass
class FineTuneRun:
    """A finished (or resumed) fine-tuning run."""

    workdir: str
    cfg: Config
    result: dict
    _trained: object = None

    @property
    def trained(self):
        """The fine-tuned model (a LoRA run's adapters merged into its base)."""
        if self._trained is None:
            from tfllm.runs.trained import load_trained

            self._trained = load_trained(self.workdir)
        return self._trained

    def chat(self, messages: list[dict], **options) -> str:
        """The model's reply to `messages`, rendered with the template training used."""
        from tfllm.serve.chat import chat_completion

        return chat_completion(self.trained, messages, **options)

    def export(self, export_dir: str, version: int | None = None) -> str:
        """A TF Serving SavedModel with the merged weights; returns its directory."""
        from tfllm.serve import export as stage

        return stage.export(self.workdir, export_dir, version)


def finetune(
    model, data: str, format: str = "messages", workdir: str = "", *, build_data=None, **options
):
    """Fine-tunes `model` (a `TrainedModel` or a workdir) on `data`; see `tfllm.finetune`.
    `build_data` prepares the run's dataset (`loop.train`)."""
    from tfllm.training import loop

    base = (
        model if isinstance(model, str) else posixpath.dirname(posixpath.dirname(model.checkpoint))
    )
    if not workdir:
        raise ConfigError("tfllm.finetune needs workdir= (where the run is written)")
    cfg = config(base, data, format, workdir, **options)
    result = loop.train(cfg, build_data=build_data)
    return FineTuneRun(workdir, cfg, result)
