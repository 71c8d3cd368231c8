"""Checkpoints on disk: corruption of each kind, kills during a save, model mismatch, the lock.

Each test writes two real checkpoints of the tiny model (ckpt-1, ckpt-2, told apart by the
step and by one weight), damages the files as a crash or a bad disk would, and restores.
"""

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from commands import logged
from conftest import TINY_MODEL

from tfllm.config import load_config, save_config
from tfllm.errors import TfllmError
from tfllm.model.lm import build_model
from tfllm.runs.checkpoint import Checkpointer
from tfllm.runs.checkpoint_files import SAVE_POINTS
from tfllm.runs.lock import LOCK_NAME, WorkdirLock
from tfllm.training.optim import make_optimizer

SAVE_TWO = """
import sys
from tfllm.runs.checkpoint import Checkpointer
from tfllm.config import load_config, save_config
from tfllm.model.lm import build_model
from tfllm.training.optim import make_optimizer

cfg = load_config([sys.argv[1]])
model = build_model(cfg.model)
optimizer = make_optimizer(cfg.train, model.trainable_variables)
checkpointer = Checkpointer(
    cfg.runtime.workdir, model, optimizer, 3, model_config=cfg.to_dict()["model"]
)
for step in (1, 2):
    optimizer.iterations.assign(step)
    model.trainable_variables[0].assign_add(1.0)
    checkpointer.save(step)
"""


def restore(cfg):
    """Restores into a fresh model; returns (step or None, first weight, log lines)."""
    model = build_model(cfg.model)
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    checkpointer = Checkpointer(cfg.runtime.workdir, model, optimizer, 3, cfg.to_dict()["model"])
    with logged() as lines:
        path = checkpointer.restore_latest()
    step = int(optimizer.iterations.numpy()) if path else None
    return step, model.trainable_variables[0].numpy(), lines


def save_two(cfg, env=None):
    """ckpt-1 and ckpt-2, saved by a real process (which may be told to die mid-save)."""
    path = f"{cfg.runtime.workdir}.yaml"
    save_config(cfg, path)
    return subprocess.run(
        [sys.executable, "-c", SAVE_TWO, path],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A pristine workdir with ckpt-1 and ckpt-2; tests copy it before damaging it."""
    workdir = tmp_path_factory.mktemp("pristine")
    cfg = load_config([], [*TINY_MODEL, f"runtime.workdir={workdir}"])
    assert save_two(cfg).returncode == 0
    return workdir


@pytest.fixture
def workdir(two_checkpoints, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(two_checkpoints, target)
    return target


def data_file(workdir, step):
    return next((workdir / "checkpoints").glob(f"ckpt-{step}.data-*"))


def flip_bit(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


STATE_DAMAGE = {
    "garbage": lambda d: (d / "checkpoints" / "checkpoint").write_bytes(b"\x00\xffnot { a proto"),
    "empty": lambda d: (d / "checkpoints" / "checkpoint").write_bytes(b""),
    "missing": lambda d: (d / "checkpoints" / "checkpoint").unlink(),
}


@pytest.mark.parametrize("kind", sorted(STATE_DAMAGE))
def test_damaged_state_file_is_rebuilt(kind, workdir, make_config):
    STATE_DAMAGE[kind](workdir)
    step, _, lines = restore(make_config(workdir=workdir))
    print(kind, lines)
    assert step == 2
    assert any("rebuilt the 'checkpoint' state file" in line for line in lines)
    assert "ckpt-2" in (workdir / "checkpoints" / "checkpoint").read_text()


DATA_DAMAGE = {
    "truncated": (
        lambda d: data_file(d, 2).write_bytes(data_file(d, 2).read_bytes()[:100]),
        "bytes",
    ),
    "zero-byte": (lambda d: data_file(d, 2).write_bytes(b""), "has 0 bytes"),
    "bit-flipped": (lambda d: flip_bit(data_file(d, 2)), "do not read back"),
    "index missing": (lambda d: (d / "checkpoints" / "ckpt-2.index").unlink(), "index is missing"),
    "marker missing": (
        lambda d: (d / "checkpoints" / "ckpt-2.done.json").unlink(),
        "no completion marker",
    ),
}


@pytest.mark.parametrize("kind", sorted(DATA_DAMAGE))
def test_damaged_newest_checkpoint_falls_back(kind, workdir, make_config):
    damage, reason = DATA_DAMAGE[kind]
    damage(workdir)
    step, weight, lines = restore(make_config(workdir=workdir))
    print(kind, lines)
    assert step == 1
    assert any(line.startswith("checkpoint: skipping ckpt-2") and reason in line for line in lines)
    _, pristine, _ = restore(make_config(workdir=workdir))
    np.testing.assert_array_equal(weight, pristine)  # fully restored, not half of ckpt-2


def test_nothing_usable_is_a_clear_stop(workdir, make_config):
    for step in (1, 2):
        data_file(workdir, step).write_bytes(b"")
    with pytest.raises(TfllmError, match="refusing to start from step 0") as err:
        restore(make_config(workdir=workdir))
    print(err.value)
    assert "ckpt-2: " in str(err.value) and "ckpt-1: " in str(err.value)


def test_other_model_shape_is_refused_naming_keys(workdir, make_config):
    cfg = make_config("model.hidden_dim=64", "model.num_layers=3", workdir=workdir)
    with pytest.raises(TfllmError, match="different model") as err:
        restore(cfg)
    print(err.value)
    assert "model.hidden_dim: checkpoint 32, config 64" in str(err.value)
    assert "model.num_layers: checkpoint 2, config 3" in str(err.value)


@pytest.mark.slow  # training processes killed mid-save
@pytest.mark.parametrize("point", SAVE_POINTS)
def test_kill_during_save_keeps_previous_checkpoint(point, make_config, tmp_path):
    cfg = make_config()
    run = save_two(cfg, env={"TFLLM_TEST_EXIT_IN_SAVE": f"{point}:2"})
    assert run.returncode == 99, run.stderr[-2000:]
    step, _, lines = restore(cfg)
    print(point, "->", step, lines)
    # Before the marker is in place ckpt-2 is not published; after it, it is complete.
    assert step == (1 if point in ("before_write", "after_write") else 2)


def test_second_writer_is_refused_and_dead_lock_taken_over(tmp_path):
    with WorkdirLock(str(tmp_path)):
        with pytest.raises(TfllmError, match=f"in use by process {os.getpid()}"):
            WorkdirLock(str(tmp_path)).__enter__()
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=10)
    (tmp_path / LOCK_NAME).write_text(
        f'{{"pid": {dead.pid}, "host": "{socket.gethostname()}", "since": 0}}'
    )
    with logged() as lines, WorkdirLock(str(tmp_path)):
        assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_NAME).read_text()
    assert any(f"from dead process {dead.pid}" in line for line in lines)
    assert not (tmp_path / LOCK_NAME).exists()
