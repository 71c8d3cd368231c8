"""Byte-level BPE in the graph against the `tokenizers` library, on the same text.

    python -m benchmarks.tokenizer_bench [--rounds 5] [--vocab 4096] [--kb 256] [--batch 64]

Trains a Llama-3-style byte-level BPE (its Split pattern, ByteLevel, ignore_merges) with
`tokenizers` on the stdlib's `json` and `email` sources, then tokenizes the first `--kb` KB of
them, in lines batched by `--batch`, with:
    tfllm-graph   tfllm's tokenizer in a tf.function (what tf.data and the SavedModel run)
    tfllm-tfdata  the same inside tf.data (map with 2 parallel calls, prefetch)
    hf-batch      `Tokenizer.encode_batch` (Rust, its own thread pool)
    hf-single     `Tokenizer.encode` one line at a time
Rounds alternate the contenders; medians with spread (min-max) in tokens/s; the ids of every
contender are checked equal before timing.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sysconfig
import tempfile
import time

import tensorflow as tf
from tokenizers import Regex, Tokenizer, decoders, models, trainers
from tokenizers import pre_tokenizers as pre

from benchmarks.common import machine, summarize
from tfllm.tokenizers.hf_tokenizer import load_hf_tokenizer

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus(kb: int) -> list[str]:
    """Lines (newline kept) of real Python source, about `kb` KB."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    lines, size = [], 0
    for path in sorted([*(root / "json").rglob("*.py"), *(root / "email").rglob("*.py")]):
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            lines.append(line)
            size += len(line.encode())
            if size >= kb << 10:
                return lines
    return lines


def train(lines: list[str], vocab: int, path: pathlib.Path) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=True))
    split = pre.Split(Regex(LLAMA3_PATTERN), "isolated")
    tok.pre_tokenizer = pre.Sequence([split, pre.ByteLevel(False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|begin_of_text|>", "<|eot_id|>"],
        initial_alphabet=pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    tok.save(str(path))
    return tok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--kb", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    lines = corpus(args.kb)
    batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]
    with tempfile.TemporaryDirectory() as tmp:
        hf = train(lines, args.vocab, pathlib.Path(tmp) / "tokenizer.json")
        ours = load_hf_tokenizer(str(pathlib.Path(tmp) / "tokenizer.json"))
    graph = tf.function(ours.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
    dataset = (
        tf.data.Dataset.from_tensor_slices(lines)
        .batch(args.batch)
        .map(lambda b: ours.tokenize(b).flat_values, num_parallel_calls=2)
        .prefetch(2)
    )

    reference = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    tokens = sum(len(ids) for ids in reference)
    assert [r for b in batches for r in graph(tf.constant(b)).to_list()] == reference
    assert [i for ids in dataset.as_numpy_iterator() for i in ids.tolist()] == sum(reference, [])

    contenders = {
        "tfllm-graph": lambda: [graph(tf.constant(b)) for b in batches],
        "tfllm-tfdata": lambda: list(dataset),
        "hf-batch": lambda: [hf.encode_batch(b, add_special_tokens=False) for b in batches],
        "hf-single": lambda: [hf.encode(line, add_special_tokens=False) for line in lines],
    }
    rates = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            rates[name].append(tokens / (time.perf_counter() - started))
    result = {
        "text_bytes": sum(len(line.encode()) for line in lines),
        "lines": len(lines),
        "tokens": tokens,
        "vocab": hf.get_vocab_size(),
        "batch": args.batch,
        "tokens_per_second": {name: summarize(values) for name, values in rates.items()},
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    for name, summary in result["tokens_per_second"].items():
        low, high = summary["min"], summary["max"]
        print(f"{name:14s} {summary['median']:12,.0f} tok/s  ({low:,.0f}-{high:,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
