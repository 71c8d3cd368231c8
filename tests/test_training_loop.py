"""A short training run whose loss falls, and resume: N steps, stop, run again to 2N."""

import functools
import math

import numpy as np
import pytest
import tensorflow as tf
from commands import logged

from tfllm.config import load_config
from tfllm.corpus.prepare import prepare as build_data
from tfllm.model.lm import build_model
from tfllm.runs.checkpoint import Checkpointer
from tfllm.training import loop
from tfllm.training.optim import make_optimizer

pytestmark = pytest.mark.slow  # trains

# As `tfllm.train` does: prepare the data first when it is missing.
train = functools.partial(loop.train, build_data=build_data)


def final_weights(cfg):
    """The weights of the newest checkpoint in cfg's workdir."""
    model = build_model(cfg.model)
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    Checkpointer(cfg.runtime.workdir, model, optimizer, 3).restore_latest()
    return [v.numpy() for v in model.trainable_variables], int(optimizer.iterations.numpy())


def weight_difference(expected_cfg, got_cfg) -> tuple[float, int, int]:
    """Max abs difference between the final weights of two runs, and each run's final step."""
    expected, expected_step = final_weights(expected_cfg)
    got, got_step = final_weights(got_cfg)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got, strict=True))
    return diff, expected_step, got_step


def read_scalars(logdir, tag):
    values = {}
    for path in tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_loss_falls_and_everything_is_written(make_config, tmp_path):
    cfg = make_config("train.steps=60", "train.eval_every=30", "train.checkpoint_every=30")
    with logged() as lines:
        result = train(cfg)
    workdir = tmp_path / "run"
    losses = read_scalars(workdir / "train", "loss/cross_entropy")
    assert sorted(losses) == [10, 20, 30, 40, 50, 60]
    assert losses[60] < losses[10] - 1.0, losses
    val = read_scalars(workdir / "val", "loss/cross_entropy")
    assert sorted(val) == [30, 60]
    assert val[60] < math.log(cfg.model.vocabulary_size) - 1.0  # far below a uniform guess
    assert result["val_loss"] == pytest.approx(val[60], rel=1e-6)
    # Traced once, not per step; the single-step function only runs under the profiler.
    assert result["traces"] == {"train_loop": 1, "train_step": 0, "gradients": 1, "eval": 1}
    assert load_config([str(workdir / "config.yaml")]) == cfg
    assert sorted(p.name for p in (workdir / "checkpoints").glob("*.index")) == [
        "ckpt-30.index",
        "ckpt-60.index",
    ]
    assert any(line.startswith("sample: ") for line in lines)


def test_resume_carries_on_exactly(make_config, tmp_path):
    common = ("train.eval_every=20", "train.checkpoint_every=20")
    straight = make_config("train.steps=40", *common, workdir=tmp_path / "straight")
    train(straight)

    again = make_config("train.steps=40", *common, workdir=tmp_path / "resumed")
    train(again, stop_after=20)
    with logged() as lines:
        train(again)
    assert any("resumed from" in line and "at step 20" in line for line in lines)

    diff, expected_step, got_step = weight_difference(straight, again)
    assert got_step == expected_step == 40
    print(f"resume vs uninterrupted: max abs weight difference {diff:.3g}")
    assert diff <= 1e-6
    losses = read_scalars(tmp_path / "resumed" / "train", "loss/cross_entropy")
    assert sorted(losses) == [10, 20, 30, 40]  # the curve carries on from step 20


def test_lost_checkpoint_state_file_is_rebuilt(make_config, tmp_path):
    cfg = make_config("train.steps=10", "train.checkpoint_every=10")
    train(cfg)
    (tmp_path / "run" / "checkpoints" / "checkpoint").unlink()
    with logged() as lines:
        train(make_config("train.steps=20"))
    assert any("rebuilt the 'checkpoint' state file" in line for line in lines), lines
    assert any("at step 10" in line for line in lines), lines
