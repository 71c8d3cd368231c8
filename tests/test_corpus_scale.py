"""Prepare at scale: worker-count independence, formats, mixtures, MinHash and filters, bad
input, restart after SIGKILL, and the two tokenizers agreeing."""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import zstandard
from _data_helpers import WORDS, small_config, write_corpus

from tfllm.corpus import prepare
from tfllm.data import records
from tfllm.errors import DataError
from tfllm.tokenizers import tokenizer


def _docs(count: int, seed: int = 0, words: int = 80) -> list[str]:
    rng = random.Random(seed)
    return [
        f"doc {i} " + " ".join(rng.choice(WORDS) + str(rng.randint(0, 99)) for _ in range(words))
        for i in range(count)
    ]


def _shard_bytes(cfg, manifest) -> dict[str, str]:
    directory = prepare.data_dir(cfg)
    return {
        s["file"]: records.file_sha256(f"{directory}/{s['file']}")
        for info in manifest["splits"].values()
        for s in info["shards"]
    }


def test_one_and_two_workers_write_identical_shards(tmp_path):
    write_corpus(tmp_path / "text", files=40)
    built = []
    for workers in (1, 2):
        cfg = small_config(
            tmp_path, str(tmp_path / "text"), f"w{workers}", f"data.workers={workers}"
        )
        manifest = prepare.prepare(cfg)
        built.append((_shard_bytes(cfg, manifest), manifest))
    assert built[0][0] == built[1][0] and len(built[0][0]) > 2
    assert built[0][1]["splits"] == built[1][1]["splits"]


# A user's script with the call at its top level: each spawned worker imports it again.
_UNGUARDED = """
import sys
import tfllm
tfllm.prepare(tfllm.load_config(overrides=sys.argv[1:]))
print("prepared")
"""


@pytest.mark.slow  # a prepare subprocess
def test_a_script_without_a_main_guard_gets_one_error_not_a_hang(tmp_path):
    write_corpus(tmp_path / "text", files=12)
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED)
    overrides = [
        f"data.source={tmp_path / 'text'}",
        f"data.root={tmp_path}",
        "data.name=ug",
        "data.workers=2",
        "data.tokenizer_sample_mb=1",
        "model.vocabulary_size=320",
    ]
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, str(script), *overrides],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0 and "prepared" not in done.stdout
    assert "data.workers=2: a worker process exited" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    # The workers ended quietly: no traceback of theirs, only the script's own one.
    assert done.stderr.count("Traceback") == 1, done.stderr[-3000:]


def test_sentencepiece_library_matches_the_in_graph_op(tmp_path):
    """Workers tokenize with the sentencepiece library; training and serving use the
    tensorflow-text op: the same model must give the same ids."""
    write_corpus(tmp_path / "text", files=10)
    cfg = small_config(tmp_path, str(tmp_path / "text"))
    prepare.prepare(cfg)
    path = f"{prepare.data_dir(cfg)}/{records.TOKENIZER}"
    import sentencepiece as spm

    library = spm.SentencePieceProcessor(model_file=path)
    texts = _docs(20) + ["ünïcode ✓ 中文 \t tabs\n\nnewlines  ", "x" * 5000]
    op = tokenizer.load_tokenizer(path).tokenize(tf.constant(texts)).to_list()
    assert library.encode(texts) == op


def _write_formats(directory: pathlib.Path, texts: list[str]) -> dict[str, str]:
    """The same documents in every format; returns source -> name."""
    directory.mkdir()
    lines = "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts))
    (directory / "d.jsonl").write_text(lines)
    (directory / "d.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (directory / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    table = pa.table({"n": list(range(len(texts))), "text": texts})
    pq.write_table(table, directory / "d.parquet", row_group_size=7)
    import datasets

    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(directory / "saved"))
    return {
        str(directory / name): name
        for name in ("d.jsonl", "d.jsonl.gz", "d.jsonl.zst", "d.parquet", "saved")
    }


