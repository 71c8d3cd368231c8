"""Evaluation speed: scored tokens/s of `tfllm.eval` against the training forward pass.

    PYTHONPATH=. python benchmarks/eval_bench.py [--config tiny] [--batch 16] [--rounds 5]

At the config's shape (default configs/tiny.yaml: 2 layers, hidden 128, vocabulary 2048,
sequences of data.seq_len) with random weights. The contenders run alternately, `rounds`
times each, on the same token batches; medians and spreads (min-max) are reported.

    forward   the trainer's compiled evaluation step (`Steps._eval`: the training forward pass
              and its loss, XLA), on ready (B, T) tensors
    eval      `Engine.score_sequences`: Python batching (sort, pad, weights), the compiled
              log-likelihood/greedy step, results back per sequence

Multiple choice (`--questions N` of the built-in next_line task: 6 lines of held-out code, 4
choices of one line each), questions per second of `Engine.loglikelihood`:

    mc-whole   every (context, choice) sequence scored whole (`share_prefixes=False`)
    mc-shared  each question's context run once, its KV cache shared by the choices
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
from tfllm.eval import builtin
from tfllm.eval.engine import model_engine
from tfllm.model.lm import build_model
from tfllm.tokenizers import tokenizer
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
    parser.add_argument("--questions", type=int, default=64, help="next_line questions")
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
        # 1 MB of text holds fewer pieces than a large vocabulary: the model keeps its size.
        path = tokenizer_file(tmp, min(cfg.model.vocabulary_size, 4096))
        engine = model_engine(model, path, batch_size=args.batch)
        whole = model_engine(model, path, batch_size=args.batch, share_prefixes=False)
    sequences = [(list(row), 1) for batch in tokens for row in batch]
    inputs = [(tf.constant(b[:, :-1]), tf.constant(b[:, 1:])) for b in tokens]

    def forward():
        for x, y in inputs:
            loss, _ = steps._eval(x, y)
        float(loss)

    def evaluate():
        engine.score_sequences(sequences)

    docs = builtin.next_line().docs[: args.questions]
    requests = [(doc["context"], choice) for doc in docs for choice in doc["choices"]]

    def timed(name, fn, count):
        started = time.perf_counter()
        fn()
        speeds[name].append(count / (time.perf_counter() - started))

    scored = args.batches * args.batch * seq
    contenders = {
        "forward": (forward, scored),
        "eval": (evaluate, scored),
        "mc-whole": (lambda: whole.loglikelihood(requests), len(docs)),
        "mc-shared": (lambda: engine.loglikelihood(requests), len(docs)),
    }
    speeds = {name: [] for name in contenders}
    for fn, _ in contenders.values():  # compile every shape
        fn()
    for _ in range(args.rounds):
        for name, (fn, count) in contenders.items():
            timed(name, fn, count)
    for name, values in speeds.items():
        unit = "questions/s" if name.startswith("mc") else "scored tok/s"
        spread = f"(min {min(values):,.1f}, max {max(values):,.1f})"
        print(f"{name:10s} median {statistics.median(values):10,.1f} {unit} {spread} "
              f"over {args.rounds} rounds")  # fmt: skip
    ratio = statistics.median(speeds["eval"]) / statistics.median(speeds["forward"])
    print(f"eval / forward: {ratio:.3f} (goal >= 0.8); shape {args.batch} x {seq}")
    ratio = statistics.median(speeds["mc-shared"]) / statistics.median(speeds["mc-whole"])
    print(f"mc-shared / mc-whole: {ratio:.2f}x; {len(docs)} questions, batch {args.batch}")


if __name__ == "__main__":
    main()
