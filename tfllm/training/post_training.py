"""`tfllm.dpo` and `tfllm.distill`: keyword arguments -> a config -> a trained run, in the style
of `tfllm.finetune` (every keyword is a train, data or runtime key, and the run's config.yaml
reproduces it with `python -m tfllm.train --config <workdir>/config.yaml`)."""

from __future__ import annotations

import os
import posixpath

import yaml

from tfllm.config import Config, load_config
from tfllm.errors import ConfigError
from tfllm.runs import finetune as base_runs
from tfllm.training.finetune import FineTuneRun, _key, config

# DPO moves a model a little away from where it starts: TRL's default rate is 1e-6 for full
# fine-tuning; adapters, starting from zero, take a larger one.
DPO_LEARNING_RATE = {"full": 1e-6, "lora": 5e-5}


def _base_of(model) -> str:
    if isinstance(model, str):
        return model
    return posixpath.dirname(posixpath.dirname(model.checkpoint))


def dpo(
    model,
    data: str,
    workdir: str = "",
    beta: float = 0.1,
    loss: str = "sigmoid",
    lora_rank: int = 0,
    *,
    build_data=None,
    **options,
) -> FineTuneRun:
    """DPO of `model` (a `TrainedModel` or a workdir) on the preference file(s) `data`;
    `build_data` prepares the run's dataset (`loop.train`)."""
    from tfllm.training import loop

    if not workdir:
        raise ConfigError("tfllm.dpo needs workdir= (where the run is written)")
    options.setdefault("learning_rate", DPO_LEARNING_RATE["lora" if lora_rank else "full"])
    options.update(objective="dpo", dpo_beta=beta, dpo_loss=loss, lora_rank=lora_rank)
    cfg = config(_base_of(model), data, "preference", workdir, **options)
    return FineTuneRun(workdir, cfg, loop.train(cfg, build_data=build_data))


def _student_file(student_config, workdir: str) -> str:
    """A YAML file of the student's config: the one named, or a `Config` written out."""
    if not isinstance(student_config, Config):
        return str(student_config)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "student.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(student_config.to_dict(), f, sort_keys=False)
    return path


def distill(
    teacher,
    student_config,
    data: str,
    workdir: str = "",
    alpha: float = 0.5,
    temperature: float = 1.0,
    format: str = "text",
    *,
    build_data=None,
    **options,
) -> FineTuneRun:
    """Trains the student of `student_config` (a `Config`, a YAML path or a shipped config's
    name) from scratch on `data` with the frozen `teacher` (a workdir, `TrainedModel`, Hugging
    Face directory or keras-hub preset directory); the student uses the teacher's tokenizer."""
    from tfllm.data import layout
    from tfllm.training import loop
    from tfllm.training.distill import teacher_workdir

    if not workdir:
        raise ConfigError("tfllm.distill needs workdir= (where the run is written)")
    source = teacher_workdir(_base_of(teacher), workdir)
    tokenizer = layout.tokenizer_path(base_runs.base_config(source))
    values = {
        "train.distill_from": source,
        "train.distill_alpha": alpha,
        "train.distill_temperature": temperature,
        "runtime.workdir": workdir,
        "data.source": data,
        "data.format": format,
        "data.tokenizer": tokenizer,
        "data.root": posixpath.join(workdir, "data"),
        "data.name": "distill",
        "data.packing": "concat" if format == "text" else "document",
    }
    values.update({_key(k): v for k, v in options.items()})
    cfg = load_config(
        [_student_file(student_config, workdir)], [f"{k}={v}" for k, v in values.items()]
    )
    return FineTuneRun(workdir, cfg, loop.train(cfg, build_data=build_data))
