"""Deployment formats on the small config: file size, load time, ms/token at batch 1 (CPU),
and the bits-per-byte cost of int8 weights against float32.

    PYTHONPATH=. python benchmarks/deploy_bench.py [--new_tokens 32] [--repeats 3]

configs/small.yaml shapes with random weights (benchmarks/generate_bench.py's `make_run`; the
EOS embedding zeroed so every run decodes `new_tokens`), greedy. Each format's load and decode
are timed alternately with the others, `repeats` rounds; medians with [min, max] are printed.
Bits per byte: the `score` signature over held-out stdlib text (random weights here: the cost
of rounding, not of a trained model's quality).
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import statistics
import sysconfig
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks.generate_bench import PROMPT, make_run
from tfllm.data import tokenizer
from tfllm.serve import export, litert, onnx


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


def bits_per_byte(version_dir, texts) -> float:
    score = tf.saved_model.load(version_dir).signatures["score"]
    out = score(texts=tf.constant(texts))
    nats = -float(tf.reduce_sum(out["log_likelihood"]))
    return nats / math.log(2) / sum(len(t.encode()) for t in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as root:
        model, tokenizer_path, float_dir = make_run(root)
        quiet = dict(log=lambda _: None)
        int8_dir = export.export(root, f"{root}/export/bench", quantize_weights="int8", **quiet)
        lite = {
            q: litert.export_litert(
                root, f"{root}/export/litert-{q}", prefill_length=16, quantize_weights=q, **quiet
            )
            for q in ("none", "int8")
        }
        onnx_dir = onnx.export_onnx(root, f"{root}/export/onnx", **quiet)
        prompt = [tokenizer.EOS_ID, *tokenizer_ids(tokenizer_path, PROMPT)]
        head_dim = model.hidden_dim // model.num_heads
        shape = [1, model.num_heads, model.max_sequence_length, head_dim]
        formats = {
            "saved_model float32": (float_dir, *saved_model(float_dir, n)),
            "saved_model int8": (int8_dir, *saved_model(int8_dir, n)),
            "litert float32": (lite["none"], *litert_format(lite["none"], n, prompt)),
            "litert int8": (lite["int8"], *litert_format(lite["int8"], n, prompt)),
            "onnx float32": (onnx_dir, *onnx_format(onnx_dir, n, prompt, shape)),
        }
        loads = {name: [] for name in formats}
        tokens = {name: [] for name in formats}
        loaded = {name: load() for name, (_, load, _) in formats.items()}
        for name, (_, _, run) in formats.items():
            run(loaded[name])  # compile / warm up
        for _ in range(args.repeats):
            for name, (_, load, run) in formats.items():
                started = time.perf_counter()
                load()
                loads[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                run(loaded[name])
                tokens[name].append(1000 * (time.perf_counter() - started) / n)
        # 400-character pieces: each stays within the context `score` reads (no truncation).
        text = "".join(p.read_text() for p in sorted(stdlib().glob("*.py"))[-4:])
        held_out = [text[i : i + 400] for i in range(0, min(len(text), 40_000), 400)]
        bpb = {"float32": bits_per_byte(float_dir, held_out), "int8": None}
        bpb["int8"] = bits_per_byte(int8_dir, held_out)
        print(
            f"{model.count_params():,} parameters; batch 1, {n} new tokens, {args.repeats} rounds"
        )
        print(f"{'format':22s} {'size MB':>9s} {'load s':>16s} {'ms/token':>18s}")
        for name, (path, _, _) in formats.items():
            print(
                f"{name:22s} {size(path) / 1e6:9.2f} {spread(loads[name], 2):>16s} "
                f"{spread(tokens[name], 2):>18s}"
            )
        cost = 100 * (bpb["int8"] / bpb["float32"] - 1)
        print(f"bits/byte float32 {bpb['float32']:.4f}, int8 {bpb['int8']:.4f} ({cost:+.2f}%)")
        weights = {d: size(f"{d}/variables") for d in (float_dir, int8_dir)}
        print(f"variables/ int8 / float32: {weights[int8_dir] / weights[float_dir]:.3f}")


def tokenizer_ids(path, text):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=path).encode(text)


def stdlib() -> pathlib.Path:
    return pathlib.Path(sysconfig.get_paths()["stdlib"]) / "email"


def spread(values, digits) -> str:
    low, high = min(values), max(values)
    return f"{statistics.median(values):.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
