"""The README's journey, command by command, as a user types it: each step a fresh process.

prepare -> train -> train further (resumes) -> generate -> export -> eval (the checkpoint and
the export score alike) -> a process that imports only tensorflow and tensorflow_text serves the
export (TF2 signatures and the TF1 session loader that
TF Serving uses). Then the same on a 17-document corpus, and the readers' answers to a damaged or
missing checkpoint. Every command must print tfllm's own lines only.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # each command a fresh process

PROMPT = "def main("
# Small enough for CI, still the built-in corpus and the Quickstart's default config (no
# --config: `python -m tfllm.train` trains configs/tiny.yaml).
SMALL = [
    "--set",
    "data.name=journey",
    "--set",
    "data.tokenizer_sample_mb=1",
    "--set",
    "model.vocabulary_size=512",
    "--set",
    "train.eval_every=10",
    "--set",
    "train.checkpoint_every=10",
    "--set",
    "train.eval_batches=2",
    "--set",
    "train.steps_per_loop=10",
    "--set",
    "train.sample_tokens=8",
    "--set",
    "runtime.workdir=runs/journey",
]
# Native log lines (absl format, any level) and Python-side TensorFlow warnings.
NOISE = re.compile(r"Traceback|WARNING:tensorflow|^[IWEF]\d{4} |LOG\(INFO\)", re.M)

SERVE = """
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the SentencePiece ops; tfllm is not imported
assert "tfllm" not in sys.modules
path, prompt = sys.argv[1], sys.argv[2]
loaded = tf.saved_model.load(path)
out = loaded.signatures["serving_default"](
    prompts=tf.constant([prompt]), max_new_tokens=tf.constant(8), temperature=tf.constant(0.0),
    top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0, tf.int64))
score = loaded.signatures["score"](texts=tf.constant([prompt]))
logits = loaded.signatures["logits"](token_ids=tf.constant([[2, 10, 11]]))["logits"]
graph = tf.Graph()
with tf.compat.v1.Session(graph=graph) as sess:
    with graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
    sig = meta.signature_def["serving_default"]
    tf1 = sess.run(sig.outputs["completions"].name, {
        sig.inputs["prompts"].name: [prompt], sig.inputs["max_new_tokens"].name: 8,
        sig.inputs["temperature"].name: 0.0})
print(json.dumps({
    "completion": out["completions"].numpy()[0].decode(),
    "tf1_completion": tf1[0].decode(),
    "log_likelihood": float(score["log_likelihood"].numpy()[0]),
    "logits_shape": list(logits.shape)}))
