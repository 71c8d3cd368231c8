"""The benchmark harness in its smallest form: sections present, ratios right. Not timed."""

from __future__ import annotations

import json

import pytest

from benchmarks import backward_bench, report, run
from benchmarks.common import ratio, summarize
from benchmarks.train_bench import measure, shape_of, token_batches

# tokens/s each fake contender reports; the tfllm rows decide every training ratio below.
RATES = {
    "tfllm": 3000.0,
    "tfllm-no-xla": 2500.0,
    "tfllm-mirrored-2": 2700.0,
    "keras-hub-fit": 2000.0,
    "torch-eager": 2400.0,
    "torch-compile": 1500.0,
}


def fake_worker(module: str, args: list[str], timeout: float = 600) -> dict:
    if module == "benchmarks.train_bench":
        rate = RATES[args[0]]
        return {
            "tokens_per_second": rate,
            "chunks_tokens_per_second": [rate, rate * 0.5, rate],
            "first_step_seconds": 5.0,
            "peak_rss_mb": 1000.0,
        }
    section = args[0]
    if section == "peak":
        return {"xla_gflops": summarize([100.0]), "no_xla_gflops": summarize([90.0])}
    if section == "pipeline":
        return {
            "reader_tokens_per_second": summarize([50000.0]),
            "memory_tokens_per_second": summarize([3000.0]),
            "shards_tokens_per_second": summarize([2940.0]),
        }
    return {
        "new_tokens": 128,
        "first_call_ms_per_token": {"tfllm cached (graph)": 9.0, "tfllm uncached (graph)": 20.0},
        "ms_per_token": {
            "tfllm cached (graph)": summarize([2.0]),
            "tfllm uncached (graph)": summarize([10.0]),
        },
    }


def test_summarize_flags_outliers_and_ratio_uses_medians():
    s = summarize([100.0, 104.0, 40.0])
    assert (s["median"], s["min"], s["max"]) == (100.0, 40.0, 104.0)
    assert s["outliers"] == [40.0]
    assert ratio(summarize([6.0]), summarize([3.0])) == 2.0
    assert ratio(None, summarize([3.0])) is None


def test_results_json_has_every_section_and_the_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "run_worker", fake_worker)
    monkeypatch.setattr(run, "has_torch", lambda: True)
    out = tmp_path / "results.json"
    assert run.main(["--out", str(out), "--repetitions", "2"]) == 0
    results = json.loads(out.read_text())
    for key in ("machine", "versions", "peak", "training", "pipeline", "generation", "summary"):
        assert key in results
    assert "load_average_after" in results["machine"]
    summary = results["summary"]
    for size in ("tiny", "small"):
        # Fastest peer is torch-eager (2400): 3000 / 2400.
        assert summary[size]["fastest_peer"] == "torch-eager"
        assert summary[size]["vs_fastest_peer"] == pytest.approx(1.25)
        assert summary[size]["xla_vs_no_xla"] == pytest.approx(1.2)
        assert summary[size]["mirrored_2_vs_single"] == pytest.approx(0.9)
        mfu = 3000.0 * report.flops_per_token(shape_of(size)) / 100e9
        assert summary[size]["mfu_of_xla_peak"]["tfllm"] == pytest.approx(mfu)
    assert summary["pipeline"]["input_stall"] == pytest.approx(0.02)
    assert summary["generation"]["cached_speedup"] == pytest.approx(5.0)
    assert summary["targets"]["input stall (< 0.03)"]["met"] is True
    assert "| small | tfllm |" in report.markdown(results)


def test_without_torch_the_torch_rows_say_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "run_worker", fake_worker)
    monkeypatch.setattr(run, "has_torch", lambda: False)
    results = run.training(quick=True, repetitions=1)
    assert results["tiny"]["contenders"]["torch-eager"] == {"errors": ["not installed"]}
    # One round: the spread comes from the chunks inside the process.
    assert results["tiny"]["contenders"]["tfllm"]["tokens_per_second"]["min"] == 1500.0


def test_every_contender_sees_the_same_batches():
    a, b = token_batches(shape_of("tiny")), token_batches(shape_of("tiny"))
    assert a.shape == (8, 8, 129) and (a == b).all() and a.max() < 2048


def test_tfllm_contender_runs_one_step():
    result = measure("tfllm", "tiny", steps=1, chunks=1)
    assert result["tokens_per_second"] > 0 and result["peak_rss_mb"] > 0


def test_backward_bench_variants_train_alike_and_the_patch_is_undone():
    """The hand-written backward passes and TensorFlow's own differentiation, in the whole
    model: the same loss after two updates. And the comparison leaves tfllm as it was."""
    from tfllm.model import attention, layers, projections

    before = attention.attend_for_training, layers.dense, projections.dense
    hand_written, _ = backward_bench.build("tiny", 1, hand_written=True)
    autodiff, _ = backward_bench.build("tiny", 1, hand_written=False)
    assert (attention.attend_for_training, layers.dense, projections.dense) == before
    assert autodiff == pytest.approx(hand_written, abs=1e-5)