def test_every_format_gives_the_same_documents(tmp_path):
    from tfllm.corpus.formats import BadInput
    from tfllm.corpus.sources import read_raw

    texts = _docs(30)
    for source in _write_formats(tmp_path / "f", texts):
        bad = BadInput("error", collections.Counter())
        got = [doc.data.decode() for doc in read_raw(source, "text", "", [bad])]
        assert got == texts, source


def test_mixture_follows_its_weights_and_counts_per_source(tmp_path):
    for name, seed in (("a", 1), ("b", 2)):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in _docs(1500, seed, words=20))
        (tmp_path / f"{name}.jsonl").write_text(lines)
    source = f"{tmp_path}/a.jsonl:0.7,{tmp_path}/b.jsonl:0.3"
    manifest = prepare.prepare(small_config(tmp_path, source, "mix"))
    counts = [entry["documents"] for entry in manifest["sources"].values()]
    # a (weight 0.7) runs out first, after its 1500 documents: about 2140 drawn, 70% from a.
    share = counts[0] / sum(counts)
    assert abs(share - 0.7) < 0.03, counts  # 3 binomial sd at n = 2140
    assert counts[0] == 1500 and sum(counts) == manifest["cleaning"]["documents"]
    assert [entry["weight"] for entry in manifest["sources"].values()] == [0.7, 0.3]


def _edit(text: str, rng: random.Random, share: float) -> str:
    words = text.split()
    for _ in range(max(1, int(len(words) * share))):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def test_minhash_removes_planted_near_duplicates_and_filters_drop_planted(tmp_path):
    rng = random.Random(7)
    originals = _docs(120, seed=3, words=300)
    near = [_edit(originals[i], rng, 0.02) for i in range(0, 120, 4)]  # 30 edits of 2%
    planted = {
        "dropped_low_alnum": ["%$#@! ^&*() " * 40 + "ab"],
        "dropped_long_line": ["word " * 2000],
        "dropped_repeated_lines": ["same line here\n" * 30 + "other\n"],
    }
    texts = originals + near + [t for group in planted.values() for t in group]
    rng.shuffle(texts)
    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (tmp_path / "c.jsonl").write_text(lines)
    cfg = small_config(
        tmp_path,
        str(tmp_path / "c.jsonl"),
        "near",
        "data.near_dedup=true",
        "data.filter_min_alnum=0.5",
        "data.filter_max_line_chars=5000",
        "data.filter_max_repeated_lines=0.5",
    )
    manifest = prepare.prepare(cfg)
    cleaning = manifest["cleaning"]
    assert cleaning["dropped_near_duplicate"] == 30
    assert cleaning["documents"] == 120
    for reason, group in planted.items():
        assert cleaning[reason] == len(group)
    sample = pathlib.Path(prepare.data_dir(cfg), prepare.DROPPED_SAMPLE).read_text().splitlines()
    reasons = [json.loads(line)["reason"] for line in sample]
    assert reasons.count("dropped_near_duplicate") == 20  # data.dropped_sample
    assert {"dropped_low_alnum", "dropped_long_line", "dropped_repeated_lines"} <= set(reasons)


