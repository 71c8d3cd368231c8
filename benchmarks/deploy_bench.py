"""Deployment formats on the small config: file size, load time, ms/token at batch 1 (CPU),
and the bits-per-byte cost of int8 weights against float32.

    python -m benchmarks deploy [--rounds 3] [--quick]

Speed and size: configs/small.yaml shapes with random weights (benchmarks/generate_bench.py's
`make_run`; the EOS embedding zeroed so every run decodes 32 new tokens), greedy. Each format's
load and decode are timed alternately with the others, `rounds` rounds; medians with
(min-max). `--quick`: the SavedModels only, 8 new tokens, no bits per byte.

Bits per byte: a model that has learned something, the default config's shape (configs/tiny.yaml)
trained 300 steps on the stdlib by tfllm's trainer, exported in every format and
scored by `tfllm.eval`'s engine on the first 4 documents of its stdlib_bpb task
(held-out files): the SavedModels through their `logits` signature, LiteRT and ONNX through
their logits (the LiteRT prefill signature, one window at a time).
"""

from __future__ import annotations

import pathlib
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks.common import summarize
from benchmarks.generate_bench import PROMPT, make_run
from tfllm.config import load_config
from tfllm.corpus import prepare
from tfllm.eval import run
from tfllm.eval.engine import Engine
from tfllm.serve import export, litert, onnx
from tfllm.tokenizers import tokenizer
from tfllm.training import loop


def size(path: str) -> int:
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


def saved_model(version_dir, n):
    def load():
        return tf.saved_model.load(version_dir).signatures["serving_default"]

    def decode(generate):
        request = dict(prompts=tf.constant([PROMPT]), max_new_tokens=tf.constant(n))
        request.update(temperature=tf.constant(0.0), top_k=tf.constant(0), top_p=tf.constant(1.0))
        return generate(**request, seed=tf.constant(0, tf.int64))["tokens"].numpy()

    return load, decode


def step_loop(prefill, decode, prompt, n, cache):
    """Greedy: prefill the prompt, then n decode steps (the README's device loop)."""
    out = prefill(np.array([prompt], np.int32), np.arange(len(prompt), dtype=np.int32), cache)
    tokens = []
    for position in range(len(prompt), len(prompt) + n):
        tokens.append(int(np.argmax(out["logits"][0, -1])))
        out = decode(np.array([[tokens[-1]]], np.int32), np.array([position], np.int32), out)
    return tokens


def litert_format(version_dir, n, prompt):
    from ai_edge_litert.interpreter import Interpreter

    def load():
        interpreter = Interpreter(model_path=f"{version_dir}/model.tflite", num_threads=2)
        return interpreter.get_signature_runner("prefill"), interpreter.get_signature_runner(
            "decode"
        )

    def run(runners):
        prefill_runner, decode_runner = runners
        details = prefill_runner.get_input_details()
        width = details["tokens"]["shape"][1]
        cache = {k: np.zeros(v["shape"], np.float32) for k, v in details.items() if "kv" in k}

        def prefill(tokens, positions, cache):
            padded = np.zeros((1, width), np.int32)
            padded[0, : tokens.shape[1]] = tokens[0]
            out = prefill_runner(tokens=padded, input_pos=np.arange(width, dtype=np.int32), **cache)
            return {**out, "logits": out["logits"][:, : tokens.shape[1]]}

        def decode(tokens, positions, out):
            kv = {k: out[k] for k in cache}
            return decode_runner(tokens=tokens, input_pos=positions, **kv)

        return step_loop(prefill, decode, prompt, n, cache)

    return load, run


def onnx_format(version_dir, n, prompt, shape):
    import onnxruntime

    def load():
        return onnxruntime.InferenceSession(f"{version_dir}/decode.onnx")

    def run(session):
        names = [output.name for output in session.get_outputs()]
        inputs = [i.name for i in session.get_inputs() if i.name.startswith("kv")]

        def call(tokens, positions, cache):
            feed = {"tokens": tokens, "input_pos": positions, **cache}
            return dict(zip(names, session.run(names, feed), strict=True))

        def decode(tokens, positions, out):
            return call(tokens, positions, {k: out[onnx.PRESENT + k] for k in inputs})

        cache = {k: np.zeros(shape, np.float32) for k in inputs}
        return step_loop(call, decode, prompt, n, cache)

    return load, run


