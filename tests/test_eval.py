"""tfllm.eval: the harness's request kinds on a tiny model and its export, against hand
computations with the in-process model and the exported `score` signature."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
import tiny_run
import yaml
from commands import run_main

from tfllm.errors import TfllmError
from tfllm.eval import run as eval_run
from tfllm.eval.engine import Progress, model_engine
from tfllm.eval.scoring import run_task
from tfllm.eval.tasks import Task
from tfllm.tokenizers.tokenizer import EOS_ID

TEXTS = ["def f(x):\n    return x + 1\n", "import os\n", "Hello, world! ünïcödé", "a"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run"))


@pytest.fixture(scope="module")
def engine(run):
    return model_engine(run.model, run.tokenizer_path, batch_size=4)


def hand_nll(run, engine, tokens: list[int], first: int = 1) -> float:
    """Sum of the NLLs of tokens[first:] (one window) with the Keras model, in float64."""
    logits = run.model(tf.constant([tokens[:-1]])).numpy()[0].astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -float(sum(logp[i - 1, tokens[i]] for i in range(first, len(tokens))))


def test_loglikelihoods_match_the_model_and_the_exported_score(run, engine):
    ours = [ll for ll, _ in engine.loglikelihood([("", text) for text in TEXTS])]
    hand = [-hand_nll(run, engine, [EOS_ID, *engine.encode(t)]) for t in TEXTS]
    score = tf.saved_model.load(run.version_dir).signatures["score"]
    exported = score(texts=tf.constant(TEXTS))["log_likelihood"].numpy()
    np.testing.assert_allclose(ours, hand, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(ours, exported, atol=1e-4, rtol=1e-5)
    # The export engine reads the same numbers through the `logits` signature.
    export, _ = eval_run.export_engine(run.export_dir, {"loglikelihood"}, batch_size=3)
    theirs = [ll for ll, _ in export.loglikelihood([("", text) for text in TEXTS])]
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-5)


def test_context_and_continuation_split_as_the_harness_does(run, engine):
    context, continuation = "def f(x): ", "return x"
    ((ll, _),) = engine.loglikelihood([(context, continuation)])
    whole = engine.encode("def f(x): return x")
    head = engine.encode("def f(x):")  # the trailing space moves to the continuation
    full = [EOS_ID, *whole]
    expected = hand_nll(run, engine, full) - hand_nll(run, engine, [EOS_ID, *head])
    # Scoring a prefix's tokens alone equals the same positions of the whole sequence (causal).
    assert ll == pytest.approx(-expected, abs=1e-4)


@pytest.mark.slow  # two full scoring passes
def test_shared_prefixes_give_the_unshared_loglikelihoods(run):
    long = "".join(f"x{i} = {i}\n" for i in range(12))  # near the 33-token limit
    questions = [
        ("def f(x):\n    return ", ["x + 1", "x", "f(x) * 2\n", "None"]),
        ("import", [" os", " sys"]),
        ("", ["a", "bc"]),  # an empty context: the prefix token alone
        ("class A: ", ["pass", " x = 1"]),  # its trailing space moves to the choices
        (long, ["y", "y = 1", "z = 2 + 3"]),
        ("Hello, ", ["world", "wörld!", "there", "you", "all"]),
        (long + long, ["a", "b"]),  # too long to share: scored whole, truncated
    ]
    requests = [(context, choice) for context, choices in questions for choice in choices]
    shared = model_engine(run.model, run.tokenizer_path, batch_size=3)
    whole = model_engine(run.model, run.tokenizer_path, batch_size=3, share_prefixes=False)
    ours, theirs = shared.loglikelihood(requests), whole.loglikelihood(requests)
    assert shared._shared._score.experimental_get_tracing_count() > 0
    np.testing.assert_allclose([ll for ll, _ in ours], [ll for ll, _ in theirs], atol=1e-4)
    assert [g for _, g in ours] == [g for _, g in theirs]
    assert shared.scored_tokens == whole.scored_tokens


def test_is_greedy_means_every_continuation_token_is_the_argmax(run, engine):
    context = [EOS_ID, *engine.encode("def f(x):")]
    tokens = list(context)
    for _ in range(4):  # the model's own greedy continuation, token by token
        tokens.append(int(run.model(tf.constant([tokens])).numpy()[0, -1].argmax()))
    greedy = tokens[len(context) :]
    other = [*greedy[:-1], (greedy[-1] + 1) % tiny_run.VOCAB]
    whole = engine.score_sequences(
        [(context + greedy, len(context)), (context + other, len(context))]
    )
    shared = engine._shared.score([(context, [greedy, other])], Progress("", 2, None))[0]
    assert [g for _, g in whole] == [g for _, g in shared] == [True, False]


def test_bpb_is_total_nll_over_bytes_and_ignores_batch_size_and_context(run, engine):
    long_text = "".join(f"value_{i} = {i * 7}\n" for i in range(40))  # many windows of 32
    docs = [{"text": t} for t in [*TEXTS, long_text]]
    task = Task("bpb", "loglikelihood_rolling", docs, doc_to_target="text")
    result = run_task(engine, task)["metrics"]
    # By hand: windows scoring 32 new tokens each, every window the 33 tokens ending at its
    # last target (the last one reaches back for a full context).
    nll = 0.0
    for doc in docs:
        tokens = [EOS_ID, *engine.encode(doc["text"])]
        for first in range(1, len(tokens), tiny_run.SEQ):
            end = min(first + tiny_run.SEQ, len(tokens))
            low = max(end - tiny_run.SEQ - 1, 0)
            nll += hand_nll(run, engine, tokens[low:end], first - low)
    total_bytes = sum(len(d["text"].encode("utf-8")) for d in docs)
    assert result["bits_per_byte"][0] == pytest.approx(nll / total_bytes / math.log(2), 1e-5)
    assert result["byte_perplexity"][0] == pytest.approx(math.exp(nll / total_bytes), 1e-5)
    other = model_engine(run.model, run.tokenizer_path, batch_size=3)
    assert run_task(other, task)["metrics"]["bits_per_byte"][0] == pytest.approx(
        result["bits_per_byte"][0], 1e-6
    )
    # Texts within one window score the same under any context rule; a long one does not.
    short = Task("s", "loglikelihood_rolling", docs[:-1], doc_to_target="text", rolling_context=16)
    base = Task("s", "loglikelihood_rolling", docs[:-1], doc_to_target="text")
    assert run_task(engine, short)["metrics"]["bits_per_byte"][0] == pytest.approx(
        run_task(engine, base)["metrics"]["bits_per_byte"][0], 1e-6
    )
    windows = engine.rolling_windows(long_text, context=16)
    scored = sum(len(tokens) - first for tokens, first in windows)
    assert len(windows) > 3 and scored == len(engine.encode(long_text))  # each token once
    for tokens, first in windows[1:]:
        assert first >= 16 and len(tokens) <= tiny_run.SEQ + 1


def test_acc_norm_divides_by_length_where_acc_does_not(run, engine):
    context = "x = "
    short, long = "1", "1234567890 + 1234567890"
    (ll_short, _), (ll_long, _) = engine.loglikelihood([(context, short), (context, long)])
    assert ll_short > ll_long  # acc picks the short one...
    assert ll_long / len(long) > ll_short / len(short)  # ...acc_norm the long one
    docs = [{"q": context, "choices": [short, long], "label": 1}]
    task = Task("mc", "multiple_choice", docs, doc_to_text="q", doc_to_choice="choices",
                doc_to_target="label", target_delimiter="",
                metrics=[{"metric": "acc"}, {"metric": "acc_norm"}])  # fmt: skip
    metrics = run_task(engine, task)["metrics"]
    assert metrics["acc"][0] == 0.0 and metrics["acc_norm"][0] == 1.0


def write_task(tmp_path, name: str, docs: list[dict], **spec) -> str:
    """A harness-style task file over a local JSONL file, in the harness's own form."""
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    task = {"task": name, "dataset_path": "json", "test_split": "test",
            "dataset_kwargs": {"data_files": {"test": str(data)}}, **spec}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return str(path)


