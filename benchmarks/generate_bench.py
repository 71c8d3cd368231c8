"""Decoding speed: cached vs uncached, and the exported SavedModel vs in-process generate.

    PYTHONPATH=. python benchmarks/generate_bench.py [--new_tokens 128] [--repeats 5]

On configs/small.yaml shapes (6 layers, hidden 512, 8 heads, intermediate 1536, vocabulary
8192, 256 positions; about 25M parameters) with random weights, batch 1, greedy. Contenders are
run alternately, `repeats` times each, and the medians are compared, because this machine is
shared and single runs are noisy. The EOS embedding is zeroed so no run stops early.

    cached      `tfllm.serve.generate.decode`: prefill, then one token per step through the KV cache
    uncached    the same loop without a cache: every step runs the whole prefix again
    exported    the SavedModel's serving_default (plain graph, no XLA), text in and out
    in-process  `Generator.generate` (a tf.function graph, its default), text in and out
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

from benchmarks.common import never_end
from tfllm.config import load_config, save_config
from tfllm.data import tokenizer
from tfllm.model.lm import build_model
from tfllm.serve import export, generate
from tfllm.training.optim import make_optimizer
from tfllm.training.session import make_checkpointer, new_counters

SMALL = [
    "model.num_layers=6",
    "model.hidden_dim=512",
    "model.num_heads=8",
    "model.intermediate_dim=1536",
    "model.vocabulary_size=8192",
    "model.max_sequence_length=256",
]
PROMPT = "def main(argv):\n    "


def uncached_decode(model, ids, max_new_tokens):
    """Greedy decoding that recomputes the whole prefix for every new token."""

    def step(index, tokens):
        logits = model(tokens)  # (B, T, V): no cache, the full prefix again
        token = tf.argmax(logits[:, -1, :], axis=-1, output_type=tf.int32)
        return index + 1, tf.concat([tokens, token[:, None]], axis=1)

    _, tokens = tf.while_loop(
        lambda index, _: index < max_new_tokens,
        step,
        (tf.constant(0), ids),
        shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None])),
    )
    return tokens


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def medians(contenders: dict, repeats: int) -> dict:
    """Runs each contender once to compile, then alternately; median seconds per contender."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def make_run(root: str):
    """A workdir with config, tokenizer and a checkpoint of random weights (written as the
    trainer writes it), and its export."""
    cfg = load_config(
        overrides=SMALL + [f"data.root={root}/data", "data.name=bench", f"runtime.workdir={root}"]
    )
    # The tokenizer must know every id the model can emit: train it to the full 8192 pieces.
    stdlib = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    sources = [path.read_text(encoding="utf-8", errors="replace") for path in stdlib]
    tokenizer_path = f"{root}/data/bench/tokenizer.model"
    tf.io.gfile.makedirs(f"{root}/data/bench")
    with tf.io.gfile.GFile(tokenizer_path, "wb") as f:
        f.write(tokenizer.train_tokenizer(sources, 8192, sample_mb=2))
    save_config(cfg, f"{root}/config.yaml")
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    never_end(model, tokenizer.EOS_ID)
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    make_checkpointer(cfg, model, optimizer, new_counters(), log=lambda _: None).save(0)
    version_dir = export.export(root, f"{root}/export/bench", log=lambda _: None)
    return model, tokenizer_path, version_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as root:
        model, tokenizer_path, version_dir = make_run(root)
        print(f"model: {model.count_params():,} parameters; {n} new tokens, batch 1, greedy")
        generator = generate.Generator(model, tokenizer_path)
        xla_generator = generate.Generator(model, tokenizer_path, jit_compile=True)
        ids = generator._prompt_ids(tf.constant([PROMPT])).to_tensor()  # (1, P)
        uncached = tf.function(uncached_decode)
        served = tf.saved_model.load(version_dir).signatures["serving_default"]
        request = {
            "prompts": tf.constant([PROMPT]),
            "max_new_tokens": tf.constant(n),
            "temperature": tf.constant(0.0),
            "top_k": tf.constant(0),
            "top_p": tf.constant(1.0),
            "seed": tf.constant(0, tf.int64),
        }
        tokens, _ = generator.generate_ids([PROMPT], max_new_tokens=n)
        assert tokens.shape == (1, n) and generate.EOS_ID not in tokens.numpy()
        reference = uncached(model, ids, tf.constant(n))[0, -n:].numpy()
        np.testing.assert_array_equal(tokens[0].numpy(), reference)
        np.testing.assert_array_equal(served(**request)["tokens"][0].numpy(), reference)

        seconds = medians(
            {
                "cached (graph)": lambda: generator.generate_ids([PROMPT], max_new_tokens=n),
                "cached (XLA)": lambda: xla_generator.generate_ids([PROMPT], max_new_tokens=n),
                "uncached (graph)": lambda: uncached(model, ids, tf.constant(n)).numpy(),
                "exported generate": lambda: served(**request)["completions"].numpy(),
                "in-process generate": lambda: generator.generate([PROMPT], max_new_tokens=n),
            },
            args.repeats,
        )
    for name, value in seconds.items():
        print(f"{name:28s} {1000 * value / n:8.2f} ms/token")
    speedup = seconds["uncached (graph)"] / seconds["cached (graph)"]
    speedup_xla = seconds["uncached (graph)"] / seconds["cached (XLA)"]
    print(
        f"cached speed-up at {n} tokens: {speedup:.1f}x (graph), {speedup_xla:.1f}x (XLA) [>= 4x]"
    )
    ratio = seconds["exported generate"] / seconds["in-process generate"]
    print(f"exported / in-process generate per token: {ratio:.2f}x [<= 1.5x]")


if __name__ == "__main__":
    main()
