"""DPO against a reference implementation: PyTorch with TRL's formulas on two tiny Hugging Face
Llama models (tests/golden/make_dpo_golden.py wrote the numbers). The same directories are
rebuilt, imported with `tfllm.convert`, and the batch goes through tfllm's own path: pair
records serialized as prepare writes them, decoded by the training reader, scored by the DPO
objective. Per-pair log-probabilities, each variant's loss (two also with the SFT term) and
rewards, and the gradients of the loss with respect to four named weights must match within
1e-4. Also: distillation's loss
equals a NumPy computation of the same temperature-scaled KL."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from hub_fixtures import write_hf_dir

from tfllm.config import TrainConfig
from tfllm.corpus.preference import _window
from tfllm.data import pairs, records
from tfllm.hub import convert
from tfllm.runs.trained import load_trained
from tfllm.training import distill, dpo

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "dpo_golden.json").read_text())
TOLERANCE = 1e-4
# HF name -> (tfllm variable path, transposed: HF Linear weights are (out, in))
WEIGHTS = {
    "model.norm.weight": ("final_norm/scale", False),
    "model.layers.0.input_layernorm.weight": ("block_0/attention_norm/scale", False),
    "model.layers.1.post_attention_layernorm.weight": ("block_1/mlp_norm/scale", False),
    "model.layers.1.mlp.down_proj.weight": ("block_1/mlp/output_kernel", True),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpo_golden")
    out = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        write_hf_dir(str(root / f"hf_{name}"), "llama", "float32", seed=seed)
        convert.from_hf(str(root / f"hf_{name}"), str(root / name))
        out[name] = load_trained(str(root / name)).model
    return out


def golden_batch():
    """The golden pairs as the reader hands them to the step: (inputs, targets, segments)."""
    window = GOLDEN["window"]
    tokens, segments = [], []
    for number, (prompt, chosen, rejected) in enumerate(GOLDEN["pairs"], start=1):
        (tc, sc), (tr, sr) = (_window(prompt, x, number, window) for x in (chosen, rejected))
        tokens.append(np.concatenate([tc, tr]))
        segments.append(np.concatenate([sc, sr]))
    serialized = records.serialize_windows(np.stack(tokens), np.stack(segments))
    return pairs.decode_pairs(tf.constant(serialized), 2 * window)


def _variable(model, path: str):
    return next(v for v in model.weights if v.path.split("/", 1)[1] == path)


def test_log_probabilities_match(models):
    batch = golden_batch()
    for name in ("policy", "reference"):
        logps, _ = dpo.sequence_logps(models[name], *batch, training=False)
        np.testing.assert_allclose(logps.numpy(), GOLDEN[f"{name}_logps"], atol=TOLERANCE)


@pytest.mark.parametrize("variant", sorted(GOLDEN["variants"]))
def test_loss_rewards_and_gradients_match(models, variant):
    golden = GOLDEN["variants"][variant]
    cfg = TrainConfig(
        dpo_loss=golden["loss"],
        dpo_beta=golden["beta"],
        dpo_label_smoothing=golden["label_smoothing"],
        dpo_sft_weight=golden["sft_weight"],
    )
    batch = golden_batch()
    reference, _ = dpo.sequence_logps(models["reference"], *batch, training=False)
    objective = dpo.DPO(cfg)
    policy = models["policy"]
    variables = [_variable(policy, path) for path, _ in WEIGHTS.values()]
    with tf.GradientTape() as tape:
        total, metrics = objective.loss_sum(policy, (*batch, reference), training=False)
        loss = total / objective.count(batch)
    grads = tape.gradient(loss, variables)
    assert float(loss) == pytest.approx(golden["value"], abs=TOLERANCE)
    rewards = np.array(golden["rewards"])
    pairs_count = len(rewards)
    assert float(metrics["rewards/chosen"]) / pairs_count == pytest.approx(
        rewards[:, 0].mean(), abs=TOLERANCE
    )
    assert float(metrics["rewards/margins"]) / pairs_count == pytest.approx(
        (rewards[:, 0] - rewards[:, 1]).mean(), abs=TOLERANCE
    )
    for (hf_name, (_, transposed)), grad in zip(WEIGHTS.items(), grads, strict=True):
        expected = np.array(golden["grads"][hf_name])
        got = tf.convert_to_tensor(grad).numpy()
        np.testing.assert_allclose(got.T if transposed else got, expected, atol=TOLERANCE)


def test_distillation_kl_matches_numpy():
    """KL(teacher || student) at temperature T, per position, as NumPy computes it."""
    rng = np.random.default_rng(3)
    teacher, student = rng.normal(0, 2, (2, 5, 11)), rng.normal(0, 2, (2, 5, 11))
    temperature = 2.5

    def log_softmax(x):
        x = x / temperature
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_t, log_s = log_softmax(teacher), log_softmax(student)
    expected = (np.exp(log_t) * (log_t - log_s)).sum(-1)
    got = distill.token_kl(tf.constant(teacher, tf.float32), tf.constant(student, tf.float32), 2.5)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_distillation_loss_matches_numpy(models):
    """The whole distillation loss on a batch: (1 - a) CE + a T^2 KL summed over the counted
    targets, with both models' logits recomputed and the mix done in NumPy."""
    inputs, targets, segments = (t[:, 0] for t in golden_batch())  # the chosen rows
    student, teacher = models["policy"], models["reference"]
    alpha, temperature = 0.3, 2.0
    objective = distill.Distillation(teacher, alpha, temperature)
    total, metrics = objective.loss_sum(student, (inputs, targets, segments), training=False)
    s = student(inputs, segment_ids=segments).numpy().astype(np.float64)
    t = teacher(inputs, segment_ids=segments).numpy().astype(np.float64)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    counted = targets.numpy() != -1
    labels = np.where(counted, targets.numpy(), 0)
    ce = -np.take_along_axis(log_softmax(s), labels[..., None], -1)[..., 0]
    log_t, log_s = log_softmax(t / temperature), log_softmax(s / temperature)
    kl = (np.exp(log_t) * (log_t - log_s)).sum(-1)
    expected = ((1 - alpha) * ce + alpha * temperature**2 * kl)[counted].sum()
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["distill/kl"]) == pytest.approx(kl[counted].sum(), rel=1e-5)
    assert float(objective.count((inputs, targets))) == counted.sum()
