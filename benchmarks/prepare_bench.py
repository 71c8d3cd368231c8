"""Prepare throughput: tfllm's streaming prepare on 1 and 2 workers vs a Megatron-style peer.

    python -m benchmarks prepare [--rounds 3] [--quick]

The corpus is the standard library's .py files as JSON Lines (the first 10 MB; 1 MB with
--quick). The peer is what
Megatron-LM's `preprocess_data.py` does: a process pool of `sentencepiece` encoders over the
documents (json.loads + encode + EOS), the main process writing the token arrays to one binary
file; it gets the tokenizer tfllm trained, so both encode the same text with the same model.
tfllm is timed on its streaming pass (read, clean, dedup, tokenize, pack, write TFRecords and
sha256) - the pass the peer does; the sampling pass and tokenizer training are reported apart.
Contenders alternate in each round; medians and the spread (min-max) are recorded, of the rates
and of the ratios within each round, with the load average (the machine is shared).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import summarize

# tfllm (and TensorFlow) are imported inside the functions: spawned pool workers import this
# module again, and must stay light.


def write_corpus(path: pathlib.Path, megabytes: float) -> None:
    """The interpreter's standard library (distinct real code, ~35 MB), one file per line."""
    from tfllm.data.inputs import stdlib_files

    written = 0
    with open(path, "w") as f:
        for _, file in stdlib_files():
            if written >= megabytes * 1e6:
                break
            line = json.dumps({"text": file.read_text(errors="replace")}) + "\n"
            f.write(line)
            written += len(line)


_SP = {}


def _init(model_file: str) -> None:
    import sentencepiece as spm

    _SP["sp"] = spm.SentencePieceProcessor(model_file=model_file)


def _encode(line: str) -> np.ndarray:
    ids = _SP["sp"].encode(json.loads(line)["text"])
    return np.array([*ids, 2], np.int32)


def peer(corpus: pathlib.Path, model_file: str, out: pathlib.Path, workers: int) -> tuple:
    """Megatron-style: Pool.imap(encode, lines, chunksize=32), main writes the arrays.
    Returns (seconds, this process's CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    with open(corpus) as f, open(out, "wb") as sink:
        if workers == 1:
            _init(model_file)
            for ids in map(_encode, f):
                sink.write(ids.tobytes())
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=_init, initargs=(model_file,)) as pool:
                for ids in pool.imap(_encode, f, chunksize=32):
                    sink.write(ids.tobytes())
    return time.perf_counter() - started, time.process_time() - cpu


def tfllm_prepare(corpus: pathlib.Path, root: pathlib.Path, name: str, workers: int) -> dict:
    from tfllm.config import load_config
    from tfllm.corpus import prepare

    cfg = load_config(
        [],
        [
            f"data.source={corpus}",
            f"data.root={root}",
            f"data.name={name}",
            f"data.workers={workers}",
            "data.seq_len=128",
            "data.tokenizer_sample_mb=2",
            "model.vocabulary_size=4096",
        ],
    )
    timings: dict = {}
    prepare.prepare(cfg, timings=timings)
    return timings


def case(rounds: int, quick: bool) -> dict:
    megabytes = 1 if quick else 10
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    try:
        corpus = tmp / "corpus.jsonl"
        write_corpus(corpus, megabytes)
        size = corpus.stat().st_size / 1e6
        tfllm_prepare(corpus, tmp, "warm", 1)  # the tokenizer the peer uses
        model = str(tmp / "warm" / "tokenizer.model")
        load = [os.getloadavg()[0]]  # the machine is shared: say how busy it was
        rates: dict[str, list[float]] = {}
        sampling = []
        for r in range(rounds):
            for workers in (1, 2):
                seconds, cpu = peer(corpus, model, tmp / "peer.bin", workers)
                rates.setdefault(f"peer {workers}p", []).append(size / seconds)
                timings = tfllm_prepare(corpus, tmp, f"r{r}w{workers}", workers)
                rates.setdefault(f"tfllm {workers}w", []).append(size / timings["pack"])
                if workers == 1:  # one process: its CPU time, steadier than wall time under load
                    rates.setdefault("peer 1p per CPU s", []).append(size / cpu)
                    rates.setdefault("tfllm 1w per CPU s", []).append(size / timings["pack_cpu"])
                sampling.append(timings["read"])
            load.append(os.getloadavg()[0])
            print(f"round {r + 1}: {({k: round(v[-1], 2) for k, v in rates.items()})}",
                  file=sys.stderr)  # fmt: skip
    finally:
        shutil.rmtree(tmp)  # the corpus and every round's shards: about 100 MB at 10 MB
    figures = {name: {"MB/s": summarize(values)} for name, values in rates.items()}
    # Ratios within each round (the contenders ran seconds apart, under the same load), then
    # their median and spread: steadier than a ratio of medians taken across rounds.
    pairs = {
        "tfllm 1w / peer 1p (goal >= 1/1.2 = 0.83)": ("tfllm 1w", "peer 1p"),
        "the same in MB per CPU second": ("tfllm 1w per CPU s", "peer 1p per CPU s"),
        "tfllm 2w / tfllm 1w (goal >= 1.7)": ("tfllm 2w", "tfllm 1w"),
        "peer 2p / peer 1p (what this machine gives)": ("peer 2p", "peer 1p"),
        "tfllm 2w / peer 2p": ("tfllm 2w", "peer 2p"),
    }
    for label, (a, b) in pairs.items():
        ratios = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        figures[label] = {"per-round ratio": summarize(ratios)}
    figures["sample pass + tokenizer training"] = {"seconds": summarize(sampling)}
    notes = [
        f"corpus {size:.1f} MB of JSON Lines; load average (1 min) over the rounds "
        f"{min(load):.1f} to {max(load):.1f}"
    ]
    return {"figures": figures, "notes": notes}
