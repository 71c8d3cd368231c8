"""Real processes, real signals: SIGTERM, kill -9 and restart, a second writer, NaN policies."""

import functools
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from commands import logged
from test_training_loop import final_weights, read_scalars, weight_difference

from tfllm.config import save_config
from tfllm.corpus import prepare
from tfllm.corpus.prepare import prepare as build_data
from tfllm.data import reader, records, verify
from tfllm.errors import TfllmError
from tfllm.training import loop
from tfllm.training.faults import EXIT_NONFINITE, NonFiniteError

# As `tfllm.train` does: prepare the data first when it is missing.
train = functools.partial(loop.train, build_data=build_data)

pytestmark = pytest.mark.slow  # training processes killed and restarted

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN = ("train.steps=40", "train.steps_per_loop=5", "train.checkpoint_every=10")
RUN += ("train.eval_every=40",)


class TrainProcess:
    """`python -m tfllm.train --config FILE [ARGS]` in a subprocess, its output (stdout and
    stderr) read line by line, with every host loop's progress line (--progress_seconds 0);
    `env` adds environment variables (e.g. TF_CONFIG)."""

    def __init__(self, config_path, *args: str, env: dict | None = None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tfllm.train",
                "--config",
                str(config_path),
                "--progress_seconds",
                "0",
                *args,
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines = []

    def wait_for(self, pattern: str) -> str:
        """Reads until a line matches (the process's own progress lines pace the test)."""
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if re.search(pattern, line):
                return line
        raise AssertionError(f"process ended before {pattern!r}:\n" + "\n".join(self.lines))

    def finish(self, timeout=300) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines()
        return self.proc.returncode

    def kill(self) -> None:
        """Ends the process if it still runs: a failing test leaves no stray trainer behind."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_sigterm_kill9_restart_equals_uninterrupted(make_config, tmp_path):
    straight = make_config(*RUN, workdir=tmp_path / "straight")
    train(straight)
    cfg = make_config(*RUN, workdir=tmp_path / "faulty")
    path = tmp_path / "faulty.yaml"
    save_config(cfg, str(path))

    first = TrainProcess(path)
    first.wait_for(r"^step 5/40")
    # Stopped, the trainer still holds its lock but cannot run to the end while the second
    # writer is tried: on a fast machine 40 steps take less than this process's own setup.
    first.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(TfllmError, match="in use by process"):  # a second writer
            train(cfg)
    finally:
        first.proc.send_signal(signal.SIGTERM)
        first.proc.send_signal(signal.SIGCONT)
    assert first.finish() == 143, "\n".join(first.lines)
    saved = [line for line in first.lines if "signal 15: saved" in line]
    print("SIGTERM:", saved)
    assert saved
    saved_step = int(re.search(r"at step (\d+)", saved[0]).group(1))
    assert 5 <= saved_step < 35, saved[0]

    # The kill must land after the resume point: the second process's first line is the
    # step after the one the SIGTERM saved.
    kill_at = random.Random().choice(range(saved_step + 5, 40, 5))
    second = TrainProcess(path)
    second.wait_for(rf"^step {kill_at}/40")
    second.proc.kill()  # SIGKILL: no handler, no save, the lock stays behind
    assert second.finish() == -signal.SIGKILL

    third = TrainProcess(path)
    assert third.finish() == 0, "\n".join(third.lines)
    assert any("taking over" in line for line in third.lines)
    resumed = [line for line in third.lines if "resumed from" in line]
    print(f"kill -9 at step {kill_at}; {resumed}")
    assert resumed and "at step 0" not in resumed[0]

    diff, expected_step, got_step = weight_difference(straight, cfg)
    assert got_step == expected_step == 40
    print(f"SIGTERM + kill -9 at step {kill_at} vs uninterrupted: max abs weight diff {diff:.3g}")
    assert diff <= 1e-6


# A learning rate this large overflows the weights within a few steps: a real divergence.
DIVERGE = ("train.learning_rate=1.0e+30", "train.steps=10", "train.checkpoint_every=5")
DIVERGE += ("train.steps_per_loop=5", "train.eval_every=10")


def test_nonfinite_stop_writes_diagnostics(make_config, tmp_path):
    cfg = make_config(*DIVERGE)
    with pytest.raises(NonFiniteError, match="non-finite loss") as err:
        train(cfg)
    print(err.value)
    assert err.value.exit_code == EXIT_NONFINITE
    (report_path,) = (tmp_path / "run").glob("nonfinite-step-*.json")
    report = json.loads(report_path.read_text())
    assert {"step", "batch_fingerprint", "loss", "gradient_norms"} <= set(report)
    assert not np.isfinite(report["loss"]) or report["nonfinite_gradients"]
    assert len(report["gradient_norms"]) == len(final_weights(cfg)[0])


def test_nonfinite_skip_leaves_weights_unchanged(make_config):
    cfg = make_config(*DIVERGE, "train.on_nonfinite=skip")
    with logged() as lines:
        result = train(cfg)
    print(result, [line for line in lines if "skipped" in line])
    assert result["step"] == 10 and result["skipped_steps"] > 0
    weights, step = final_weights(cfg)
    assert step == 10  # the counter still moves: it is the data position
    assert all(np.isfinite(w).all() for w in weights)


def test_nonfinite_rollback_is_bounded(make_config):
    cfg = make_config(*DIVERGE, "train.on_nonfinite=rollback", "train.max_rollbacks=2")
    with logged() as lines, pytest.raises(NonFiniteError, match="rollbacks used up"):
        train(cfg)
    rollbacks = [line for line in lines if "rolled back to" in line]
    print("\n".join(rollbacks))
    assert len(rollbacks) == 2
    assert all("skipping data up to step" in line for line in rollbacks)


def poison_step(cfg, step: int) -> None:
    """Rewrites the training shards so that the global batch of `step` is all padding (segment
    id 0 everywhere, `data.packing=document`): no target counts, so the step's loss is 0/0, a
    NaN that comes from the data alone. The manifest is updated to match."""
    directory = prepare.data_dir(cfg)
    manifest = records.read_manifest(directory)
    shards = verify.check_split(directory, manifest, "train", "size", "error")
    size = cfg.train.global_batch_size
    stream = reader.global_records(shards, cfg.train.seed, cfg.data.shuffle_buffer, step * size)
    victims = {record.numpy() for record in stream.take(size)}
    zeros = np.zeros(manifest["window_len"], np.int64)
    padding = records.serialize_window(zeros, zeros)
    replaced = 0
    for entry in manifest["splits"]["train"]["shards"]:
        path = os.path.join(directory, entry["file"])
        old = [record.numpy() for record in tf.data.TFRecordDataset(path)]
        if victims.isdisjoint(old):
            continue
        with tf.io.TFRecordWriter(path) as writer:
            for record in old:
                writer.write(padding if record in victims else record)
        replaced += sum(record in victims for record in old)
        entry.update(bytes=os.path.getsize(path), sha256=records.file_sha256(path))
    assert replaced == size
    records.write_manifest(directory, manifest)


def test_nonfinite_rollback_recovers_from_a_poisoned_batch(make_config, tmp_path):
    """One bad batch at step 17: roll back to ckpt-10 once, skip steps 11..17, train to 30."""
    cfg = make_config(
        "data.packing=document",
        f"data.root={tmp_path / 'data'}",
        "train.steps=30",
        "train.steps_per_loop=5",
        "train.checkpoint_every=10",
        "train.eval_every=30",
        "train.on_nonfinite=rollback",
    )
    prepare.prepare(cfg)
    poison_step(cfg, 17)
    with logged() as lines:
        result = train(cfg)
    rollbacks = [line for line in lines if "rolled back to" in line]
    print("\n".join(rollbacks))
    assert len(rollbacks) == 1 and result["rollbacks"] == 1
    assert "at step 17 (loss nan over 0 targets" in rollbacks[0]
    assert "ckpt-10, skipping data up to step 17" in rollbacks[0]
    assert result["step"] == 30 and np.isfinite(result["val_loss"])
    losses = read_scalars(tmp_path / "run" / "train", "loss/cross_entropy")
    print("training loss by step:", {k: round(v, 3) for k, v in sorted(losses.items())})
    assert sorted(losses) == [5, 10, 15, 20, 25, 30] and all(np.isfinite(list(losses.values())))
    weights, step = final_weights(cfg)
    assert step == 30 and all(np.isfinite(w).all() for w in weights)


def test_package_uses_no_unsafe_deserialization():
    banned = re.compile(
        r"\bpickle\b|(?<![\w.])(eval|exec)\(|yaml\.load\(|allow_pickle=True|safe_mode=False"
    )
    hits = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted((ROOT / "tfllm").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if banned.search(line)
    ]
    assert not hits, hits
