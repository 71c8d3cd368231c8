"""The Beam runner of prepare: the same shards, manifest and dropped sample as the local one.

Runs with Beam's in-process FnApiRunner (the default Prism runner downloads a binary). Needs
the `tfllm[beam]` extra (also in `test`); skipped where apache_beam is not installed.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys

import pytest
from _data_helpers import small_config
from commands import one_error, run_main, run_subprocess
from test_corpus_scale import _docs, _shard_bytes

from tfllm.corpus import prepare

pytest.importorskip(
    "apache_beam",
    reason="apache-beam (the optional tfllm[beam] extra) is not installed",
)


def _dataset(cfg) -> tuple:
    directory = pathlib.Path(prepare.data_dir(cfg))
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop("name")
    return (
        _shard_bytes(cfg, {"splits": manifest["splits"]}),
        manifest,
        (directory / prepare.DROPPED_SAMPLE).read_text(),
        sorted(p.name for p in directory.iterdir()),
    )


def test_beam_pipeline_and_local_runner_write_identical_datasets(tmp_path):
    docs = _docs(150, words=60)
    # An exact duplicate, a near duplicate (one word more), a document too short.
    docs += [docs[3], docs[7] + " tail", "short"]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    settings = ["data.near_dedup=true", "data.records_per_shard=40", "data.min_doc_chars=20"]
    local = small_config(tmp_path, str(corpus), "local", *settings, "data.workers=2")
    prepare.prepare(local)

    beam = small_config(tmp_path, str(corpus), "beam", *settings)
    overrides = [f"data.source={corpus}", f"data.root={tmp_path}", "data.name=beam", *settings]
    overrides += ["data.seq_len=16", "data.records_per_shard=40", "data.val_fraction=0.2"]
    overrides += ["data.tokenizer_sample_mb=1", "model.vocabulary_size=320"]
    argv = [arg for o in overrides for arg in ("--set", o)]
    argv += ["--runner", "beam", "--beam_options=--runner=FnApiRunner"]
    assert run_main("prepare", argv) == 0

    built_local, built_beam = _dataset(local), _dataset(beam)
    assert built_beam == built_local
    assert len(built_local[0]) > 2  # several shards per split
    cleaning = built_local[1]["cleaning"]
    assert (cleaning["dropped_duplicate"], cleaning["dropped_near_duplicate"]) == (1, 1)
    assert cleaning["dropped_short"] == 1


def _beam_argv(tmp_path, source, name: str) -> list[str]:
    overrides = [f"data.source={source}", f"data.root={tmp_path}", f"data.name={name}"]
    overrides += ["data.seq_len=16", "data.records_per_shard=4000", "data.tokenizer_sample_mb=1"]
    overrides += ["model.vocabulary_size=320"]
    argv = [arg for o in overrides for arg in ("--set", o)]
    return [*argv, "--runner", "beam", "--beam_options=--runner=FnApiRunner"]


def test_a_beam_run_takes_the_datasets_lock(tmp_path):
    dataset = tmp_path / "held"
    dataset.mkdir()
    holder = f'{{"pid": {os.getpid()}, "host": "{os.uname().nodename}", "since": 0}}'
    (dataset / "prepare.lock").write_text(holder)
    result = run_subprocess("prepare", *_beam_argv(tmp_path, tmp_path, "held"))
    one_error(result, f"dataset {dataset} is in use by process {os.getpid()}")
    assert sorted(p.name for p in dataset.iterdir()) == ["prepare.lock"]


@pytest.mark.slow  # a Beam pipeline in a subprocess
def test_disk_full_in_a_beam_run_is_one_line_and_leaves_no_work_files(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(400, words=80)))
    # The tokenizer (about 5 KB) fits; the batch files and a shard of 4000 windows do not.
    limit = 32 << 10
    result = subprocess.run(
        [sys.executable, "-m", "tfllm.prepare", *_beam_argv(tmp_path, corpus, "full")],
        capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )  # fmt: skip
    one_error(result, "out of disk space while writing the dataset", "a Beam run starts over")
    left = sorted(p.name for p in (tmp_path / "full").iterdir())
    assert not [n for n in left if n.endswith((".tmp", ".shard")) or n == ".beam"], left
    assert "manifest.json" not in left