def trained_bits_per_byte(root: str, steps: int, docs: int) -> dict:
    """Bits per byte of the tiny default model, trained `steps` steps, through each format."""
    workdir = f"{root}/tiny"
    cfg = load_config(overrides=[f"data.root={root}/data", f"runtime.workdir={workdir}",
                                 f"train.steps={steps}", f"train.checkpoint_every={steps}",
                                 f"train.eval_every={steps}"])  # fmt: skip
    prepare.prepare(cfg)
    loop.train(cfg)
    length = cfg.model.max_sequence_length
    lite = {
        q: litert.export_litert(
            workdir,
            f"{root}/export/tiny-litert-{q}",
            prefill_length=length,
            quantize_weights=q,
        )  # fmt: skip
        for q in ("none", "int8")
    }
    onnx_dir = onnx.export_onnx(workdir, f"{root}/export/tiny-onnx")
    task = run.load_tasks("stdlib_bpb")

    def score(engine) -> float:
        rows = run.evaluate(engine, task, limit=docs)
        return next(r["value"] for r in rows if r["metric"] == "bits_per_byte")

    bpb = {}
    for name, q in (("saved_model float32", "none"), ("saved_model int8", "int8")):
        version_dir = export.export(workdir, f"{root}/export/tiny-{q}", quantize_weights=q)
        bpb[name] = score(run.export_engine(version_dir, {"loglikelihood_rolling"})[0])
    tokenizer_path = f"{onnx_dir}/tokenizer.model"
    for name, logits in (
        ("litert float32", litert_logits(lite["none"])),
        ("litert int8", litert_logits(lite["int8"])),
        ("onnx float32", onnx_logits(onnx_dir)),
    ):

        def logits_fn(ids, logits=logits):
            out = tf.numpy_function(logits, [ids], tf.float32)
            return tf.ensure_shape(out, [None, None, cfg.model.vocabulary_size])

        engine = Engine(logits_fn, None, tokenizer_path, length, batch_size=1, jit_compile=False)
        bpb[name] = score(engine)
    return bpb


def litert_logits(version_dir):
    """(1, W) ids -> (1, W, V) logits: the prefill signature with an empty cache, padded."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=f"{version_dir}/model.tflite", num_threads=2)
    prefill = interpreter.get_signature_runner("prefill")
    details = prefill.get_input_details()
    width = details["tokens"]["shape"][1]
    cache = {k: np.zeros(v["shape"], np.float32) for k, v in details.items() if "kv" in k}

    def logits(ids):
        padded = np.zeros((1, width), np.int32)
        padded[0, : ids.shape[1]] = ids[0]  # causal: the padding after the window is not read
        out = prefill(tokens=padded, input_pos=np.arange(width, dtype=np.int32), **cache)
        return out["logits"][:, : ids.shape[1]].astype(np.float32)

    return logits


def onnx_logits(version_dir):
    import onnxruntime

    session = onnxruntime.InferenceSession(f"{version_dir}/logits.onnx")
    return lambda ids: session.run(["logits"], {"token_ids": ids})[0]


TRAIN_STEPS, BPB_DOCS = 300, 4


def case(rounds: int, quick: bool) -> dict:
    n = 8 if quick else 32
    only = "saved_model" if quick else ""
    train_steps = 0 if quick else TRAIN_STEPS
    with tempfile.TemporaryDirectory() as root:
        model, tokenizer_path, float_dir = make_run(root)
        int8_dir = export.export(root, f"{root}/export/bench", quantize_weights="int8")
        prompt = [tokenizer.EOS_ID, *tokenizer_ids(tokenizer_path, PROMPT)]
        shape = [1, model.kv_heads, model.config.max_sequence_length, model.head_dim]

        def lite(q):
            path = litert.export_litert(
                root, f"{root}/export/litert-{q}", prefill_length=16, quantize_weights=q
            )
            return (path, *litert_format(path, n, prompt))

        def onnx_float32():
            path = onnx.export_onnx(root, f"{root}/export/onnx")
            return (path, *onnx_format(path, n, prompt, shape))

        builders = {
            "saved_model float32": lambda: (float_dir, *saved_model(float_dir, n)),
            "saved_model int8": lambda: (int8_dir, *saved_model(int8_dir, n)),
            "litert float32": lambda: lite("none"),
            "litert int8": lambda: lite("int8"),
            "onnx float32": onnx_float32,
        }
        formats = {name: build() for name, build in builders.items() if only in name}
        loads = {name: [] for name in formats}
        tokens = {name: [] for name in formats}
        loaded = {name: load() for name, (_, load, _) in formats.items()}
        for name, (_, _, run) in formats.items():
            run(loaded[name])  # compile / warm up
        for _ in range(rounds):
            for name, (_, load, run) in formats.items():
                started = time.perf_counter()
                load()
                loads[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                run(loaded[name])
                tokens[name].append(1000 * (time.perf_counter() - started) / n)
        figures = {
            name: {
                "size MB": size(path) / 1e6,
                "load s": summarize(loads[name]),
                "ms/token": summarize(tokens[name]),
            }
            for name, (path, _, _) in formats.items()
        }
        weights = {d: size(f"{d}/variables") for d in (float_dir, int8_dir)}
        notes = [
            f"{model.count_params():,} parameters; batch 1, {n} new tokens, {rounds} rounds",
            f"variables/ int8 / float32: {weights[int8_dir] / weights[float_dir]:.3f}",
        ]
        if train_steps:
            bpb = trained_bits_per_byte(root, train_steps, BPB_DOCS)
            for name, value in bpb.items():
                cost = 100 * (value / bpb["saved_model float32"] - 1)
                figures[f"{name}, tiny model after {train_steps} steps"] = {
                    "bits/byte": f"{value:.4f} ({cost:+.2f}%)"
                }
    return {"figures": figures, "notes": notes}


def tokenizer_ids(path, text):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=path).encode(text)
