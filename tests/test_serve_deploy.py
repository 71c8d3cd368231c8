"""Deployment beyond the float32 SavedModel: int8 weights, the per-row batching signature,
LiteRT and ONNX, each checked against the in-process model on the tiny fixture run."""

from __future__ import annotations

import functools
import json
import re

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf
import tiny_run
from commands import run_main
from conftest import TINY_SHAPE

from tfllm.config import ModelConfig
from tfllm.model.lm import build_model
from tfllm.serve import batching, litert, quantize, steps
from tfllm.tokenizers.tokenizer import load_tokenizer, specials

PROMPTS = ["def ", "", "import numpy as np\nx = np.", "class A:\n", "for i in range(", "x = "]
TOKEN_IDS = [[2, 17, 260, 5, 99, 7], [2, 300, 301, 302, 4, 9]]
# Weights of std 0.5 give logits up to about 6; int8 rounding moves them by at most this.
INT8_LOGITS_TOLERANCE = 0.35
# LiteRT's int8 (the converter's dynamic-range mode) also rounds activations to int8 on the fly.
# Measured here: max 0.61 over 17 positions x 512 logits, mean well under 0.1.
LITERT_INT8_TOLERANCE = 1.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run"))


@pytest.fixture(scope="module")
def int8_dir(run, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("int8") / "tiny")
    code = run_main(
        "export", ["--workdir", run.workdir, "--export_dir", base, "--quantize", "int8"]
    )
    assert code == 0
    return f"{base}/1"


@functools.cache
def _session(version_dir: str):
    """The export as TF Serving loads it: a TF1 session, tensors fed by name."""
    graph = tf.Graph()
    sess = tf.compat.v1.Session(graph=graph)
    with graph.as_default():  # only while loading: the tests themselves stay eager
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
    return sess, meta_graph.signature_def


def _session_run(version_dir: str, signature_name: str, inputs: dict) -> dict:
    sess, signatures = _session(version_dir)
    signature = signatures[signature_name]
    feed = {signature.inputs[key].name: value for key, value in inputs.items()}
    fetch = {key: info.name for key, info in signature.outputs.items()}
    return sess.run(fetch, feed)


def test_int8_export_is_smaller_records_its_scheme_and_keeps_logits(run, int8_dir):
    record = json.loads(tf.io.gfile.GFile(f"{int8_dir}/{quantize.QUANTIZATION_ASSET}").read())
    assert record["scheme"] == quantize.SCHEME
    assert len(record["int8"]) == 1 + 4 * run.cfg.model.num_layers  # embedding + 4 per block
    assert all(path.endswith("scale") for path in record["float32"])
    size = {
        name: tf.io.gfile.stat(f"{path}/variables/variables.data-00000-of-00001").length
        for name, path in (("float32", run.version_dir), ("int8", int8_dir))
    }
    assert size["int8"] < 0.32 * size["float32"]  # int8 plus one float scale per channel

    loaded = tf.saved_model.load(int8_dir)
    ids = tf.constant(TOKEN_IDS)
    logits = loaded.signatures["logits"](token_ids=ids)["logits"].numpy()
    # The first call dequantized into the float32 variables (saved empty), this one reads them.
    np.testing.assert_array_equal(loaded.signatures["logits"](token_ids=ids)["logits"], logits)
    assert all(
        weight.numpy().shape == variable.shape
        for weight, variable in zip(loaded.int8.floats, loaded.int8.values, strict=True)
    )
    reference = run.model(ids).numpy()
    assert np.abs(logits - reference).max() < INT8_LOGITS_TOLERANCE
    assert np.abs(reference).max() > 3.0  # the tolerance is small against the logits
    # Greedy agreement is measured on a trained model (test_serve_deploy_trained.py): with random
    # weights (std 0.5) near-ties make it depend on which corpus the fixture's tokenizer saw.


