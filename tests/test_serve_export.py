"""The exported SavedModel: round trip in a fresh process, the TF1 loader TF Serving uses,
saved_model_cli, the warmup file, and bad requests answered in the graph."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tiny_run
from commands import run_main

from tfllm.errors import TfllmError
from tfllm.serve import export

PROMPTS = ["def ", "", "import numpy as np\nx = np.", "class A:\n"]
TOKEN_IDS = [[2, 17, 260, 5, 99], [2, 300, 301, 302, 4]]
ROOT = str(pathlib.Path(__file__).resolve().parent.parent)

# Runs in a fresh interpreter: nothing from this process (graphs, caches, resources) helps.
FRESH_PROCESS = """
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the SentencePiece ops the graph uses
loaded = tf.saved_model.load(sys.argv[1])
generate = loaded.signatures["serving_default"]
out = generate(prompts=tf.constant(json.loads(sys.argv[2])), max_new_tokens=tf.constant(6),
               temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(1.0),
               seed=tf.constant(0, tf.int64))
logits = loaded.signatures["logits"](token_ids=tf.constant(json.loads(sys.argv[3])))["logits"]
print(json.dumps({"completions": [c.decode() for c in out["completions"].numpy()],
                  "tokens": out["tokens"].numpy().tolist(), "logits": logits.numpy().tolist()}))
