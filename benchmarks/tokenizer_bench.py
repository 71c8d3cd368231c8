"""Byte-level BPE in the graph against the `tokenizers` library, on the same text.

    python -m benchmarks tokenizer [--rounds 5] [--quick]

Trains a Llama-3-style byte-level BPE (its Split pattern, ByteLevel, ignore_merges; 4096
pieces) with `tokenizers` on the stdlib's `json` and `email` sources, then tokenizes the first
256 KB of them (32 KB with --quick), in lines batched by 64, with:
    tfllm-graph   tfllm's tokenizer in a tf.function (what tf.data and the SavedModel run)
    tfllm-tfdata  the same inside tf.data (map with 2 parallel calls, prefetch)
    hf-batch      `Tokenizer.encode_batch` (Rust, its own thread pool)
    hf-single     `Tokenizer.encode` one line at a time
Rounds alternate the contenders; medians with spread (min-max) in tokens/s; the ids of every
contender are checked equal before timing.
"""

from __future__ import annotations

import pathlib
import sysconfig
import tempfile
import time

import tensorflow as tf
from tokenizers import Regex, Tokenizer, decoders, models, trainers
from tokenizers import pre_tokenizers as pre

from benchmarks.common import summarize
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


VOCAB, BATCH = 4096, 64


def case(rounds: int, quick: bool) -> dict:
    lines = corpus(32 if quick else 256)
    batches = [lines[i : i + BATCH] for i in range(0, len(lines), BATCH)]
    with tempfile.TemporaryDirectory() as tmp:
        hf = train(lines, VOCAB, pathlib.Path(tmp) / "tokenizer.json")
        ours = load_hf_tokenizer(str(pathlib.Path(tmp) / "tokenizer.json"))
    graph = tf.function(ours.tokenize, input_signature=[tf.TensorSpec([None], tf.string)])
    dataset = (
        tf.data.Dataset.from_tensor_slices(lines)
        .batch(BATCH)
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
    for _ in range(rounds):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            rates[name].append(tokens / (time.perf_counter() - started))
    figures = {name: {"tokens/s": summarize(values)} for name, values in rates.items()}
    notes = [
        f"{sum(len(line.encode()) for line in lines):,} bytes of text, {len(lines):,} lines, "
        f"{tokens:,} tokens, vocabulary {hf.get_vocab_size()}, batches of {BATCH}; every "
        "contender's ids checked equal to `tokenizers`' before timing."
    ]
    return {"figures": figures, "notes": notes}
