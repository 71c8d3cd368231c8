"""DPO under MultiWorkerMirroredStrategy equals one device: two `python -m tfllm.train` worker
processes on localhost ports (TF_CONFIG), typed as a user types them, run the same 4 steps as
one `tfllm.dpo` run on one device, with the reference log-probabilities precomputed.

The workers read their own copy of the dataset, prepared here once (two workers preparing one
directory would race), with no reference table yet: both compute it and only the chief writes
it (two workers renaming one temporary file crashed the loser), and it equals the one-device
run's table."""

from __future__ import annotations

import glob
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import portpicker
import pytest
from preference_task import dpo_options, random_task
from test_training_dpo import METRICS, _weights, tensorboard

import tfllm
from tfllm.config import load_config, save_config
from tfllm.corpus import prepare
from tfllm.data import layout

pytestmark = pytest.mark.slow  # three training processes
ROOT = pathlib.Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5  # weights, absolute; step losses, relative


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return random_task(tmp_path_factory.mktemp("dpo_multiworker"))


def start_workers(config: pathlib.Path, workdir: pathlib.Path) -> list[subprocess.Popen]:
    addresses = [f"localhost:{portpicker.pick_unused_port()}" for _ in range(2)]
    workers = []
    for index in range(2):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(tf_config)}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        args = [sys.executable, "-m", "tfllm.train", "--config", str(config)]
        args += ["--strategy=multiworker", "--set", f"runtime.workdir={workdir}"]
        with open(f"{workdir}-worker{index}.log", "w") as log:  # the child keeps its handle
            workers.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env))
    return workers


def finish(workers: list[subprocess.Popen], workdir: pathlib.Path) -> None:
    try:
        codes = [worker.wait(timeout=600) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs = [pathlib.Path(f"{workdir}-worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)


def reference_tables(data_root: pathlib.Path) -> list[str]:
    return sorted(glob.glob(f"{data_root}/**/reference-logps-*", recursive=True))


# Full DPO: its reference table is what two workers raced on. LoRA's reference (the base with
# adapters off) under a distribution strategy is tests/test_training_dpo.py's mirrored run.
def test_two_workers_equal_one_device(task):
    root, base = task
    name = "mw"
    options = dpo_options(root, steps=4, learning_rate=1e-2)
    single = tfllm.dpo(base, data=str(root / "pairs.jsonl"), workdir=str(root / name), **options)

    workdir, data_root = root / f"{name}_workers", root / f"{name}_workers_data"
    cfg = load_config([f"{single.workdir}/config.yaml"], [f"data.root={data_root}"])
    prepare.ensure_prepared(cfg)
    config = root / f"{name}_workers.yaml"
    save_config(cfg, str(config))
    assert reference_tables(data_root) == []
    finish(start_workers(config, workdir), workdir)

    (table,) = reference_tables(data_root)  # one file, no temporary left behind
    (expected,) = reference_tables(pathlib.Path(single.workdir) / "data")
    got, want = (
        np.asarray(json.loads(pathlib.Path(p).read_text())["logps"]) for p in (table, expected)
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert os.path.basename(table) == os.path.basename(expected)
    assert layout.data_dir(cfg).startswith(str(data_root))

    expected_weights, got_weights = _weights(single.workdir), _weights(str(workdir))
    diff = max(
        float(np.max(np.abs(expected_weights[k] - got_weights[k]))) for k in expected_weights
    )
    print(f"DPO, 2 workers vs one device: max |diff| {diff:.3g}")
    assert diff <= TOLERANCE
    # The chief alone writes events: one file per directory, each scalar once.
    for split in ("train", "val"):
        assert len(list((workdir / split).glob("events.*"))) == 1, split
    assert len(list(workdir.glob("events.*"))) == 1  # the hyperparameters
    one, two = tensorboard(single.workdir), tensorboard(str(workdir))
    assert set(METRICS) <= set(two)
    assert two["loss"][1] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    assert sorted(two["loss"]) == sorted(one["loss"]) == [1, 2, 3, 4]
    for step, loss in one["loss"].items():
        assert two["loss"][step] == pytest.approx(loss, rel=TOLERANCE)
