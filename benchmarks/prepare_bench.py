"""Prepare throughput: tfllm's streaming prepare on 1 and 2 workers vs a Megatron-style peer.

    python -m benchmarks.prepare_bench [--mb 20] [--rounds 3]

The corpus is the standard library's .py files as JSON Lines (the first --mb MB). The peer is what
Megatron-LM's `preprocess_data.py` does: a process pool of `sentencepiece` encoders over the
documents (json.loads + encode + EOS), the main process writing the token arrays to one binary
file; it gets the tokenizer tfllm trained, so both encode the same text with the same model.
tfllm is timed on its streaming pass (read, clean, dedup, tokenize, pack, write TFRecords and
sha256) - the pass the peer does; the sampling pass and tokenizer training are reported apart.
Contenders alternate in each round; medians and the spread (min-max) are printed, of the rates
and of the ratios within each round, with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pathlib
import shutil
import statistics
import tempfile
import time

import numpy as np

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    corpus = tmp / "corpus.jsonl"
    write_corpus(corpus, args.mb)
    size = corpus.stat().st_size / 1e6
    tfllm_prepare(corpus, tmp, "warm", 1)  # the tokenizer the peer uses
    model = str(tmp / "warm" / "tokenizer.model")
    load = [os.getloadavg()[0]]  # the machine is shared: say how busy it was
    rates: dict[str, list[float]] = {}
    other: dict[str, list[float]] = {"sample pass + tokenizer training s": []}
    for r in range(args.rounds):
        for workers in (1, 2):
            seconds, cpu = peer(corpus, model, tmp / "peer.bin", workers)
            rates.setdefault(f"peer {workers}p", []).append(size / seconds)
            timings = tfllm_prepare(corpus, tmp, f"r{r}w{workers}", workers)
            rates.setdefault(f"tfllm {workers}w", []).append(size / timings["pack"])
            if workers == 1:  # one process: its CPU time, steadier than wall time under load
                rates.setdefault("peer 1p per CPU s", []).append(size / cpu)
                rates.setdefault("tfllm 1w per CPU s", []).append(size / timings["pack_cpu"])
            other["sample pass + tokenizer training s"].append(timings["read"])
        load.append(os.getloadavg()[0])
    print(f"corpus {size:.1f} MB of JSON Lines, {args.rounds} rounds, MB/s median [min-max]")
    print(f"  load average (1 min) over the rounds: {min(load):.1f} to {max(load):.1f}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    for key, values in rates.items():
        print(f"  {key:18s} {med[key]:6.2f} [{min(values):.2f}-{max(values):.2f}]")
    for key, values in other.items():
        print(f"  {key} {statistics.median(values):.2f}")
    # Ratios within each round (the contenders ran seconds apart, under the same load), then
    # their median and spread: steadier than a ratio of medians taken across rounds.
    pairs = {
        "tfllm 1w / peer 1p (goal >= 1/1.2 = 0.83)": ("tfllm 1w", "peer 1p"),
        "the same in MB per CPU second": ("tfllm 1w per CPU s", "peer 1p per CPU s"),
        "tfllm 2w / tfllm 1w (goal >= 1.7)": ("tfllm 2w", "tfllm 1w"),
        "peer 2p / peer 1p (what this machine gives)": ("peer 2p", "peer 1p"),
        "tfllm 2w / peer 2p": ("tfllm 2w", "peer 2p"),
    }
    print("per-round ratios, median [min-max]")
    for label, (a, b) in pairs.items():
        ratios = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        print(f"  {label}: {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}]")
    shutil.rmtree(tmp)  # the corpus and every round's shards: about 100 MB at --mb 10


if __name__ == "__main__":
    main()
