"""Prepare's peak memory against corpus size, through the user's command.

    python -m benchmarks prepare-memory [--quick]

Writes synthetic JSON Lines corpora of 100 and 1000 MB (2 and 20 with --quick; ~4 KB
documents of words drawn from a fixed vocabulary, so nothing is deduplicated away), then runs
`python -m tfllm.prepare --set data.source=... --set data.workers=2` on each and samples the
resident memory of its whole process tree (the command and its worker processes, from
/proc/<pid>/status every 0.1 s). Reports the peak of the tree's sum, the command's own VmHWM,
seconds and MB/s per size: streaming means the peak does not grow with the corpus. One round
(`--rounds N` repeats each size N times).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

from benchmarks.common import summarize

WORDS = "def class return import self value items while yield lambda data file path".split()


def write_corpus(path: pathlib.Path, megabytes: int) -> None:
    rng = random.Random(megabytes)
    vocabulary = [w + str(n) for w in WORDS for n in range(300)]
    with open(path, "w") as f:
        for _ in range(megabytes * 250):  # ~4 KB documents
            f.write(json.dumps({"text": " ".join(rng.choices(vocabulary, k=600))}) + "\n")


def _rss_kb(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    children, pending = [pid], [pid]
    while pending:
        parent = pending.pop()
        try:
            with open(f"/proc/{parent}/task/{parent}/children") as f:
                found = [int(c) for c in f.read().split()]
        except OSError:
            found = []
        children += found
        pending += found
    return children


def measure(corpus: pathlib.Path, root: pathlib.Path, workers: int) -> dict:
    command = [sys.executable, "-m", "tfllm.prepare"]
    for setting in (
        f"data.source={corpus}",
        f"data.root={root}",
        f"data.name={corpus.stem}",
        f"data.workers={workers}",
        "data.tokenizer_sample_mb=4",
        "model.vocabulary_size=300",  # 256 byte pieces + the alphabet; 317 pieces at most
    ):
        command += ["--set", setting]
    started = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree_peak = own_peak = 0
    while process.poll() is None:
        tree_peak = max(tree_peak, sum(_rss_kb(p) for p in _tree(process.pid)))
        own_peak = max(own_peak, _rss_kb(process.pid, "VmHWM"))
        time.sleep(0.1)
    seconds = time.time() - started
    if process.returncode:
        raise SystemExit(process.stderr.read().decode()[-2000:])
    megabytes = corpus.stat().st_size / 1e6
    return {
        "corpus_mb": round(megabytes),
        "tree_peak_mb": round(tree_peak / 1024),
        "command_peak_mb": round(own_peak / 1024),
        "seconds": round(seconds, 1),
        "mb_per_s": round(megabytes / seconds, 2),
    }


WORKERS = 2


def case(rounds: int, quick: bool) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for size in (2, 20) if quick else (100, 1000):
            corpus = pathlib.Path(tmp, f"corpus{size}.jsonl")
            write_corpus(corpus, size)
            rows = [measure(corpus, pathlib.Path(tmp, "data", str(r)), WORKERS)
                    for r in range(rounds)]  # fmt: skip
            corpus.unlink()
            print(json.dumps(rows), file=sys.stderr, flush=True)
            figures[f"{rows[0]['corpus_mb']:,} MB"] = {
                "tree peak MB": summarize([r["tree_peak_mb"] for r in rows]),
                "command's VmHWM MB": summarize([r["command_peak_mb"] for r in rows]),
                "seconds": summarize([r["seconds"] for r in rows]),
                "MB/s": summarize([r["mb_per_s"] for r in rows]),
            }
    return {"figures": figures, "notes": [f"{WORKERS} workers"]}