@pytest.mark.parametrize("quantized", [False, True])
def test_each_signature_graph_is_saved_once(run, int8_dir, quantized):
    """A function traced outside `tf.saved_model.save` and again inside it (its save context is
    part of the trace key) is stored twice: on the small config a 7.5 MB graph instead of 4.0,
    and int8's export 30.6% of float32's instead of 28.3%."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(
        f"{int8_dir if quantized else run.version_dir}/saved_model.pb", "rb"
    ) as f:
        saved_model.ParseFromString(f.read())
    names = [f.signature.name for f in saved_model.meta_graphs[0].graph_def.library.function]
    for function in ("generate", "generate_rows", "score", "logits"):
        assert len([n for n in names if re.fullmatch(f"__inference_{function}_[0-9]+", n)]) == 1
    assert len([n for n in names if n.startswith("while_body_")]) == 2  # the two generates


def test_tf1_session_loader_runs_the_int8_export(run, int8_dir):
    out = _session_run(int8_dir, "serving_default", {"prompts": PROMPTS[:2]})  # defaults only
    assert out["tokens"].shape == (2, run.cfg.train.sample_tokens)
    logits = _session_run(int8_dir, "logits", {"token_ids": TOKEN_IDS})["logits"]
    loaded = tf.saved_model.load(int8_dir).signatures["logits"]
    np.testing.assert_allclose(
        logits, loaded(token_ids=tf.constant(TOKEN_IDS))["logits"].numpy(), atol=1e-5
    )


def test_batched_rows_equal_per_row_scalar_calls(run):
    knobs = {
        "max_new_tokens": [8, 3, 12, 1, 6, 10],
        "temperature": [0.0, 0.8, 1.3, 0.0, 0.5, 2.0],
        "top_k": [0, 40, 0, 5, 10, 0],
        "top_p": [1.0, 0.9, 0.5, 1.0, 1.0, 0.95],
        "seed": [0, 7, 3, 1, 12345, 99],
    }
    out = _session_run(run.version_dir, "generate_batched", {"prompts": PROMPTS, **knobs})
    assert out["tokens"].shape == (len(PROMPTS), max(knobs["max_new_tokens"]))
    for row, prompt in enumerate(PROMPTS):
        scalar = _session_run(
            run.version_dir,
            "serving_default",
            {"prompts": [prompt], **{key: values[row] for key, values in knobs.items()}},
        )
        count = knobs["max_new_tokens"][row]
        np.testing.assert_array_equal(out["tokens"][row, :count], scalar["tokens"][0])
        assert (out["tokens"][row, count:] == 0).all()  # PAD after the row's own limit
        assert out["completions"][row] == scalar["completions"][0]


def test_batching_parameters_are_written_beside_the_export(run):
    text = tf.io.gfile.GFile(f"{run.version_dir}/{batching.BATCHING_FILE}").read()
    # BatchingParameters in protobuf text format: one wrapped value per line.
    parsed = dict(
        re.fullmatch(r"(\w+) \{ value: (\w+) \}", line).groups() for line in text.split("\n")[:-1]
    )
    assert parsed == {key: str(value) for key, value in batching.BATCHING_PARAMETERS.items()}


def _litert_greedy(model_path: str, prompt_ids: list[int], steps: int, prefill_length: int):
    """The reference device loop of the README: prefill once, then one decode call per token."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=model_path)
    prefill = interpreter.get_signature_runner("prefill")
    decode = interpreter.get_signature_runner("decode")
    cache = {
        name: np.zeros(detail["shape"], np.float32)
        for name, detail in prefill.get_input_details().items()
        if name.startswith("kv_cache_")
    }
    count = len(prompt_ids)
    tokens = np.zeros((1, prefill_length), np.int32)
    tokens[0, :count] = prompt_ids  # right padding: masked until decode overwrites it
    out = prefill(tokens=tokens, input_pos=np.arange(prefill_length, dtype=np.int32), **cache)
    prefill_logits = out["logits"][0, :count]
    logits, generated, step_logits = out["logits"][0, count - 1], [], []
    for position in range(count, count + steps):
        cache = {name: out[name] for name in cache}
        token = int(np.argmax(logits))
        generated.append(token)
        out = decode(
            tokens=np.array([[token]], np.int32),
            input_pos=np.array([position], np.int32),
            **cache,
        )
        logits = out["logits"][0, 0]
        step_logits.append(logits)
    return generated, prefill_logits, np.stack(step_logits)


@pytest.mark.parametrize("quantize_weights", ["none", "int8"])
def test_litert_prefill_and_16_decode_steps_match_the_model(run, tmp_path, quantize_weights):
    base = str(tmp_path / "litert")
    version_dir = litert.export_litert(
        run.workdir,
        base,
        batch=1,
        prefill_length=8,
        cache_length=tiny_run.SEQ,
        quantize_weights=quantize_weights,
    )
    tokens = json.loads(open(f"{version_dir}/{litert.TOKENS_FILE}").read())
    assert tokens["kv_cache"][:2] == ["kv_cache_k_0", "kv_cache_v_0"]
    sp = sentencepiece.SentencePieceProcessor(model_file=f"{version_dir}/tokenizer.model")
    rule = specials(load_tokenizer(run.tokenizer_path))
    assert tokens["start_ids"] == list(rule.start)  # the SavedModel's prompt rule
    prompt = tokens["start_ids"] + sp.encode("def f(")
    generated, prefill_logits, step_logits = _litert_greedy(
        f"{version_dir}/{litert.MODEL_FILE}", prompt, 16, 8
    )
    sequence = np.array([prompt + generated], np.int32)
    reference = run.model(sequence).numpy()[0]
    tolerance = 1e-4 if quantize_weights == "none" else LITERT_INT8_TOLERANCE
    np.testing.assert_allclose(prefill_logits, reference[: len(prompt)], atol=tolerance)
    np.testing.assert_allclose(step_logits, reference[len(prompt) :], atol=tolerance)
    assert np.abs(step_logits - reference[len(prompt) :]).mean() < tolerance / 10
    if quantize_weights == "none":  # greedy tokens: the in-process cached decode loop
        expected, length = run.generator.generate_ids(["def f("], max_new_tokens=16)
        count = min(16, int(length[0]) + 1)  # through the EOS that ended it, if any
        assert generated[:count] == expected.numpy()[0, :count].tolist()


