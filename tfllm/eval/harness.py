"""The lm-evaluation-harness adapter (`pip install tfllm[eval]`): an `lm_eval` LM registered
as "tfllm", answering the harness's requests with `tfllm.eval.engine`.

    python -m tfllm.eval.harness --model tfllm --model_args workdir=runs/demo \\
        --tasks my_task --include_path my_tasks/

(`lm_eval`'s own command with the model registered; `export=PATH` instead of `workdir=`, and
`step=N` for an older checkpoint.) The bare `lm_eval --model tfllm` cannot find the model:
lm-eval 0.4.13 resolves `--model` from its own table or from classes already imported, and
reads no plugin entry points. From Python::

    import lm_eval
    from tfllm.eval.harness import TfllmLM
    lm_eval.simple_evaluate(model=TfllmLM(workdir="runs/demo"), tasks=["my_task"], ...)

The harness computes the metrics itself; tfllm.eval on the same task file gives the same
numbers (tests/test_eval_harness.py).
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from tfllm.errors import TfllmError
from tfllm.eval import run
from tfllm.eval.engine import model_engine
from tfllm.runs.trained import load_trained

_KINDS = {"loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until"}


@register_model("tfllm")
class TfllmLM(LM):
    """A tfllm workdir's checkpoint, or an export, as a harness model."""

    def __init__(self, workdir=None, export=None, step=None, batch_size=16, **_harness_options):
        super().__init__()
        if (workdir is None) == (export is None):
            raise TfllmError("give the tfllm model one of workdir=... or export=...")
        batch_size = 16 if batch_size in (None, "auto") else int(batch_size)
        if export is not None:
            self.engine, _ = run.export_engine(export, _KINDS, batch_size=batch_size)
        else:
            trained = load_trained(workdir, None if step is None else int(step))
            self.engine = model_engine(trained.model, trained.tokenizer_path,
                                       batch_size=batch_size)  # fmt: skip

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self.engine.loglikelihood([tuple(r.args) for r in requests], "harness")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        texts = [r.args[0] for r in requests]
        return [ll for ll, _ in self.engine.loglikelihood_rolling(texts, name="harness")]

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self.engine.generate_until([(r.args[0], r.args[1]) for r in requests], "harness")


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
