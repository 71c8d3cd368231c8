"""Decoding speed: cached vs uncached, and the exported SavedModel vs in-process generate.

    PYTHONPATH=. python benchmarks/generate_bench.py [--new_tokens 128] [--repeats 5]
    PYTHONPATH=. python benchmarks/generate_bench.py --baseline REV [--new_tokens 64]

On configs/small.yaml shapes (6 layers, hidden 512, 8 heads, intermediate 1536, vocabulary
8192, 256 positions; about 25M parameters) with random weights, batch 1, greedy. Contenders are
run alternately, `repeats` times each, and the medians are compared, because this machine is
shared and single runs are noisy. The EOS embedding is zeroed so no run stops early.

    cached      `tfllm.serve.generate.decode`: prefill, then one token per step through the KV cache
    uncached    the same loop without a cache: every step runs the whole prefix again
    exported    the SavedModel's serving_default (plain graph, no XLA), text in and out
    in-process  `Generator.generate` (a tf.function graph, its default), text in and out

With `--baseline REV` it compares instead this tree's `Generator.generate_ids` with the one of
git revision REV (its tfllm/serve/generate.py and sampling.py, on this tree's model), greedy
and sampled (temperature 0.8, top_k 40, top_p 0.95), at batch 1 and 8: medians [min-max].
"""

from __future__ import annotations

import argparse
import linecache
import pathlib
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import types

import numpy as np
import tensorflow as tf

from benchmarks.common import never_end
from tfllm.config import load_config, save_config
from tfllm.model.lm import build_model
from tfllm.serve import export, generate
from tfllm.tokenizers import tokenizer
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


def rounds(contenders: dict, repeats: int) -> dict:
    """Runs each contender once to compile, then alternately (A B C, C B A, ...: no contender
    always runs first); seconds per contender per round."""
    for fn in contenders.values():
        fn()
    times = {name: [] for name in contenders}
    for round_ in range(repeats):
        order = list(contenders.items())
        for name, fn in order[::-1] if round_ % 2 else order:
            times[name].append(timed(fn))
    return times


def medians(contenders: dict, repeats: int) -> dict:
    times = rounds(contenders, repeats)
    return {name: statistics.median(values) for name, values in times.items()}


def revision_module(rev: str, name: str, namespace: dict) -> types.ModuleType:
    """tfllm/serve/<name>.py as of git revision `rev`, run with `namespace` predefined (its
    own import lines of those names dropped, so it uses the revision's modules)."""
    root = pathlib.Path(__file__).resolve().parent.parent
    source = subprocess.run(
        ["git", "show", f"{rev}:tfllm/serve/{name}.py"],
        cwd=root, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for imported in namespace:
        source = source.replace(f"from tfllm.serve import {imported}\n", "")
    filename = f"{rev}:tfllm/serve/{name}.py"
    # AutoGraph reads a function's source through linecache.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module = types.ModuleType(f"{name}_at_{rev}")
    module.__dict__.update(namespace)
    sys.modules[module.__name__] = module  # AutoGraph looks functions' modules up there
    exec(compile(source, filename, "exec"), module.__dict__)
    return module


def compare_baseline(model, tokenizer_path: str, rev: str, n: int, repeats: int) -> None:
    """This tree's decode loop against revision `rev`'s, alternating, on the same model."""
    sampling = revision_module(rev, "sampling", {})
    baseline = revision_module(rev, "generate", {"sampling": sampling})
    generators = {
        "this tree": generate.Generator(model, tokenizer_path),
        rev: baseline.Generator(model, tokenizer_path),
    }
    settings = {"greedy": {}, "sampled": dict(temperature=0.8, top_k=40, top_p=0.95, seed=1)}
    contenders = {}
    for batch in (1, 8):
        for setting, options in settings.items():
            for name, generator in generators.items():
                contenders[(batch, setting, name)] = lambda g=generator, b=batch, o=options: (
                    g.generate_ids([PROMPT] * b, max_new_tokens=n, **o)[0].numpy()
                )
    for batch, setting, _ in contenders:  # the same tokens, or the comparison means nothing
        outputs = [contenders[(batch, setting, name)]() for name in generators]
        np.testing.assert_array_equal(*outputs)
    times = rounds(contenders, repeats)
    print(f"model: {model.count_params():,} parameters; {n} new tokens, {repeats} rounds")
    for (batch, setting, name), values in times.items():
        per_token = [1000 * value / n for value in values]
        print(
            f"batch {batch} {setting:8s} {name:12s} {statistics.median(per_token):8.2f} ms/token "
            f"[{min(per_token):.2f}-{max(per_token):.2f}]"
        )
        if name == rev:  # the two ran next to each other: their ratio shares the round's load
            ours = times[(batch, setting, "this tree")]
            ratios = [a / b for a, b in zip(ours, values, strict=True)]
            print(
                f"batch {batch} {setting:8s} this tree / {rev}: median of rounds "
                f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]"
            )


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
    make_checkpointer(cfg, model, optimizer, new_counters()).save(0)
    version_dir = export.export(root, f"{root}/export/bench")
    return model, tokenizer_path, version_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="a git revision to compare the decode loop with")
    args = parser.parse_args()
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as root:
        model, tokenizer_path, version_dir = make_run(root)
        if args.baseline:
            compare_baseline(model, tokenizer_path, args.baseline, n, args.repeats)
            return
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