def test_litert_export_needing_select_tf_ops_fails_naming_the_op(run):
    # Sampling in the graph: the stateless Philox draw has no TFLite built-in kernel.
    @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32, name="logits")])
    def sample(logits):
        noise = tf.random.stateless_uniform([1, 8], seed=[1, 2])
        return {"token": tf.argmax(logits + noise, axis=-1, output_type=tf.int32)}

    with pytest.raises(
        litert.LiteRTError, match=r"TFLITE_BUILTINS: .*tf\.StatelessRandomUniformV2"
    ):
        litert.convert(tf.Module(), {"decode": sample.get_concrete_function()})


def test_onnx_logits_and_decode_match_tensorflow(run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from tfllm.serve import onnx

    version_dir = onnx.export_onnx(run.workdir, str(tmp_path / "onnx"))
    ids = np.array(TOKEN_IDS, np.int32)
    session = onnxruntime.InferenceSession(f"{version_dir}/logits.onnx")
    (logits,) = session.run(["logits"], {"token_ids": ids})
    np.testing.assert_allclose(logits, run.model(ids).numpy(), atol=1e-4)

    # Prefill then a greedy loop over decode.onnx, against tfllm's cached decode loop.
    decode = onnxruntime.InferenceSession(f"{version_dir}/decode.onnx")
    names = [output.name for output in decode.get_outputs()]
    shape = [1, run.model.kv_heads, tiny_run.SEQ, run.model.head_dim]
    sp = sentencepiece.SentencePieceProcessor(model_file=f"{version_dir}/tokenizer.model")
    prompt = [2, *sp.encode("class A:\n")]
    inputs = [tensor.name for tensor in decode.get_inputs()]
    feed = {name: np.zeros(shape, np.float32) for name in inputs if name.startswith("kv_cache")}
    feed.update(
        tokens=np.array([prompt], np.int32), input_pos=np.arange(len(prompt), dtype=np.int32)
    )
    generated, step_logits = [], []
    for position in range(len(prompt), len(prompt) + 12):
        out = dict(zip(names, decode.run(names, feed), strict=True))
        step_logits.append(out["logits"][0, -1])
        generated.append(int(np.argmax(out["logits"][0, -1])))
        feed = {name: out[onnx.PRESENT + name] for name in feed if name.startswith("kv_cache")}
        feed.update(
            tokens=np.array([[generated[-1]]], np.int32), input_pos=np.array([position], np.int32)
        )
    reference = run.model(np.array([prompt + generated], np.int32)).numpy()[0]
    np.testing.assert_allclose(np.stack(step_logits), reference[len(prompt) - 1 : -1], atol=1e-4)
    expected, length = run.generator.generate_ids(["class A:\n"], max_new_tokens=12)
    count = min(12, int(length[0]) + 1)
    assert generated[:count] == expected.numpy()[0, :count].tolist()


def test_step_function_of_a_grouped_query_model_matches_the_model():
    """The cache of the ONNX and LiteRT step function holds the key/value heads only: with
    grouped queries (4 query heads, 2 key/value heads), prefill and decode steps give the
    model's own logits."""
    model = build_model(ModelConfig(**{**TINY_SHAPE, "num_heads": 4, "num_key_value_heads": 2}))
    step = steps.step_function(model, batch=1, cache_length=16)
    flat = [tf.zeros(spec.shape) for spec in steps.cache_spec(model, 1, 16)]
    ids = np.arange(3, 11, dtype=np.int32)[None]  # (1, 8)
    expected = model(ids).numpy()
    out = step(ids[:, :5], tf.range(5), *flat)
    np.testing.assert_allclose(out["logits"].numpy(), expected[:, :5], atol=1e-5)
    for position in range(5, 8):
        flat = [out[name] for name in steps.cache_names(model.config.num_layers)]
        out = step(ids[:, position : position + 1], tf.constant([position]), *flat)
        np.testing.assert_allclose(out["logits"][0, 0], expected[0, position], atol=1e-5)
