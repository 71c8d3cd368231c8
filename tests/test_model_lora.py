"""LoRA and packed positions on the model: a fresh adapter changes nothing, merging changes
nothing, a step moves adapters only, one device and MirroredStrategy agree, and a document
packed second sees the positions it would see alone."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfllm.config import load_config
from tfllm.model import lora
from tfllm.model.lm import build_model
from tfllm.training.optim import make_optimizer
from tfllm.training.steps import Steps
from tfllm.validation import LORA_TARGETS

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from distributed_run import TINY, train_tiny  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
GQA = ["model.num_key_value_heads=1"]  # the (D, H + 2 KV, K) QKV layout


ALL = ",".join(LORA_TARGETS)


def _model(*overrides, rank=4, targets=ALL):
    cfg = load_config([], [*TINY, *overrides])
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    train = dataclasses.replace(cfg.train, lora_rank=rank, lora_targets=targets, lora_alpha=8.0)
    return cfg, model, train


def _tokens(seed=0, shape=(2, 16)):
    return tf.constant(np.random.default_rng(seed).integers(0, 64, shape), tf.int32)


@pytest.mark.parametrize("overrides", [[], GQA], ids=["fused_qkv", "gqa"])
def test_fresh_adapters_leave_logits_and_merge_keeps_them(overrides):
    _, model, train = _model(*overrides)
    tokens = _tokens()
    base = model(tokens).numpy()
    adapters = lora.attach(model, train)
    np.testing.assert_array_equal(model(tokens).numpy(), base)  # B = 0: exactly the base
    rng = np.random.default_rng(1)
    for b in adapters.trainable[1::2]:
        b.assign(rng.normal(0, 0.5, b.shape).astype("float32"))
    unmerged = model(tokens).numpy()
    assert np.max(np.abs(unmerged - base)) > 1e-2  # every target moved the logits
    adapters.merge()
    merged = model(tokens).numpy()
    print(f"max |merged - unmerged| = {np.max(np.abs(merged - unmerged)):.2g}")
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)


def test_only_targeted_slices_get_a_delta():
    _, model, train = _model(targets="k")
    attention = model.blocks[0].attention
    before = attention.qkv_kernel.numpy().reshape(32, 3, 2, 16)
    adapters = lora.attach(model, train)
    for b in adapters.trainable[1::2]:
        b.assign(tf.ones(b.shape))
    adapters.merge()
    after = attention.qkv_kernel.numpy().reshape(32, 3, 2, 16)
    np.testing.assert_array_equal(after[:, [0, 2]], before[:, [0, 2]])  # q and v untouched
    assert np.max(np.abs(after[:, 1] - before[:, 1])) > 0.1
    assert model.blocks[0].attention._lora is None  # merged: a plain model again


@pytest.mark.slow  # a training step
def test_a_step_changes_adapters_only():
    cfg, model, train = _model()
    adapters = lora.attach(model, train)
    assert model.trainable_variables == []  # the base is frozen
    before = {v.path: v.numpy() for v in model.weights}
    adapter_before = [v.numpy() for v in adapters.trainable]
    optimizer = make_optimizer(cfg.train, lora.trainable_variables(model))
    steps = Steps(cfg, tf.distribute.get_strategy(), model, optimizer)
    tokens = _tokens(shape=(8, 17))
    batch = tf.data.Dataset.from_tensors((tokens[:, :-1], tokens[:, 1:])).repeat()
    steps.train_loop(iter(batch), tf.constant(2))
    for v in model.weights:
        np.testing.assert_array_equal(v.numpy(), before[v.path])
    changed = [
        not np.array_equal(a, v.numpy())
        for a, v in zip(adapter_before, adapters.trainable, strict=True)
    ]
    assert all(changed[1::2])  # every B moved (A's gradient is 0 while B is 0, then not)
    assert len(optimizer.variables) < 3 * len(adapters.trainable) + 5  # slots of adapters only


def test_a_packed_document_sees_the_positions_it_has_alone():
    _, model, _ = _model()
    first, second = _tokens(1, (1, 5)), _tokens(2, (1, 9))
    packed = tf.concat([first, second], axis=1)
    segments = tf.constant([[1] * 5 + [2] * 9], tf.int32)
    logits = model(packed, segment_ids=segments).numpy()
    np.testing.assert_allclose(logits[:, 5:], model(second).numpy(), atol=1e-5)
    np.testing.assert_allclose(logits[:, :5], model(first).numpy(), atol=1e-5)


@pytest.mark.slow  # trains
def test_lora_trains_with_accumulation_and_mixed_precision():
    single, summary, _ = train_tiny(["runtime.strategy=cpu"], lora_rank=4)
    accum, _, _ = train_tiny(["runtime.strategy=cpu", "train.grad_accum_steps=4"], lora_rank=4)
    diff = max(float(np.max(np.abs(single[k] - accum[k]))) for k in single)
    print(f"LoRA grad_accum_steps=4 vs 1: max |diff| = {diff:.2g}")
    assert diff <= 1e-5 and summary["steps"] == 4
    _, bf16, steps = train_tiny(
        ["runtime.strategy=cpu", "train.precision=mixed_bfloat16", "train.learning_rate=0.05"],
        loops=3,
        loop_steps=5,
        distinct_batches=1,
        lora_rank=4,
    )
    print(f"LoRA mixed_bfloat16 loss per host loop {bf16['losses']}")
    assert bf16["losses"][2] < bf16["losses"][0]


@pytest.mark.slow  # two training processes
def test_lora_mirrored_equals_one_device(tmp_path):
    out = tmp_path / "mirrored.npz"
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, str(ROOT / "tests" / "distributed_run.py"), "--out", str(out)]
    args += ["--set", "runtime.strategy=mirrored", "--lora_rank", "4"]
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    single, _, _ = train_tiny(["runtime.strategy=cpu"], lora_rank=4)
    log = process.communicate(timeout=400)[0].decode()
    assert process.returncode == 0, log[-3000:]
    mirrored = dict(np.load(out))
    assert mirrored.keys() == single.keys() and len(single) == 2 * 2 * len(LORA_TARGETS)
    diff = max(float(np.max(np.abs(single[k] - mirrored[k]))) for k in single)
    print(f"LoRA MirroredStrategy (2 logical CPUs) vs one device: max |diff| = {diff:.2g}")
    assert diff <= 1e-5
