"""What the trainer measures at each evaluation: the validation loss, `train.eval_tasks` and a
sample, written to TensorBoard next to each other (`val/...`)."""

from __future__ import annotations

import logging
import math

from tfllm.config import Config
from tfllm.data import layout
from tfllm.observe.metrics import Reporter
from tfllm.serve import generate
from tfllm.training.steps import Steps, evaluate, evaluate_metrics

logger = logging.getLogger(__name__)


class Evaluation:
    """Built once per session (the sampler and the eval engine compile at their first call);
    `val_loss` and `sample` hold the latest figures."""

    def __init__(self, cfg: Config, model, steps: Steps, eval_ds, reporter: Reporter):
        self.cfg, self.model, self.steps, self.eval_ds = cfg, model, steps, eval_ds
        self.reporter = reporter
        self.generator = generate.Generator(model, layout.tokenizer_path(cfg))
        self.engine = None
        self.tasks = []
        if cfg.train.eval_tasks:  # a bad name or task file fails now, not at the first eval
            from tfllm.eval import run

            self.tasks = run.load_tasks(cfg.train.eval_tasks)
        self.val_loss, self.sample = math.nan, ""

    def __call__(self, step: int) -> None:
        values = evaluate_metrics(self.steps, self.eval_ds)  # DPO adds its rewards and logps
        self.val_loss = values["loss"]
        self.reporter.scalars("val", step, {**values, **self.reporter.perplexity(self.val_loss)})
        logger.info(f"step {step}: validation loss {self.val_loss:.4f}", extra={"step": step})
        if self.tasks:
            self.run_tasks(step)
        self.sample = self.write_sample(step)

    def ensure(self, step: int) -> None:
        """A session resumed at its last step still reports where the model stands."""
        if math.isnan(self.val_loss):
            self.val_loss = evaluate(self.steps, self.eval_ds)
            self.sample = self.write_sample(step)

    def run_tasks(self, step: int) -> None:
        """train.eval_tasks on the training model (compiled scoring, cached decoding), as
        `val/<task>/<metric>` scalars."""
        from tfllm.eval import engine, run

        if self.engine is None:
            self.engine = engine.model_engine(self.model, layout.tokenizer_path(self.cfg))
        rows = run.evaluate(self.engine, self.tasks)
        values = {f"{r['task']}/{r['metric']}": r["value"] for r in rows}
        self.reporter.scalars("val", step, values)
        logger.info(
            f"step {step}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items()),
            extra={"step": step},
        )

    def write_sample(self, step: int) -> str:
        cfg = self.cfg
        text = self.generator.generate(
            [cfg.train.sample_prompt],
            max_new_tokens=min(cfg.train.sample_tokens, cfg.model.max_sequence_length - 1),
            temperature=0.8,
            seed=cfg.train.seed,
        )[0]
        self.reporter.text("val", step, "sample", cfg.train.sample_prompt + text)
        return text