def test_bad_input_is_named_and_counted_or_stops(tmp_path):
    texts = _docs(40)
    good = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (tmp_path / "ok.jsonl").write_text(good + "[1, 2]\n")
    whole = zstandard.ZstdCompressor().compress(good.encode())
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[: len(whole) // 2])
    pq.write_table(pa.table({"body": texts}), tmp_path / "nocol.parquet")
    source = ",".join(str(tmp_path / n) for n in ("ok.jsonl", "cut.jsonl.zst", "nocol.parquet"))
    manifest = prepare.prepare(small_config(tmp_path, source, "bad"))
    assert manifest["cleaning"]["dropped_bad_json"] == 1
    assert manifest["cleaning"]["bad_files"] == 2
    for name, match in (
        ("ok.jsonl", r"ok.jsonl:41: a JSON list, not an object"),
        ("cut.jsonl.zst", r"cut.jsonl.zst: unreadable after line \d+"),
        ("nocol.parquet", r"nocol.parquet: no column 'text' .*columns: \['body'\]"),
    ):
        strict = small_config(tmp_path, str(tmp_path / name), "s", "data.on_bad_input=error")
        with pytest.raises(DataError, match=match):
            prepare.prepare(strict)


@pytest.mark.slow  # prepare processes killed and restarted
def test_restart_after_sigkill_keeps_finished_shards(tmp_path):
    write_corpus(tmp_path / "text", files=800, words=400)
    sets = [
        f"--set=data.source={tmp_path / 'text'}",
        f"--set=data.root={tmp_path}",
        "--set=data.seq_len=16",
        "--set=data.records_per_shard=256",
        "--set=data.val_fraction=0.2",
        "--set=data.tokenizer_sample_mb=1",
        "--set=data.workers=1",
        "--set=model.vocabulary_size=320",
        "--set=model.max_sequence_length=64",
    ]
    command = [sys.executable, "-m", "tfllm.prepare", "--force"]
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
    directory = tmp_path / "killed"
    process = subprocess.Popen([*command, *sets, "--set=data.name=killed"], env=env)
    state = directory / ".prepare" / "state.npz"
    deadline = time.time() + 300
    while not (state.exists() and len(list(directory.glob(".train-*.shard"))) >= 3):
        assert process.poll() is None and time.time() < deadline, "prepare ended too soon"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (directory / records.MANIFEST).exists()
    before = {p.name: p.stat().st_mtime_ns for p in directory.glob(".train-*.shard")}
    resumed = [*command[:-1], *sets, "--set=data.name=killed"]  # no --force: continue
    subprocess.run(resumed, env=env, check=True, timeout=600)
    manifest = records.read_manifest(str(directory))
    # Renamed, not rewritten: every shard finished before the kill keeps its modification time.
    shards = manifest["splits"]["train"]["shards"]
    after = [(directory / shard["file"]).stat().st_mtime_ns for shard in shards]
    assert set(before.values()) <= set(after)
    subprocess.run([*command, *sets, "--set=data.name=whole"], env=env, check=True, timeout=600)
    whole = records.read_manifest(str(tmp_path / "whole"))
    assert whole["splits"] == manifest["splits"] and whole["cleaning"] == manifest["cleaning"]
    assert not (directory / ".prepare").exists()
    assert np.all([not p.name.endswith(".shard") for p in directory.iterdir()])


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child of a big
# pytest process would report the parent's peak (seen: 3.5 GB for any corpus size).
_PEAK_RSS = """
import re, sys
from tfllm.config import load_config
from tfllm.corpus import prepare
prepare.prepare(load_config([], sys.argv[1:]))
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


@pytest.mark.slow  # prepare subprocesses on two corpora
def test_memory_is_flat_in_corpus_size(tmp_path):
    """Peak RSS on 40 MB equals that on 4 MB within a few percent, under data.max_memory_mb.
    (The issue asks 1 GB vs 100 MB; at this machine's ~4 MB/s that is minutes, so 10x less.)"""
    rng = random.Random(0)
    vocabulary = [w + str(n) for w in WORDS for n in range(30)]
    peaks = {}
    for megabytes in (4, 40):
        path = tmp_path / f"c{megabytes}.jsonl"
        with open(path, "w") as f:
            for _ in range(megabytes * 250):  # ~4 KB documents
                f.write(json.dumps({"text": " ".join(rng.choices(vocabulary, k=600))}) + "\n")
        overrides = [
            f"data.source={path}",
            f"data.root={tmp_path}",
            f"data.name=m{megabytes}",
            "data.workers=1",
            "data.max_memory_mb=1536",
            # Prepare holds up to data.scatter_shards unfinished shards per split: small shards
            # reach that bound on both corpora, the larger one must not need more.
            "data.records_per_shard=256",
            "data.tokenizer_sample_mb=1",
            "model.vocabulary_size=320",
        ]
        env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS, *overrides],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[megabytes] = int(done.stdout.split()[-1]) / 1024  # MB
    assert peaks[40] < 1536, peaks
    assert abs(peaks[40] - peaks[4]) / peaks[4] < 0.05, peaks