"""


def _user_environment() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def _run(cwd: pathlib.Path, times: dict, label: str, *argv: str, code: int = 0):
    """`python *argv` in `cwd` as a user types it (argv: "-m", "tfllm.<command>", flags)."""
    started = time.time()
    done = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        # Without conftest's TF_CPP_MIN_LOG_LEVEL: the command itself must keep TF quiet.
        env={**_user_environment(), "TFLLM_VERBOSE": "0"},
        timeout=900,
    )
    times[label] = time.time() - started
    output = done.stdout + done.stderr
    assert done.returncode == code, f"{label}: exit {done.returncode}\n{output[-3000:]}"
    noise = NOISE.findall(output)
    assert not noise, f"{label} printed native or TensorFlow log lines:\n{output[-3000:]}"
    return done


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    """The journey on the built-in corpus, run once; later tests read its workdir."""
    cwd = tmp_path_factory.mktemp("journey")
    times: dict[str, float] = {}
    _run(cwd, times, "prepare", "-m", "tfllm.prepare", *SMALL)
    first = _run(cwd, times, "train 10", "-m", "tfllm.train", *SMALL, "--set", "train.steps=10")
    again = _run(cwd, times, "train 20", "-m", "tfllm.train", *SMALL, "--set", "train.steps=20")
    generated = _run(
        cwd, times, "generate", "-m", "tfllm.generate", "--workdir", "runs/journey",
        "--prompt", PROMPT, "--max_new_tokens", "8", "--temperature", "0",
    )  # fmt: skip
    _run(
        cwd,
        times,
        "export",
        "-m",
        "tfllm.export",
        "--workdir",
        "runs/journey",
        "--export_dir",
        "export/j",
    )
    # The model is judged the same way from its checkpoint and from its export.
    evaluate = ("-m", "tfllm.eval", "--tasks", "stdlib_bpb", "--limit", "4")
    _run(cwd, times, "eval workdir", *evaluate, "--workdir", "runs/journey")
    _run(cwd, times, "eval export", *evaluate, "--export", "export/j")
    started = time.time()
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(cwd / "export/j/1"), PROMPT],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    times["serve"] = time.time() - started
    assert served.returncode == 0, served.stderr[-3000:]
    print("journey wall times: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()))
    return {
        "cwd": cwd,
        "first": first.stderr,
        "again": again.stdout + again.stderr,
        "generated": generated.stdout,
        "served": json.loads(served.stdout.strip().splitlines()[-1]),
    }


def test_train_resumes_where_it_stopped(journey):
    from tfllm.config import load_config

    written = load_config([str(journey["cwd"] / "runs/journey/config.yaml")])
    tiny = load_config(["tiny"], [a for a in SMALL if a != "--set"])
    assert written.model == tiny.model and written.train.learning_rate == tiny.train.learning_rate
    assert "starting from scratch" in journey["first"]
    assert re.search(r"resumed from \S+ckpt-10 at step 10", journey["again"])
    assert "done: step 20" in journey["again"]


def test_the_export_serves_what_generate_printed(journey):
    line = journey["generated"].rstrip("\n")
    assert line.startswith(PROMPT)
    served = journey["served"]
    assert PROMPT + served["completion"] == line
    assert served["tf1_completion"] == served["completion"]
    assert served["log_likelihood"] < 0
    assert served["logits_shape"] == [1, 3, 512]


def test_eval_scores_the_checkpoint_and_its_export_alike(journey):
    def bpb(path):
        rows = json.loads(path.read_text())["results"]
        return {r["metric"]: r["value"] for r in rows if r["task"] == "stdlib_bpb"}

    from_checkpoint = bpb(journey["cwd"] / "runs/journey/eval/results-step-20.json")
    from_export = bpb(journey["cwd"] / "export/j/eval/results-v1.json")
    assert 0 < from_checkpoint["bits_per_byte"] < 8
    assert from_export == pytest.approx(from_checkpoint, rel=1e-5)


def test_the_files_the_readme_lists_exist(journey):
    cwd = journey["cwd"]
    data = cwd / "tfrecords" / "journey"
    assert (data / "tokenizer.model").is_file()
    manifest = json.loads((data / "manifest.json").read_text())
    shards = [s["file"] for split in manifest["splits"].values() for s in split["shards"]]
    assert shards and all((data / name).is_file() for name in shards)
    run = cwd / "runs" / "journey"
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "ckpt-20.done.json").is_file()
    assert list((run / "train").glob("events.out.tfevents.*"))
    version = cwd / "export" / "j" / "1"
    for name in ("saved_model.pb", "assets/tokenizer.model", "assets/config.yaml"):
        assert (version / name).is_file(), name
    assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()


def test_damaged_newest_checkpoint_falls_back_with_a_reason(journey, tmp_path):
    import shutil

    cwd = tmp_path / "copy"
    shutil.copytree(journey["cwd"], cwd)
    data = next((cwd / "runs/journey/checkpoints").glob("ckpt-20.data-*"))
    data.write_bytes(data.read_bytes()[:-7])  # truncated: the marker's size no longer matches
    times: dict[str, float] = {}
    for label, command, args in (
        ("generate", "tfllm.generate", ["--prompt", PROMPT, "--max_new_tokens", "2"]),
        ("export", "tfllm.export", ["--export_dir", "export/fallback"]),
    ):
        done = _run(cwd, times, label, "-m", command, "--workdir", "runs/journey", *args)
        assert "skipping ckpt-20" in done.stderr and "bytes, the marker says" in done.stderr
    assert (cwd / "export/fallback/1/saved_model.pb").is_file()
    assert (cwd / "runs/journey/checkpoints/ckpt-20.index").is_file()  # a reader moves nothing


def test_no_checkpoint_is_one_line_and_exit_2(journey, tmp_path):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    (workdir / "config.yaml").write_text((journey["cwd"] / "runs/journey/config.yaml").read_text())
    for command, args in (
        ("generate", ["--prompt", "x"]),
        ("export", ["--export_dir", str(tmp_path / "e")]),
    ):
        done = _run(
            tmp_path,
            {},
            command,
            "-m",
            f"tfllm.{command}",
            "--workdir",
            str(workdir),
            *args,
            code=2,
        )
        assert done.stderr.strip().count("\n") == 0
        assert done.stderr.startswith(f"error: no checkpoint in {workdir}/checkpoints: train first")
    assert not (tmp_path / "e").exists()


LICENSES = [
    "Permission is hereby granted, free of charge, to any person obtaining a copy",
    "Licensed under the Apache License, Version 2.0 (the License); you may not use",
    "Redistribution and use in source and binary forms, with or without modification",
    "This program is free software: you can redistribute it and/or modify it under",
    "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED",
]


def test_a_17_document_corpus_prepares_and_trains(tmp_path):
    corpus = tmp_path / "licenses"
    corpus.mkdir()
    for i in range(17):
        lines = [
            LICENSES[(i + j) % len(LICENSES)] + f" (licence {i}, clause {j})." for j in range(40)
        ]
        (corpus / f"LICENSE-{i:02d}.txt").write_text("\n".join(lines) + "\n")
    args = [
        "--set", "data.name=lic", "--set", "data.source=licenses/*",
        "--set", "model.vocabulary_size=320", "--set", "data.seq_len=64",
        "--set", "model.max_sequence_length=64", "--set", "train.steps=4",
        "--set", "train.eval_every=4", "--set", "train.eval_batches=1",
        "--set", "train.global_batch_size=4", "--set", "train.sample_tokens=4",
        "--set", "runtime.workdir=runs/lic",
    ]  # fmt: skip
    times: dict[str, float] = {}
    prepared = _run(tmp_path, times, "prepare", "-m", "tfllm.prepare", *args)
    assert re.search(
        r"gave no val document among 17: \S*LICENSE-\d\d\.txt moved to val", prepared.stderr
    )
    manifest = json.loads((tmp_path / "tfrecords/lic/manifest.json").read_text())
    assert manifest["splits"]["val"]["documents"] == 1
    trained = _run(tmp_path, times, "train", "-m", "tfllm.train", *args)
    assert "done: step 4" in trained.stdout


def test_one_document_is_not_enough_and_says_which_setting(tmp_path):
    (tmp_path / "only.txt").write_text("one document\n")
    done = _run(
        tmp_path, {}, "prepare", "-m", "tfllm.prepare",
        "--set", f"data.source={tmp_path}/only.txt", "--set", "data.name=one", code=2,
    )  # fmt: skip
    assert "gave 1 usable document(s)" in done.stderr and "data.min_doc_chars" in done.stderr