@pytest.mark.slow  # eval commands
def test_command_on_workdir_and_export_gives_the_same_table_json_and_scalars(run, tmp_path):
    prompts = ["def main(", "import", "class A:\n    def "]
    greedy = run.generator.generate(prompts, max_new_tokens=6)
    gen_docs = [
        {"prompt": p, "answer": g.split("\n")[0]} for p, g in zip(prompts, greedy, strict=True)
    ]
    gen = write_task(tmp_path, "gen", gen_docs, output_type="generate_until",
                     doc_to_text="{{prompt}}", doc_to_target="answer",
                     generation_kwargs={"until": ["\n"], "max_gen_toks": 6})  # fmt: skip
    mc_docs = [{"q": "x =", "options": ["1", "2", "a b c"], "gold": "2"},
               {"q": "def", "options": [" f():", " (", " 1"], "gold": 0}]  # fmt: skip
    mc = write_task(tmp_path, "mc", mc_docs, output_type="multiple_choice", doc_to_text="q",
                    doc_to_choice="{{options}}", doc_to_target="gold",
                    metric_list=[{"metric": "acc"}, {"metric": "acc_norm"}])  # fmt: skip
    tasks = ",".join([gen, mc, "english_bpb"])
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    common = ["--tasks", tasks, "--limit", "3", "--batch_size", "4"]
    assert run_main("eval", ["--workdir", run.workdir, *common, "--output_dir", str(out_a)]) == 0
    assert run_main("eval", ["--export", run.export_dir, *common, "--output_dir", str(out_b)]) == 0
    a = json.loads((out_a / "results-step-0.json").read_text())
    b = json.loads((out_b / "results-v1.json").read_text())
    assert a["step"] == 0 and b["export_version"] == 1 and a["tfllm_version"]
    values = {(r["task"], r["metric"]): r["value"] for r in a["results"]}
    assert values[("gen", "exact_match")] == 1.0  # the generator's own greedy lines
    assert {(r["task"], r["metric"]) for r in a["results"]} >= {("mc", "acc"), ("mc", "acc_norm")}
    for ra, rb in zip(a["results"], b["results"], strict=True):
        assert (ra["task"], ra["metric"], ra["n"]) == (rb["task"], rb["metric"], rb["n"])
        assert ra["value"] == pytest.approx(rb["value"], rel=1e-4, abs=1e-4)
    events = [e for e in tf.compat.v1.train.summary_iterator(str(next(out_a.glob("events*"))))]
    tags = {v.tag for e in events for v in e.summary.value}
    assert "english_bpb/bits_per_byte" in tags and "mc/acc_norm" in tags