"""


def _python(*args) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run"))


@pytest.fixture(scope="module")
def session(run):
    """The export loaded as TF Serving loads it: a TF1 session, signatures by tensor name."""
    graph = tf.Graph()
    sess = tf.compat.v1.Session(graph=graph)
    with graph.as_default():  # only while loading: the tests themselves stay eager
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], run.version_dir)
    yield sess, meta_graph.signature_def
    sess.close()


def _run_signature(session, name: str, inputs: dict) -> dict:
    sess, signatures = session
    signature = signatures[name]
    feed = {signature.inputs[key].name: value for key, value in inputs.items()}
    fetch = {key: info.name for key, info in signature.outputs.items()}
    return sess.run(fetch, feed)


def test_layout(run):
    version = pathlib.Path(run.version_dir)
    assert (version / "saved_model.pb").is_file()
    assert (version / "assets" / "config.yaml").is_file()
    assert (version / "assets" / "tokenizer.model").read_bytes() == pathlib.Path(
        run.tokenizer_path
    ).read_bytes()
    assert (version / export.WARMUP_FILE).is_file()
    assert sorted(p.name for p in version.parent.iterdir()) == ["1"]  # no temporary left


def test_graph_needs_no_xla(run):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((pathlib.Path(run.version_dir) / "saved_model.pb").read_bytes())
    graph = saved_model.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
        assert "_XlaMustCompile" not in function.attr
    assert not [op for op in ops if op.startswith("Xla")]


@pytest.mark.slow  # a subprocess
def test_fresh_process_round_trip(run):
    out = json.loads(
        _python("-c", FRESH_PROCESS, run.version_dir, json.dumps(PROMPTS), json.dumps(TOKEN_IDS))
    )
    tokens, _ = run.generator.generate_ids(PROMPTS, max_new_tokens=6)
    np.testing.assert_array_equal(out["tokens"], tokens.numpy())
    assert out["completions"] == run.generator.generate(PROMPTS, max_new_tokens=6)
    expected = run.model(tf.constant(TOKEN_IDS)).numpy()
    difference = float(np.abs(np.array(out["logits"]) - expected).max())
    print(f"exported vs in-process logits: max abs difference {difference:.2e}")
    assert difference <= 1e-5


def test_tf1_loader_runs_every_signature(run, session):
    out = _run_signature(session, "serving_default", {"prompts": PROMPTS})  # defaults only
    default_tokens = min(run.cfg.train.sample_tokens, tiny_run.SEQ - 1)
    assert out["tokens"].shape == (len(PROMPTS), default_tokens)
    tokens, _ = run.generator.generate_ids(PROMPTS, max_new_tokens=default_tokens)
    np.testing.assert_array_equal(out["tokens"], tokens.numpy())
    logits = _run_signature(session, "logits", {"token_ids": TOKEN_IDS})["logits"]
    np.testing.assert_allclose(logits, run.model(tf.constant(TOKEN_IDS)), atol=1e-5)
    scores = _run_signature(session, "score", {"texts": ["def f(x):", ""]})
    assert scores["num_tokens"][1] == 0 and scores["log_likelihood"][1] == 0.0
    per_token = scores["token_loss"][0, : scores["num_tokens"][0]]
    np.testing.assert_allclose(-per_token.sum(), scores["log_likelihood"][0], rtol=1e-5)
    assert (per_token > 0).all()


@pytest.mark.slow  # a subprocess
def test_saved_model_cli_runs_logits(run, tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array(TOKEN_IDS, np.int32))
    # saved_model_cli itself, with tensorflow-text's ops registered first (as TF Serving has).
    cli = (
        "import sys, tensorflow_text; from tensorflow.python.tools.saved_model_cli import main;"
        " sys.argv[0] = 'saved_model_cli'; sys.exit(main())"
    )
    args = ["run", "--dir", run.version_dir, "--tag_set", "serve", "--signature_def", "logits"]
    out = _python("-c", cli, *args, "--inputs", f"token_ids={ids}", "--outdir", str(tmp_path))
    assert "logits" in out
    logits = np.load(tmp_path / "logits.npy")
    np.testing.assert_allclose(logits, run.model(tf.constant(TOKEN_IDS)), atol=1e-5)


def test_warmup_records_parse_and_run(run, session):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(run.version_dir, export.WARMUP_FILE)
    records = [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(path)
    ]
    assert {r.predict_log.request.model_spec.signature_name for r in records} == {
        "serving_default",
        "generate_batched",
        "score",
        "logits",
    }
    for record in records:
        request = record.predict_log.request
        assert request.model_spec.name == "tiny"
        inputs = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        outputs = _run_signature(session, request.model_spec.signature_name, inputs)
        assert all(value.size > 0 for value in outputs.values())


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"prompts": np.array([], dtype=object)}, "prompts must hold at least one string"),
        ({"prompts": [b"ok", b"\xff\xfe bad"]}, "prompts must be valid UTF-8"),
        ({"prompts": ["a"], "max_new_tokens": 0}, "max_new_tokens must be in [1, 31]"),
        ({"prompts": ["a"], "max_new_tokens": 10**9}, "max_new_tokens must be in [1, 31]"),
        ({"prompts": ["a"], "top_k": -1}, "top_k must be in [0, 512]"),
        ({"prompts": ["a"], "top_p": 2.0}, "top_p must be in (0, 1]"),
        ({"prompts": ["a"], "temperature": float("nan")}, "temperature must be in [0, 100]"),
    ],
)
def test_bad_requests_are_invalid_argument(session, inputs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
        _run_signature(session, "serving_default", inputs)


def test_bad_logits_ids_are_invalid_argument(session):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"token_ids must be in \[0, 512\)"):
        _run_signature(session, "logits", {"token_ids": [[2, 512]]})


@pytest.mark.parametrize("prompt", ["", "x" * 100_000])
def test_empty_and_huge_prompts_complete(session, prompt):
    """An empty prompt starts a new document; a huge one keeps only its last tokens."""
    out = _run_signature(session, "serving_default", {"prompts": [prompt], "max_new_tokens": 5})
    assert out["tokens"].shape == (1, 5)
    assert out["completions"][0].decode("utf-8")  # valid UTF-8 text


def test_existing_version_is_refused(run):
    assert export.next_version(run.export_dir) == 2
    with pytest.raises(TfllmError, match="already exists"):
        export.export(run.workdir, run.export_dir, version=1)


@pytest.mark.slow  # two export commands
def test_command_line_writes_the_next_version(run, tmp_path):
    base = tmp_path / "export" / "cli"
    assert run_main("export", ["--workdir", run.workdir, "--export_dir", str(base)]) == 0
    assert run_main("export", ["--workdir", run.workdir, "--export_dir", str(base)]) == 0
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"]
