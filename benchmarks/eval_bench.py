"""Evaluation speed: scored tokens/s of `tfllm.eval` against the training forward pass.

    python -m benchmarks eval [--rounds 5] [--quick]

At configs/tiny.yaml's shape (2 layers, hidden 128, vocabulary 2048, sequences of
data.seq_len) with random weights, batches of 16 (16 batches a timed run; --quick 2 batches
and 8 questions). The contenders run alternately, `rounds`
times each, on the same token batches; medians and spreads (min-max) are reported.

    forward   the trainer's compiled evaluation step (`Steps._eval`: the training forward pass
              and its loss, XLA), on ready (B, T) tensors
    eval      `Engine.score_sequences`: Python batching (sort, pad, weights), the compiled
              log-likelihood/greedy step, results back per sequence

Multiple choice (64 questions of the built-in next_line task: 6 lines of held-out code, 4
choices of one line each), questions per second of `Engine.loglikelihood`:

    mc-whole   every (context, choice) sequence scored whole (`share_prefixes=False`)
    mc-shared  each question's context run once, its KV cache shared by the choices
"""

from __future__ import annotations

import pathlib
import sysconfig
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks.common import ratio, summarize
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


BATCH = 16


def case(rounds: int, quick: bool) -> dict:
    batches, questions = (2, 8) if quick else (16, 64)
    cfg = load_config(["tiny"])
    seq = cfg.data.seq_len
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    steps = Steps(cfg, tf.distribute.get_strategy(), model, make_optimizer(cfg.train, []))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.model.vocabulary_size, (batches, BATCH, seq + 1))
    tokens = tokens.astype(np.int32)
    with tempfile.TemporaryDirectory() as tmp:
        # 1 MB of text holds fewer pieces than a large vocabulary: the model keeps its size.
        path = tokenizer_file(tmp, min(cfg.model.vocabulary_size, 4096))
        engine = model_engine(model, path, batch_size=BATCH)
        whole = model_engine(model, path, batch_size=BATCH, share_prefixes=False)
    sequences = [(list(row), 1) for batch in tokens for row in batch]
    inputs = [(tf.constant(b[:, :-1]), tf.constant(b[:, 1:])) for b in tokens]

    def forward():
        for x, y in inputs:
            loss, _ = steps._eval(x, y)
        float(loss)

    def evaluate():
        engine.score_sequences(sequences)

    docs = builtin.next_line().docs[:questions]
    requests = [(doc["context"], choice) for doc in docs for choice in doc["choices"]]

    def timed(name, fn, count):
        started = time.perf_counter()
        fn()
        speeds[name].append(count / (time.perf_counter() - started))

    scored = batches * BATCH * seq
    contenders = {
        "forward": (forward, scored),
        "eval": (evaluate, scored),
        "mc-whole": (lambda: whole.loglikelihood(requests), len(docs)),
        "mc-shared": (lambda: engine.loglikelihood(requests), len(docs)),
    }
    speeds = {name: [] for name in contenders}
    for fn, _ in contenders.values():  # compile every shape
        fn()
    for _ in range(rounds):
        for name, (fn, count) in contenders.items():
            timed(name, fn, count)
    figures = {}
    for name, values in speeds.items():
        unit = "questions/s" if name.startswith("mc") else "scored tokens/s"
        figures[name] = {unit: summarize(values)}
    scored_ratio = ratio(figures["eval"]["scored tokens/s"], figures["forward"]["scored tokens/s"])
    shared = ratio(figures["mc-shared"]["questions/s"], figures["mc-whole"]["questions/s"])
    notes = [
        f"eval / forward: {scored_ratio:.3f} (goal >= 0.8); shape {BATCH} x {seq}",
        f"mc-shared / mc-whole: {shared:.2f}x; {len(docs)} questions, batch {BATCH}",
    ]
    return {"figures": figures, "notes": notes}
