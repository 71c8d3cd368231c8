"""FLOPs per token by hand, MFU from a known step time, the peak, the window plan, the line."""

import json

import pytest
import tensorflow as tf
from commands import logged
from conftest import TINY_SHAPE

from tfllm.config import ModelConfig, load_config
from tfllm.errors import ConfigError
from tfllm.model.lm import build_model
from tfllm.observe import flops, profiling
from tfllm.observe.metrics import Reporter
from tfllm.observe.profiling import ProfileWindow

# The test model of conftest.TINY_MODEL: V=512, L=2, H=2, D=32, F=64, SwiGLU, T=32 (Q=16).
TINY = ModelConfig(**TINY_SHAPE)
# configs/gpt2-124m.yaml: V=32768, L=12, H=12, D=768, F=3072, GELU, T=1024 (Q=64).
GPT2 = ModelConfig(
    vocabulary_size=32768,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    intermediate_dim=3072,
    max_sequence_length=1024,
    activation="gelu",
)


def test_parameter_count_matches_the_model():
    # Per block: 4*32*32 + 3*32*64 + 2*32 = 10304; 2 blocks + 512*32 + 32 = 37024.
    assert flops.count_parameters(TINY) == 37024
    assert build_model(TINY).count_params() == 37024  # the tied embedding counted once
    # Per block: 4*768^2 + 2*768*3072 + 2*768 = 7079424; 12 blocks + 32768*768 + 768.
    assert flops.count_parameters(GPT2) == 110119680


def test_flops_per_token_by_hand():
    # 6N = 222144; L*H*Q*T = 2*2*16*32 = 2048.
    assert flops.flops_per_token(TINY, 32) == {
        "palm": 222144 + 12 * 2048,
        "causal": 222144 + 6 * 2048,
    }
    # 6N = 660718080; L*H*Q*T = 12*12*64*1024 = 9437184.
    assert flops.flops_per_token(GPT2, 1024) == {
        "palm": 660718080 + 12 * 9437184,
        "causal": 660718080 + 6 * 9437184,
    }


def test_mfu_from_a_known_step_time():
    # GPT-2 small, batch 256 x 1024 tokens, 1.0 s per step on 8 H100s in bf16.
    per_token = flops.flops_per_token(GPT2, 1024)["palm"]  # 773964288
    peak = flops.Peak(989e12, 8, "H100 bf16 table")
    tokens_per_second = 256 * 1024 / 1.0
    expected = 773964288 * 262144 / (989e12 * 8)  # about 0.0256
    assert flops.mfu(per_token, tokens_per_second, peak.total) == pytest.approx(expected)
    assert expected == pytest.approx(0.02564, abs=1e-5)


def test_peak_from_config_table_or_probe(tmp_path, monkeypatch):
    assert flops.find_peak(2.0e12, "float32", 4).total == 8.0e12
    assert flops.precision_column("mixed_bfloat16") == "bf16"
    assert flops.precision_column("mixed_float16") == "bf16"
    assert flops.precision_column("float32") == "fp32"
    monkeypatch.setattr(flops, "accelerator_name", lambda: "H100")
    peak = flops.find_peak(0.0, "mixed_bfloat16", 8)
    assert peak.per_device == 989e12 and peak.devices == 8 and "H100 bf16" in peak.source
    monkeypatch.undo()
    # On this CPU: measured once, then read from the per-machine cache.
    measured = flops.find_peak(0.0, "float32", 2, cache_dir=str(tmp_path))
    assert measured.source.startswith("measured") and measured.devices == 1
    assert 1e9 < measured.per_device < 1e13
    (cached,) = tmp_path.glob("peak-*.json")
    cached.write_text(json.dumps({"float32_flops": 123.0}))
    assert flops.find_peak(0.0, "float32", 1, cache_dir=str(tmp_path)).per_device == 123.0


def test_profile_window_shortens_the_host_loops_around_it():
    window = ProfileWindow("12,14", "/unused")
    plan, step = [], 0
    while step < 30:
        length = window.loop_length(step, min(10, 30 - step))
        plan.append(length)
        step += length
    assert plan == [10, 1, 1, 1, 1, 10, 6]
    assert ProfileWindow("", "/unused").loop_length(0, 10) == 10
    # Further from the start: the long call ends before the unrecorded warm-up step 19.
    window = ProfileWindow("20,21", "/unused")
    assert [window.loop_length(s, 10) for s in (0, 10, 18, 19, 20, 21)] == [10, 8, 1, 1, 1, 10]
    assert [window.one_step(s) for s in (17, 18, 19, 20, 21)] == [False, True, True, True, False]


def test_a_trace_started_elsewhere_is_seen(tmp_path):
    """The loop marks its steps while any profiler session records, one started here or a
    capture requested from TensorBoard through runtime.profiler_port (the same session)."""
    assert not profiling.recording()
    tf.profiler.experimental.start(str(tmp_path))
    try:
        assert profiling.recording()
    finally:
        tf.profiler.experimental.stop()
    assert not profiling.recording()


def test_profile_steps_are_checked():
    with pytest.raises(ConfigError, match="START,STOP"):
        load_config([], ["train.profile_steps=12"])
    with pytest.raises(ConfigError, match="1 <= START <= STOP"):
        load_config([], ["train.profile_steps=14,12"])


def test_the_training_line_shows_compiling_then_speed_and_mfu(tmp_path):
    """The first host loop compiles (no speed yet); the line that reaches the last step is
    written even inside the interval."""
    peak = flops.Peak(1e9, 1, "test")
    reporter = Reporter(str(tmp_path), 30, 256, {"palm": 1e5, "causal": 1e5}, peak)
    values = {"loss": 5.0, "learning_rate": 0.01, "grad_norm": 1.0, "param_norm": 10.0}
    with logged() as lines:
        reporter.train_progress(10, 10, 5.0, values)
        reporter.train_progress(20, 10, 1.0, values)  # inside the interval: not written
        reporter.train_progress(30, 10, 1.0, values)
    reporter.close()
    progress = [line for line in lines if line.startswith("step ")]
    assert progress[0] == "step 10/30 | loss 5.0000 | compiling | eta ?"
    # 256 tokens in 0.1 s, 1e5 FLOPs each: 2.56e8 FLOP/s of a 1e9 peak
    assert progress[1] == "step 30/30 | loss 5.0000 | MFU 25.6% | 2.6k tok/s | eta 0m00s"
    assert len(progress) == 2


def test_a_call_that_traced_is_no_measure_of_speed(tmp_path):
    """The single-step function's first call (the warm-up before a profile window) is kept out
    of the speed and of the compile-time estimate, like the first call."""
    peak = flops.Peak(1e12, 1, "test")
    reporter = Reporter(str(tmp_path), 30, 256, {"palm": 1.0, "causal": 1.0}, peak)
    values = {"loss": 5.0, "learning_rate": 0.01, "grad_norm": 1.0, "param_norm": 10.0}
    reporter.train_progress(10, 10, 5.0, values)  # compiles
    reporter.train_progress(11, 1, 3.0, values, traced=True)
    assert reporter.compile_seconds is None
    reporter.train_progress(21, 10, 1.0, values)  # 0.1 s a step: 5.0 - 10 * 0.1 compiling
    assert reporter.compile_seconds == pytest.approx(4.0)
    reporter.close()
