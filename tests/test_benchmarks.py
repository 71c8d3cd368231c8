"""The benchmark harness: cases run as the user types them, records written and rendered, the
contenders' smallest measurements (not timed against anything)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from benchmarks import __main__ as harness
from benchmarks import backward_bench, records, shapes, train_bench
from benchmarks.common import Seconds, alternate, keras_hub_fit, ratio, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def benchmarks(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )  # fmt: skip


def test_summarize_flags_outliers_and_ratio_uses_medians():
    s = summarize([100.0, 104.0, 40.0])
    assert (s["median"], s["min"], s["max"]) == (100.0, 40.0, 104.0)
    assert s["outliers"] == [40.0]
    assert ratio(summarize([6.0]), summarize([3.0])) == 2.0
    assert ratio(None, summarize([3.0])) is None


def test_every_case_names_a_function_of_its_module():
    for name, case in harness.CASES.items():
        module = importlib.import_module(f"benchmarks.{case.module}")
        assert callable(getattr(module, case.function)), name


@pytest.mark.slow  # the case's command as a subprocess
def test_a_case_writes_its_record_and_render_makes_the_page(tmp_path):
    done = benchmarks("peak", "--quick", "--results", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    (path,) = tmp_path.glob("*-peak-quick.json")
    record = json.loads(path.read_text())
    assert record["command"] == f"python -m benchmarks peak --quick --results {tmp_path}"
    assert record["case"] == "peak" and record["parameters"] == {"rounds": 1, "quick": True}
    assert len(record["commit"]) >= 40 and "load_average_after" in record["machine"]
    assert set(record["versions"]) >= {"tensorflow", "keras", "keras-hub"}
    xla = record["figures"]["XLA"]["GFLOP/s"]
    assert xla["median"] > 0 and xla["runs"] == [xla["median"]]
    assert "| XLA |" in done.stdout
    page = tmp_path / "page.md"
    done = benchmarks("render", "--results", str(tmp_path), "--page", str(page))
    assert done.returncode == 0, done.stderr[-2000:]
    text = page.read_text()
    assert "## peak" in text and f"`results/{path.name}`" in text and "| XLA |" in text


def test_rounds_below_one_is_refused_and_nothing_written(tmp_path):
    done = benchmarks("peak", "--rounds", "0", "--results", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: --rounds")
    assert not list(tmp_path.iterdir())


def test_render_takes_the_newest_full_run_over_quick_ones(tmp_path):
    def record(date: str, quick: bool, value: float) -> None:
        r = records.start("peak", "python -m benchmarks peak", {"rounds": 1, "quick": quick})
        r["date"] = date
        records.finish(r, {"figures": {"XLA": {"GFLOP/s": summarize([value])}}}, tmp_path)

    record("2026-01-01T00:00:00+00:00", False, 111.0)
    record("2026-01-02T00:00:00+00:00", True, 222.0)
    page = records.render(records.load(tmp_path), {"peak": "the peak"})
    assert "111 (111-111)" in page and "222" not in page
    record("2026-01-03T00:00:00+00:00", False, 333.0)
    assert "333 (333-333)" in records.render(records.load(tmp_path), {"peak": "the peak"})


def test_alternate_reverses_every_other_round_and_takes_a_contenders_own_seconds():
    order = []
    variants = {
        "a": lambda: order.append("a"),
        "b": lambda: (order.append("b"), Seconds(0.5))[1],
    }
    rates = alternate(variants, 2, work=100.0)
    assert order == ["a", "b", "b", "a"] and rates["b"] == [200.0, 200.0]


def test_every_contender_sees_the_same_batches():
    a, b = (shapes.token_batches(shapes.gpt("tiny")) for _ in range(2))
    assert a.shape == (8, 8, 129) and (a == b).all() and a.max() < 2048


@pytest.mark.slow  # a training step of a benchmark model
def test_tfllm_contender_runs_one_step():
    result = train_bench.worker("tfllm", "tiny", steps=1, chunks=1)
    assert result["tokens_per_second"] > 0 and result["peak_rss_mb"] > 0


@pytest.mark.slow  # keras-hub compiles and trains a model
def test_keras_hub_fit_is_timed_per_step_by_its_own_callback():
    """`fit_steps` returns the seconds its steps took (the callback synced every step), less
    than the wall time of the call, which includes `fit`'s set-up."""
    import time

    from benchmarks.common import gpt2_backbone

    shape = shapes.gpt("tiny")
    fit_steps = keras_hub_fit(gpt2_backbone(shape, shape["seq_len"]), shapes.token_batches(shape))
    fit_steps(1)
    started = time.perf_counter()
    seconds = fit_steps(3)
    assert isinstance(seconds, Seconds) and 0 < seconds < time.perf_counter() - started


@pytest.mark.slow  # training steps
def test_backward_bench_variants_train_alike_and_the_patch_is_undone():
    """The hand-written backward passes and TensorFlow's own differentiation, in the whole
    model: the same loss after two updates. And the comparison leaves tfllm as it was."""
    from tfllm.model import attention, layers, projections

    before = attention.attend_for_training, layers.dense, projections.dense
    hand_written, _ = backward_bench.build("tiny", 1, hand_written=True)
    autodiff, _ = backward_bench.build("tiny", 1, hand_written=False)
    assert (attention.attend_for_training, layers.dense, projections.dense) == before
    assert autodiff == pytest.approx(hand_written, abs=1e-5)


def test_hlo_counts_read_xlas_own_optimized_module():
    """`step-hlo` counts kernels in XLA's text: here a module XLA optimized itself."""
    import tensorflow as tf

    from benchmarks import hlo_bench

    def step(x, w):
        return tf.nn.softmax(tf.transpose(x @ w) * 2.0)

    x, w = tf.ones([64, 32]), tf.ones([32, 16])
    text = tf.function(step, jit_compile=True).experimental_get_compiler_ir(x, w)(
        stage="optimized_hlo"
    )
    row = hlo_bench.count(text)
    assert row["unfused dots"] + row["custom fusions (library dots)"] == 1
    assert row["fusions"] >= 1 and row["kernels (fusions + unfused ops)"] >= 2
    assert row["instructions in fusions"] > row["fusions"]


def test_profile_kinds_group_xla_dots_fusions_and_tf_ops():
    from benchmarks.profile_bench import kind

    assert kind("MatMul_1.18") == kind("ynn_fusion.3") == "dots (XLA)"
    assert kind("transpose_copy_fusion.51") == "transpose_copy_fusion"
    assert kind("while/body/_1/while/cond/then/_282/while/cond/adam") == "TF op adam"
    assert kind("L2Loss_3:L2Loss") == "TF op L2Loss"
