"""Evaluation speed: scored tokens/s of `tfllm.eval` against the training forward pass.

    PYTHONPATH=. python benchmarks/eval_bench.py [--config tiny] [--batch 16] [--rounds 5]

At the config's shape (default configs/tiny.yaml: 2 layers, hidden 128, vocabulary 2048,
sequences of data.seq_len) with random weights. The contenders run alternately, `rounds`
times each, on the same token batches; medians and spreads (min-max) are reported.

    forward   the trainer's compiled evaluation step (`Steps._eval`: the training forward pass
              and its loss, XLA), on ready (B, T) tensors
    eval      `Engine.score_sequences`: Python batching (sort, pad, weights), the compiled
              log-likelihood/greedy step, results back per sequence
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sysconfig
import tempfile
import time

import numpy as np
import tensorflow as tf

from tfllm.config import load_config
from tfllm.data import tokenizer
from tfllm.eval.engine import model_engine
from tfllm.model.lm import build_model
from tfllm.training.optim import make_optimizer
from tfllm.training.steps import Steps


def tokenizer_file(directory: str, vocabulary: int) -> str:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    texts = (p.read_text(errors="replace") for p in sorted(root.glob("*.py")))
    path = pathlib.Path(directory) / "tokenizer.model"
    path.write_bytes(tokenizer.train_tokenizer(texts, vocabulary, sample_mb=1))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=16, help="batches per timed run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config([args.config])
    seq = cfg.data.seq_len
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    steps = Steps(cfg, tf.distribute.get_strategy(), model, make_optimizer(cfg.train, []))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.model.vocabulary_size, (args.batches, args.batch, seq + 1))
    tokens = tokens.astype(np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        engine = model_engine(model, tokenizer_file(tmp, cfg.model.vocabulary_size),
                              batch_size=args.batch)  # fmt: skip
    sequences = [(list(row), 1) for batch in tokens for row in batch]
    inputs = [(tf.constant(b[:, :-1]), tf.constant(b[:, 1:])) for b in tokens]

    def forward():
        for x, y in inputs:
            loss, _ = steps._eval(x, y)
        float(loss)

    def evaluate():
        engine.score_sequences(sequences)

    scored = args.batches * args.batch * seq
    speeds = {"forward": [], "eval": []}
    forward(), evaluate()  # compile both
    for _ in range(args.rounds):
        for name, fn in (("forward", forward), ("eval", evaluate)):
            started = time.perf_counter()
            fn()
            speeds[name].append(scored / (time.perf_counter() - started))
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"{name:8s} median {median:10,.0f} scored tok/s (min {min(values):,.0f}, "
              f"max {max(values):,.0f}) over {args.rounds} rounds")  # fmt: skip
    ratio = statistics.median(speeds["eval"]) / statistics.median(speeds["forward"])
    print(f"eval / forward: {ratio:.3f} (goal >= 0.8); shape {args.batch} x {seq}")


if __name__ == "__main__":
    main()
