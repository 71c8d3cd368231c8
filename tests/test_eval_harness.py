"""The lm-evaluation-harness adapter: `simple_evaluate` on a local task file gives the numbers
tfllm.eval gives on the same file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import tiny_run
import yaml

lm_eval = pytest.importorskip("lm_eval")


def local_task(directory) -> str:
    """A harness task file in the harness's own form over a local JSONL file."""
    docs = [
        {"q": "x =", "options": [" 1", " 22", " abc def"], "gold": 1},
        {"q": "def", "options": [" f():", " (", " 1"], "gold": 0},
        {"q": "import", "options": [" os", " sys", " re\n"], "gold": 2},
        {"q": "class A:\n", "options": ["    pass", "    x = 1", "pass"], "gold": 0},
    ]
    data = directory / "local.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    task = {
        "task": "tfllm_local_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{q}}",
        "doc_to_choice": "{{options}}",
        "doc_to_target": "gold",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    (directory / "local.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return str(directory / "local.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run"))


@pytest.mark.slow  # lm-evaluation-harness end to end
def test_simple_evaluate_equals_tfllm_eval(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager

    from tfllm.eval import engine as engine_module
    from tfllm.eval.harness import TfllmLM
    from tfllm.eval.scoring import run_task
    from tfllm.eval.tasks import load_task_file

    local_task(tmp_path)
    model = TfllmLM(workdir=run.workdir, batch_size=4)
    out = lm_eval.simple_evaluate(
        model=model,
        tasks=["tfllm_local_mc"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        bootstrap_iters=10,  # a mean's stderr is analytic; only >0 asks for it
    )
    harness = out["results"]["tfllm_local_mc"]
    ours = run_task(model.engine, load_task_file(str(tmp_path / "local.yaml")))["metrics"]
    assert harness["acc,none"] == pytest.approx(ours["acc"][0])
    assert harness["acc_norm,none"] == pytest.approx(ours["acc_norm"][0])
    assert harness["acc_stderr,none"] == pytest.approx(ours["acc"][1])
    assert isinstance(model.engine, engine_module.Engine)


@pytest.mark.slow  # a subprocess
def test_harness_command_line_runs_the_registered_model(run, tmp_path):
    """`python -m tfllm.eval.harness` is lm-eval's own command line with "tfllm" registered
    (lm-eval 0.4 finds models only in its own table or by import: no plugin entry points)."""
    from tfllm.eval.engine import model_engine
    from tfllm.eval.scoring import run_task
    from tfllm.eval.tasks import load_task_file

    task = local_task(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "tfllm.eval.harness", "--model", "tfllm",
         "--model_args", f"workdir={run.workdir}", "--batch_size", "4", "--tasks", "tfllm_local_mc",
         "--include_path", str(tmp_path), "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (path,) = (tmp_path / "out").rglob("results_*.json")
    harness = json.loads(path.read_text())["results"]["tfllm_local_mc"]
    engine = model_engine(run.model, run.tokenizer_path, batch_size=4)  # the checkpoint's
    ours = run_task(engine, load_task_file(task))["metrics"]
    assert harness["acc,none"] == pytest.approx(ours["acc"][0])
    assert harness["acc_norm,none"] == pytest.approx(ours["acc_norm"][0])
