"""tfllm: decoder-only Transformer LMs with TensorFlow, Keras 3, XLA and tf.distribute.

The Python API, for scripts and notebooks (the commands `tfllm <command>` do the same
from a shell)::

    import tfllm
    cfg = tfllm.load_config("tiny", overrides=["train.steps=200", "runtime.workdir=runs/demo"])
    tfllm.prepare(cfg)                       # text -> tokenizer -> TFRecord shards
    tfllm.train(cfg)                         # or resume: the same call again
    model = tfllm.load("runs/demo")          # the newest usable checkpoint
    print(tfllm.generate(model, ["def main("], max_new_tokens=32))
    tfllm.export("runs/demo", "export/demo")

Importing tfllm does not import TensorFlow; each function imports its stage when called.
Progress and notes are logged as the commands show them (stderr), unless the program has set up
`logging` itself: then they go to its handlers (`tfllm.logs`).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "load_config",
    "prepare",
    "train",
    "load",
    "generate",
    "export",
    "finetune",
    "dpo",
    "distill",
]


def load_config(*files: str, overrides: list[str] | tuple[str, ...] = ()):
    """A `Config` from YAML files (paths or names in configs/, default "tiny") and
    `section.key=value` overrides, validated as the commands' --config/--set are."""
    from tfllm.cli import DEFAULT_CONFIG
    from tfllm.config import load_config as load

    return load(list(files) or [DEFAULT_CONFIG], list(overrides))


def prepare(cfg, force: bool = False) -> dict:
    """Builds the dataset of `cfg.data` (unless it is already there and `force` is False);
    returns its manifest. As `tfllm prepare [--force]`."""
    from tfllm.corpus import prepare as stage

    _show_logs()
    return stage.prepare(cfg) if force else stage.ensure_prepared(cfg)


def train(cfg, strategy=None) -> dict:
    """Trains (or resumes) to `cfg.train.steps` in `cfg.runtime.workdir`; returns the final
    step, validation loss and counters. As `tfllm train`; `strategy` defaults to
    the one `cfg.runtime.strategy` names."""
    from tfllm.corpus.prepare import prepare as build_data
    from tfllm.training import loop

    _show_logs()
    return loop.train(cfg, strategy, build_data=build_data)


def load(workdir: str, step: int | None = None):
    """The model of a workdir's newest usable checkpoint (or ckpt-`step`): a `TrainedModel`
    with `.model`, `.cfg`, `.tokenizer_path`, `.checkpoint` and `.step`."""
    from tfllm.runs.trained import load_trained

    return load_trained(workdir, step)


def generate(model, prompts: list[str], **options) -> list[str]:
    """Completions of `prompts` from a `TrainedModel` (or a workdir path). Options:
    max_new_tokens, temperature (0 = greedy, the default), top_k, top_p, seed."""
    from tfllm.serve.generate import Generator

    trained = load(model) if isinstance(model, str) else model
    return Generator(trained.model, trained.tokenizer_path).generate(list(prompts), **options)


def export(workdir: str, export_dir: str, version: int | None = None) -> str:
    """Writes a TF Serving version of the workdir's newest usable checkpoint under
    `export_dir`; returns its directory. As `tfllm export`."""
    from tfllm.serve import export as stage

    _show_logs()
    return stage.export(workdir, export_dir, version)


def finetune(model, data: str, format: str = "messages", workdir: str = "", **options):
    """Fine-tunes `model` (a `TrainedModel` from `tfllm.load`, or a workdir) on the file(s)
    `data` of `format` (text, prompt_completion, messages, alpaca) into a new `workdir`; with
    `lora_rank` > 0 only LoRA adapters train. Every other keyword is a train, data or runtime
    config key (`steps`, `learning_rate`, `lora_targets`, `seq_len`, ...). Returns a run with
    `.chat(messages)`, `.export(dir)`, `.trained`, `.cfg` and `.result`; its config.yaml
    reproduces it: `tfllm train --config <workdir>/config.yaml`."""
    from tfllm.corpus.prepare import prepare as build_data
    from tfllm.training.finetune import finetune as run

    _show_logs()
    return run(model, data, format, workdir, build_data=build_data, **options)


def _show_logs() -> None:
    from tfllm import logs

    logs.show_by_default()


def dpo(model, data: str, workdir: str = "", beta: float = 0.1, loss: str = "sigmoid", **options):
    """Preference-tunes `model` (a `TrainedModel` or a workdir) with DPO on the file(s) `data`
    of prompt/chosen/rejected pairs (TRL's text or conversational shape) into a new `workdir`.
    `loss`: sigmoid, ipo, hinge or robust (`dpo_label_smoothing`), plus an SFT term on the
    chosen answers with `dpo_sft_weight` > 0; the reference is `model` itself (with
    `lora_rank` > 0 its base under the adapters). Other keywords are config keys (`steps`,
    `learning_rate`, `global_batch_size`, ...). Returns a run like `tfllm.finetune`'s.
    See docs/post-training.md."""
    from tfllm.corpus.prepare import prepare as build_data
    from tfllm.training.post_training import dpo as run

    _show_logs()
    return run(model, data, workdir, beta, loss, build_data=build_data, **options)


def distill(teacher, student_config, data: str, workdir: str = "", **options):
    """Trains the student model of `student_config` (a `Config`, YAML path or config name) on
    `data` with knowledge distillation from `teacher` (a workdir, `TrainedModel`, Hugging Face
    directory or keras-hub preset directory), which must share its tokenizer. Keywords:
    `alpha` (the KL term's weight), `temperature`, `format` (text or an SFT format) and config
    keys. Returns a run like `tfllm.finetune`'s. See docs/post-training.md."""
    from tfllm.corpus.prepare import prepare as build_data
    from tfllm.training.post_training import distill as run

    _show_logs()
    return run(teacher, student_config, data, workdir, build_data=build_data, **options)
