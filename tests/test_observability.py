"""One finished run, looked at the way a user does: event files, TensorBoard, the profiler."""

import gzip
import json
import math
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import tensorflow as tf
from conftest import TINY_MODEL
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from tfllm.config import load_config
from tfllm.training.loop import train

# Every scalar a training run writes on CPU (no device memory, no loss scale in float32).
TRAIN_TAGS = {
    "loss",
    "perplexity",
    "learning_rate",
    "grad_norm",
    "param_norm",
    "tokens_per_second",
    "step_time",
    "flops_per_token_palm",
    "flops_per_token_causal",
    "mfu_palm",
    "mfu_causal",
    "nonfinite_steps",
    "host_memory_gb",
    "compile_seconds",
}
VAL_TAGS = {"loss", "perplexity"}
PROFILE = (12, 14)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_events(logdir) -> dict[str, dict[int, object]]:
    """{tag: {step: value}} from every event file in `logdir` (not its subdirectories)."""
    found: dict[str, dict[int, object]] = {}
    for path in tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_dir, data_root):
    """30 steps in host loops of 10, profiling steps 12-14, with a profiler server."""
    workdir = tmp_path_factory.mktemp("observed") / "run"
    port = free_port()
    cfg = load_config(
        [],
        [
            *TINY_MODEL,
            "data.name=tiny-test",
            f"data.source={corpus_dir}",
            f"data.root={data_root}",
            f"runtime.workdir={workdir}",
            "train.steps=30",
            "train.eval_every=30",
            "train.checkpoint_every=30",
            f"train.profile_steps={PROFILE[0]},{PROFILE[1]}",
            "runtime.peak_flops=1.0e+11",
            f"runtime.profiler_port={port}",
        ],
    )
    lines = []
    train(cfg, log=lines.append)
    return workdir, port, lines


def test_every_documented_tag_is_written_with_finite_values(run):
    workdir, _, _ = run
    train_events = read_events(workdir / "train")
    assert TRAIN_TAGS <= set(train_events), TRAIN_TAGS - set(train_events)
    for tag in TRAIN_TAGS:
        assert all(math.isfinite(float(v)) for v in train_events[tag].values()), tag
    # One point per host-loop call; the call before the window stops at step 11, and the
    # window runs one step per call.
    assert sorted(train_events["loss"]) == [10, 11, 12, 13, 14, 24, 30]
    # The first call compiles: it has no speed, and compilation is reported once.
    assert sorted(train_events["tokens_per_second"]) == [11, 12, 13, 14, 24, 30]
    assert len(train_events["compile_seconds"]) == 1
    mfu = float(train_events["mfu_palm"][30])
    assert 0 < mfu < 1
    val_events = read_events(workdir / "val")
    assert VAL_TAGS <= set(val_events)
    sample = val_events["sample"][30].item().decode()
    assert sample.startswith("def ")
    config_text = train_events["config"][0].item().decode()
    assert "profile_steps: 12,14" in config_text


def test_hyperparameters_are_recorded(run):
    workdir, _, _ = run
    root = read_events(workdir)
    assert "_hparams_/session_start_info" in root and "_hparams_/experiment" in root
    found = tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*")
    blob = b"".join(pathlib.Path(p).read_bytes() for p in found)
    assert b"model.num_layers" in blob and b"train.learning_rate" in blob


def xplane_steps(path: pathlib.Path) -> list[int]:
    """step_num of every "train" annotation in a captured trace."""
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    steps = []
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                if plane.event_metadata[event.metadata_id].name != "train":
                    continue
                stats = {names[s.metadata_id]: s for s in event.stats}
                steps.append(int(stats["step_num"].int64_value or stats["step_num"].uint64_value))
    return sorted(steps)


def test_profile_window_captures_exactly_the_requested_steps(run):
    workdir, _, lines = run
    traces = list((workdir / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert xplane_steps(traces[0]) == list(range(PROFILE[0], PROFILE[1] + 1))


def test_profiler_server_listens(run):
    _, port, lines = run
    assert any(f"profiler server on port {port}" in line for line in lines)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read()
        # The profile plugin gzips its answers whatever the request says.
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return json.loads(body)


def test_tensorboard_serves_the_scalars_and_the_profile(run):
    workdir, _, _ = run
    port = free_port()
    tensorboard = pathlib.Path(sys.executable).parent / "tensorboard"
    server = subprocess.Popen(
        [str(tensorboard), "--logdir", str(workdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline, tags = time.time() + 90, {}
        while time.time() < deadline:
            try:
                tags = get_json(f"{base}/scalars/tags")
                if TRAIN_TAGS <= set(tags.get("train", {})) and "val" in tags:
                    break
            except OSError:
                pass  # not listening yet, or still loading
            time.sleep(1)
        assert TRAIN_TAGS <= set(tags.get("train", {})), tags
        assert VAL_TAGS <= set(tags["val"])
        runs = get_json(f"{base}/profile/runs")
        assert len(runs) == 1, runs
    finally:
        server.terminate()
        server.wait(timeout=30)
