"""One training loop under every strategy: equivalence, trace counts, precision, remat, errors.

Real strategies, no mocks of TensorFlow. Runs that need 2 logical CPU devices (mirrored) or
TF_CONFIG (multiworker) go to their own processes (`distributed_run.py`); everything else runs
in this process under a one-device strategy.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import portpicker
import pytest
import tensorflow as tf
from commands import logged

from tfllm.config import RuntimeConfig, load_config
from tfllm.errors import ConfigError, StrategyError
from tfllm.training import distribute
from tfllm.training.loop import validate_run

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from distributed_run import TINY, train_tiny  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process and multi-replica training

ROOT = pathlib.Path(__file__).resolve().parent.parent
HELPER = ROOT / "tests" / "distributed_run.py"
TOLERANCE = 1e-5


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _start(out: pathlib.Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, str(HELPER), "--out", str(out)]
    for override in overrides:
        args += ["--set", override]
    with open(f"{out}.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(args, env=env or _env(), stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """Four steps of the same global batches (B=8) under each setup. The runs that need their
    own process start first; the one-device runs go on here meanwhile."""
    tmp = tmp_path_factory.mktemp("distributed")
    ports = [portpicker.pick_unused_port() for _ in range(2)]
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    processes = {"mirrored": _start(tmp / "mirrored.npz", "runtime.strategy=mirrored")}
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        out, env = tmp / f"worker{index}.npz", _env(TF_CONFIG=tf_config)
        processes[f"worker{index}"] = _start(out, "runtime.strategy=multiworker", env=env)
    results = {
        "single": train_tiny(["runtime.strategy=cpu"])[:2],
        "accum": train_tiny(["runtime.strategy=cpu", "train.grad_accum_steps=4"])[:2],
    }
    for name, process in processes.items():
        code = process.wait(timeout=400)
        log = pathlib.Path(f"{tmp / name}.npz.log").read_text()
        assert code == 0, f"{name} failed:\n{log[-3000:]}"
        variables = dict(np.load(tmp / f"{name}.npz"))
        results[name] = (variables, json.loads((tmp / f"{name}.npz.json").read_text()))
    return results


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and a
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.mark.parametrize(
    "name, label",
    [
        ("mirrored", "(a) MirroredStrategy, 2 logical CPU replicas x 4 rows"),
        ("accum", "(b) grad_accum_steps=4, micro-batches of 2 rows"),
        ("worker0", "(c) MultiWorkerMirroredStrategy, 2 local processes, worker 0"),
        ("worker1", "(c) MultiWorkerMirroredStrategy, 2 local processes, worker 1"),
    ],
)
def test_equivalent_to_one_device(runs, name, label):
    reference, ref_summary = runs["single"]
    variables, summary = runs[name]
    diff = _max_abs_diff(reference, variables)
    print(
        f"{label}: max |diff| over {len(variables)} trainable variables after 4 steps = {diff:.3g}"
    )
    assert diff <= TOLERANCE
    assert summary["steps"] == ref_summary["steps"] == 4
    np.testing.assert_allclose(summary["losses"], ref_summary["losses"], rtol=1e-5)
    assert summary["eval_loss"] == pytest.approx(ref_summary["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("name", ["single", "mirrored", "accum", "worker0"])
def test_traces_once_per_shape(runs, name):
    """Two host loops ran: a retrace per call or per step would show up as 2 or more."""
    traces, replicas = runs[name][1]["traces"], runs[name][1]["replicas"]
    print(f"{name}: traces {traces}, {replicas} replica(s)")
    assert traces["train_loop"] == 1
    assert traces["eval"] == traces["gradients"]
    # MirroredStrategy calls the compiled step from one thread per local device, and a
    # tf.function traces once per device; multiworker has one local device per process.
    local_devices = replicas if name == "mirrored" else 1
    assert traces["gradients"] == local_devices


@pytest.mark.parametrize(
    "overrides",
    [["train.precision=mixed_bfloat16"], ["train.precision=mixed_float16"], ["train.remat=true"]],
    ids=["mixed_bfloat16", "mixed_float16", "remat"],
)
def test_trains_with_falling_loss(overrides):
    _, summary, steps = train_tiny(
        [*overrides, "runtime.strategy=cpu", "train.learning_rate=0.01"],
        loops=3,
        loop_steps=5,
        distinct_batches=1,
    )
    losses = summary["losses"]
    print(f"{overrides[0]}: loss per host loop {losses}")
    assert losses[2] < losses[1] < losses[0] and losses[2] < 0.7 * losses[0]
    assert summary["traces"]["gradients"] == 1
    variable_dtypes = {v.dtype for v in steps.model.trainable_variables}
    assert variable_dtypes == {"float32"}
    if overrides[0].startswith("train.precision"):
        assert steps.model.blocks[0].compute_dtype == overrides[0].split("=mixed_")[1]


def test_float16_loss_scaling_skips_overflowing_steps(tmp_path):
    """A loss scale of 1e38 overflows float16: the step is skipped and the scale halved. The
    skip is reported as `loss_scale_skipped_steps` and survives a checkpoint round trip, so a
    resumed run knows its step (iterations + skipped) and its data position."""
    cfg = load_config([], [*TINY, "train.precision=mixed_float16", "runtime.strategy=cpu"])
    from tfllm.model.lm import build_model
    from tfllm.runs.checkpoint import Checkpointer
    from tfllm.training.loop import loop_values
    from tfllm.training.optim import completed_steps, make_optimizer
    from tfllm.training.steps import Steps

    model = build_model(cfg.model, cfg.train.precision)
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    optimizer.dynamic_scale.assign(1e38)
    before = [v.numpy() for v in model.trainable_variables]
    steps = Steps(cfg, tf.distribute.get_strategy(), model, optimizer)
    tokens = tf.zeros((8, 16), tf.int32)
    out = steps.train_loop(iter(tf.data.Dataset.from_tensors((tokens, tokens))), tf.constant(1))
    assert int(optimizer.skipped_steps.numpy()) == 1
    assert int(optimizer.iterations.numpy()) == 0
    assert float(optimizer.dynamic_scale.numpy()) == pytest.approx(5e37, rel=1e-6)
    for old, variable in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(old, variable.numpy())
    values = loop_values(float(out["loss"]), out["grad_norm"], model, optimizer)
    assert values["loss_scale_skipped_steps"] == 1
    assert values["loss_scale"] == pytest.approx(5e37, rel=1e-6)

    Checkpointer(str(tmp_path), model, optimizer, keep=2).save(completed_steps(optimizer))
    model = build_model(cfg.model, cfg.train.precision)
    restored = make_optimizer(cfg.train, model.trainable_variables)
    assert Checkpointer(str(tmp_path), model, restored, keep=2).restore_latest()
    assert int(restored.skipped_steps.numpy()) == 1 and completed_steps(restored) == 1
    assert float(restored.dynamic_scale.numpy()) == pytest.approx(5e37, rel=1e-6)


def test_bad_runs_fail_before_compiling():
    cfg = load_config([], TINY)
    with pytest.raises(ConfigError, match="divisible by replicas \\(3\\)"):
        validate_run(cfg, replicas=3)
    validate_run(cfg, replicas=2)  # 8 rows: 4 per replica
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum_steps"):
        load_config([], [*TINY, "train.grad_accum_steps=3"])
    with pytest.raises(ConfigError, match="steps_per_loop must be at least 1"):
        load_config([], [*TINY, "train.steps_per_loop=0"])
    with pytest.raises(ConfigError, match="runtime.strategy must be one of"):
        load_config([], [*TINY, "runtime.strategy=horovod"])
    with pytest.raises(ConfigError, match="train.remat needs model.dropout 0"):
        load_config([], [*TINY, "train.remat=true", "model.dropout=0.1"])
    with pytest.raises(ConfigError, match="train.precision must be one of"):
        load_config([], [*TINY, "train.precision=float16"])


def test_strategies_that_cannot_start_say_why(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("TPU_NAME", raising=False)
    with pytest.raises(StrategyError, match="found neither TF_CONFIG nor a Slurm job"):
        distribute.make_strategy(RuntimeConfig(strategy="multiworker"))
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"index": 0}}')
    with pytest.raises(StrategyError, match="bad TF_CONFIG"):
        distribute.make_strategy(RuntimeConfig(strategy="multiworker"))
    monkeypatch.delenv("TF_CONFIG")
    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(StrategyError, match="--strategy=gpu: no GPU found"):
            distribute.make_strategy(RuntimeConfig(strategy="gpu"))
    if not distribute._on_tpu_vm():
        with pytest.raises(StrategyError, match="no TPU given"):
            distribute.make_strategy(RuntimeConfig(strategy="tpu"))


def test_auto_says_what_it_chose(monkeypatch):
    for name in ("TF_CONFIG", "SLURM_JOB_ID", "TPU_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert distribute.choose(RuntimeConfig()) == ("tpu", "a TPU is configured ('my-tpu')")
    monkeypatch.delenv("TPU_NAME")
    cluster = {"worker": ["h1:1", "h2:2"]}
    task = {"type": "worker", "index": 1}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    assert distribute.choose(RuntimeConfig()) == ("multiworker", "TF_CONFIG describes 2 workers")
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distribute.choose(RuntimeConfig())[0] == "multiworker"
    monkeypatch.delenv("SLURM_JOB_ID")
    if not tf.config.list_physical_devices("GPU") and not distribute._on_tpu_vm():
        with logged() as lines:
            strategy = distribute.make_strategy(RuntimeConfig())
        assert lines[0] == "strategy: auto chose cpu (no TPU, no cluster, no GPU)"
        assert strategy.num_replicas_in_sync == 1


@pytest.mark.skipif(distribute._on_tpu_vm(), reason="a TPU VM has the hardware")
def test_tpu_path_fails_with_one_line():
    """`--strategy=tpu --tpu=local` goes through TPUClusterResolver and TPU initialisation, and
    stops where the hardware is missing: one line on stderr, exit code 2."""
    result = subprocess.run(
        [sys.executable, "-m", "tfllm.train", "--strategy=tpu", "--tpu=local"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert errors == [errors[0]] and "--strategy=tpu: no TPU found at 'local'" in errors[0]
    print(errors[0])
