"""Decoding speed, two cases.

    python -m benchmarks serving [--rounds 5] [--quick]     # configs/small.yaml shapes
    python -m benchmarks generate [--rounds 5] [--quick]    # the GPT small shape vs keras-hub

`serving`: on configs/small.yaml shapes (`shapes.DECODE`: 6 layers, hidden 512, 8 heads,
intermediate 1536, vocabulary 8192, 256 positions; about 25M parameters) with random weights,
batch 1, greedy, 128 new tokens (32 with --quick). Contenders run alternately, `rounds` times
each; medians and spread. The EOS embedding is zeroed so no run stops early.

    cached      `tfllm.serve.generate.decode`: prefill, then one token per step through the KV cache
    uncached    the same loop without a cache: every step runs the whole prefix again
    exported    the SavedModel's serving_default (plain graph, no XLA), text in and out
    in-process  `Generator.generate` (a tf.function graph, its default), text in and out

`generate`: ms/token at 128 new tokens, batch 1, greedy, on the GPT small shape of the training
comparison: tfllm cached (graph and XLA), uncached, and keras-hub `GPT2CausalLM.generate`;
first call and steady state.
"""

from __future__ import annotations

import pathlib
import sysconfig
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks import shapes
from benchmarks.common import gpt2_backbone, never_end, summarize
from tfllm.config import load_config, save_config
from tfllm.model.lm import build_model
from tfllm.serve import export, generate
from tfllm.tokenizers import tokenizer
from tfllm.training.optim import make_optimizer
from tfllm.training.session import make_checkpointer, new_counters

SMALL = [f"model.{key}={value}" for key, value in shapes.DECODE.items()]
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


def summaries(contenders: dict, repeats: int, per: float = 1.0) -> dict:
    """{name: summary of seconds / per} over alternating rounds (after one compiling run)."""
    return {name: summarize([v / per for v in values])
            for name, values in rounds(contenders, repeats).items()}  # fmt: skip


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


def case(repeats: int, quick: bool) -> dict:
    n = 32 if quick else 128
    with tempfile.TemporaryDirectory() as root:
        model, tokenizer_path, version_dir = make_run(root)
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
        per_token = summaries(
            {
                "cached (graph)": lambda: generator.generate_ids([PROMPT], max_new_tokens=n),
                "cached (XLA)": lambda: xla_generator.generate_ids([PROMPT], max_new_tokens=n),
                "uncached (graph)": lambda: uncached(model, ids, tf.constant(n)).numpy(),
                "exported generate": lambda: served(**request)["completions"].numpy(),
                "in-process generate": lambda: generator.generate([PROMPT], max_new_tokens=n),
            },
            repeats,
            n / 1000,
        )
    median = {name: s["median"] for name, s in per_token.items()}
    notes = [
        f"{model.count_params():,} parameters; {n} new tokens, batch 1, greedy.",
        f"cached speed-up: {median['uncached (graph)'] / median['cached (graph)']:.1f}x (graph), "
        f"{median['uncached (graph)'] / median['cached (XLA)']:.1f}x (XLA) [target >= 4x]",
        f"exported / in-process generate per token: "
        f"{median['exported generate'] / median['in-process generate']:.2f}x [target <= 1.5x]",
    ]
    return {"figures": {k: {"ms/token": v} for k, v in per_token.items()}, "notes": notes}


def keras_hub_generate(shape: dict, prompt: np.ndarray, new_tokens: int):
    """keras-hub GPT2CausalLM.generate (greedy) on the same shapes, as a zero-arg callable."""
    import keras_hub

    backbone = gpt2_backbone(shape, 2 * shape["seq_len"])
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    width = prompt.shape[1] + new_tokens  # generation fills the padding after the prompt
    inputs = {
        "token_ids": np.pad(prompt, ((0, 0), (0, new_tokens))),
        "padding_mask": np.arange(width)[None, :] < prompt.shape[1],
    }
    return lambda: lm.generate(inputs, stop_token_ids=None)


def peer_case(repeats: int, quick: bool) -> dict:
    """ms/token at 128 new tokens, batch 1, greedy: first call and steady state."""
    new_tokens = 128
    shape = shapes.gpt("small")
    keys = {**shapes.model_keys(shape), "max_sequence_length": 2 * shape["seq_len"]}
    cfg = load_config([], [f"model.{key}={value}" for key, value in keys.items()])
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    never_end(model, generate.EOS_ID)
    prompt = np.random.default_rng(0).integers(3, shape["vocabulary_size"], (1, 16), np.int32)
    ids, start, n = tf.constant(prompt), tf.zeros([1], tf.int32), tf.constant(new_tokens)
    greedy = (tf.constant(0.0), tf.constant(0), tf.constant(1.0), tf.constant(0, tf.int64))
    cached = tf.function(generate.decode)
    cached_xla = tf.function(generate.decode, jit_compile=True)
    uncached = tf.function(uncached_decode)
    contenders = {
        "tfllm cached (graph)": lambda: cached(model, ids, start, n, *greedy)[0].numpy(),
        "tfllm cached (XLA)": lambda: cached_xla(model, ids, start, n, *greedy)[0].numpy(),
        "tfllm uncached (graph)": lambda: uncached(model, ids, n).numpy(),
        "keras-hub GPT2CausalLM.generate": keras_hub_generate(shape, prompt, new_tokens),
    }
    first = {name: 1000 * timed(fn) / new_tokens for name, fn in contenders.items()}
    steady = summaries(contenders, repeats, new_tokens / 1000)
    figures = {
        name: {"first call ms/token": first[name], "steady ms/token": steady[name]}
        for name in contenders
    }
    speedup = steady["tfllm uncached (graph)"]["median"] / steady["tfllm cached (graph)"]["median"]
    return {"figures": figures, "notes": [f"cached vs uncached (graph): {speedup:.2f}x "
                                          "[target >= 4x]"]}  # fmt: skip