def test_config_and_set_give_the_workdir_and_tasks_with_the_usual_precedence(run, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"runtime: {{workdir: {run.workdir}}}\ntrain: {{eval_tasks: nosuch}}\n")
    # Without --config, the workdir's own config.yaml; --set wins over it.
    assert eval_run.resolve(run.workdir, None, None, [], ["train.eval_tasks=english_bpb"]) == (
        run.workdir, "english_bpb")  # fmt: skip
    # --config files, then --set, then --tasks / --workdir.
    assert eval_run.resolve(None, None, None, [str(overlay)], []) == (run.workdir, "nosuch")
    over = ["train.eval_tasks=next_line"]
    assert eval_run.resolve(None, None, None, [str(overlay)], over)[1] == "next_line"
    assert eval_run.resolve(None, None, "stdlib_bpb", [str(overlay)], over)[1] == "stdlib_bpb"
    with pytest.raises(TfllmError, match="model.num_layers=3: eval reads the model from"):
        eval_run.resolve(None, None, None, [str(overlay)], ["model.num_layers=3"])
    with pytest.raises(TfllmError, match="no tasks"):
        eval_run.resolve(run.workdir, None, None, [], [])
    # The command: the config names the workdir and the tasks.
    out = tmp_path / "out"
    argv = ["--config", str(overlay), "--set", "train.eval_tasks=english_bpb", "--limit", "2"]
    assert run_main("eval", [*argv, "--output_dir", str(out)]) == 0
    rows = json.loads((out / "results-step-0.json").read_text())["results"]
    assert {r["task"] for r in rows} == {"english_bpb"} and rows[0]["n"] == 2


@pytest.mark.slow  # eval commands
def test_bad_input_is_one_line_naming_file_line_or_signature(run, tmp_path, capsys):
    def fails(*argv: str) -> str:
        assert run_main("eval", ["--workdir", run.workdir, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    assert "stdlib_bpb" in fails("--tasks", "nosuchtask")
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: t\noutput_type: [unclosed\n")
    assert f"{broken}:" in fails("--tasks", str(broken))
    task = write_task(tmp_path, "t", [{"q": "a", "c": ["x", "y"], "g": 0}],
                      output_type="multiple_choice", doc_to_text="q", doc_to_choice="c",
                      doc_to_target="g")  # fmt: skip
    with open(tmp_path / "t.jsonl", "a") as f:
        f.write('{"q": "b", "c": \n')
    assert f"{tmp_path / 't.jsonl'}:2:" in fails("--tasks", task)
    # An export with `score` but no `logits` signature cannot answer multiple choice.
    from tfllm.serve.module import ServingModule

    module = ServingModule(run.model, run.tokenizer_path, f"{run.workdir}/config.yaml")
    partial = tmp_path / "partial" / "1"
    tf.saved_model.save(
        module, str(partial), signatures={"score": module.score.get_concrete_function()}
    )
    (tmp_path / "t.jsonl").write_text('{"q": "a", "c": ["x", "y"], "g": 0}\n')
    assert run_main("eval", ["--export", str(partial.parent), "--tasks", task]) == 2
    assert "no 'logits' signature" in capsys.readouterr().err


@pytest.mark.slow  # an eval command
def test_a_perplexity_beyond_float_range_is_inf_not_a_crash(run, tmp_path):
    """One long "word" of rare bytes: its word perplexity exceeds float64 (exp(nll) with nll
    in the thousands). The run still writes its JSON and scalars, the perplexity as inf."""
    text = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(400))
    task = write_task(tmp_path, "oneword", [{"text": text}], output_type="loglikelihood_rolling",
                      doc_to_target="text")  # fmt: skip
    out = tmp_path / "out"
    assert (
        run_main("eval", ["--workdir", run.workdir, "--tasks", task, "--output_dir", str(out)]) == 0
    )
    rows = json.loads((out / "results-step-0.json").read_text())["results"]
    values = {r["metric"]: r["value"] for r in rows}
    assert values["word_perplexity"] == float("inf") and 0 < values["bits_per_byte"] < 100
    events = tf.compat.v1.train.summary_iterator(str(next(out.glob("events*"))))
    scalars = {v.tag: tf.make_ndarray(v.tensor) for e in events for v in e.summary.value}
    assert np.isinf(scalars["oneword/word_perplexity"])
