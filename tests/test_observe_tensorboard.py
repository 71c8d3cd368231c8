"""One finished run, looked at the way a user does: event files, a TensorBoard server's HTTP
API, the profile plugin's Overview, and the pages themselves in a headless Chromium."""

import functools
import gzip
import json
import math
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from commands import logged
from conftest import TINY_MODEL
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from xprof.convert import raw_to_tool_data

from tfllm.config import load_config
from tfllm.corpus.prepare import prepare as build_data
from tfllm.model.lm import build_model
from tfllm.observe import profiling
from tfllm.training import loop
from tfllm.training.optim import make_optimizer
from tfllm.training.steps import Steps

pytestmark = pytest.mark.slow  # trains, runs TensorBoard and a browser

# As `tfllm.train` does: prepare the data first when it is missing.
train = functools.partial(loop.train, build_data=build_data)

# Every scalar a training run writes on CPU (no device memory, no loss scale in float32),
# grouped by prefix; constants are text and HParams, not series.
TRAIN_TAGS = {
    "loss/cross_entropy",
    "loss/perplexity",
    "perf/tokens_per_second",
    "perf/step_time",
    "perf/mfu",
    "perf/mfu_causal",
    "optim/learning_rate",
    "optim/grad_norm",
    "optim/param_norm",
    "optim/nonfinite_steps",
    "system/host_memory_gb",
}
VAL_TAGS = {"loss/cross_entropy", "loss/perplexity"}
TRAIN_TEXT = {"run/config", "run/constants", "run/compile"}
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
    with logged() as lines:
        result = train(cfg)
    # With the profiler port open every step runs marked, outside the graph host loop.
    assert result["traces"]["train_loop"] == 0 and result["traces"]["train_step"] == 1
    return workdir, port, lines


def test_every_documented_tag_is_written_with_finite_values(run):
    workdir, _, _ = run
    train_events = read_events(workdir / "train")
    assert set(train_events) == TRAIN_TAGS | TRAIN_TEXT
    for tag in TRAIN_TAGS:
        assert all(math.isfinite(float(v)) for v in train_events[tag].values()), tag
    # One point per host-loop call; the call before the window stops at step 10, step 11 runs
    # alone unrecorded (the single-step function's first call), and the window runs one step
    # per call.
    assert sorted(train_events["loss/cross_entropy"]) == [10, 11, 12, 13, 14, 24, 30]
    # The first call compiles: it has no speed, and compilation is reported once, as text.
    assert sorted(train_events["perf/tokens_per_second"]) == [11, 12, 13, 14, 24, 30]
    assert list(train_events["run/compile"]) == [11]
    assert "XLA compilation" in train_events["run/compile"][11].item().decode()
    mfu = float(train_events["perf/mfu"][30])
    assert 0 < mfu < 1
    val_events = read_events(workdir / "val")
    assert set(val_events) == VAL_TAGS | {"sample"}
    sample = val_events["sample"][30].item().decode()
    assert sample.startswith("def ")
    config_text = train_events["run/config"][0].item().decode()
    assert "profile_steps: 12,14" in config_text
    # 37,024 parameters (test_observe_metrics); FLOPs per token by hand there: 246720 and 234432.
    constants = train_events["run/constants"][0].item().decode()
    assert "| parameters | 37,024 |" in constants
    assert "| FLOPs per token (PaLM) | 246,720 |" in constants
    assert "| FLOPs per token (causal) | 234,432 |" in constants
    assert "0.1 TFLOP/s x 1 device(s) (runtime.peak_flops)" in constants


def test_hyperparameters_are_recorded(run):
    workdir, _, _ = run
    root = read_events(workdir)
    assert "_hparams_/session_start_info" in root and "_hparams_/experiment" in root
    found = tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*")
    blob = b"".join(pathlib.Path(p).read_bytes() for p in found)
    for name in (b"model.num_layers", b"train.learning_rate", b"run.parameters"):
        assert name in blob
    assert b"run.flops_per_token_palm" in blob and b"run.peak_flops" in blob


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


def test_a_capture_from_tensorboard_sees_one_marker_per_step(run, tmp_path):
    """What TensorBoard's "Capture profile" button does, against the run's profiler server
    (still up in this process): a remote session records while steps run, and XProf's
    Overview of it has their step times."""
    _, port, _ = run
    cfg = load_config([], TINY_MODEL)
    model = build_model(cfg.model)
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    steps = Steps(cfg, tf.distribute.get_strategy(), model, optimizer)
    windows = np.random.default_rng(0).integers(0, 512, (4, 8, 33), dtype=np.int32)
    iterator = iter(
        tf.data.Dataset.from_tensor_slices(windows).repeat().map(lambda w: (w[:, :-1], w[:, 1:]))
    )
    steps.marked_steps(iterator, 1, 1)  # compiled before the capture, as in a running job
    capture = threading.Thread(
        target=tf.profiler.experimental.client.trace,
        args=(f"grpc://localhost:{port}", str(tmp_path), 3000),
    )
    capture.start()
    deadline = time.time() + 60
    while not profiling.recording() and time.time() < deadline:
        time.sleep(0.01)
    assert profiling.recording()
    steps.marked_steps(iterator, 12, 2)
    capture.join()
    (xplane,) = tmp_path.glob("plugins/profile/*/*.xplane.pb")
    page, _ = raw_to_tool_data.xspace_to_tool_data([str(xplane)], "overview_page", {})
    page = json.loads(page)
    names = [row["c"][0]["v"] for row in page[1]["rows"]]
    # XProf leaves out the first and last step of a longer capture as possibly incomplete.
    assert len(names) >= 10 and set(names) <= {f"train {s}" for s in range(2, 14)}, names
    assert float(page[1]["p"]["steptime_ms_average"]) > 0
    assert "No step marker" not in json.dumps(page[-1])


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
        # The profile plugin gzips its answers whatever the request says.
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return json.loads(body)


@pytest.fixture(scope="module")
def tensorboard(run):
    """A real TensorBoard (with the profile plugin) over the finished run: its base URL."""
    workdir, _, _ = run
    port = free_port()
    executable = pathlib.Path(sys.executable).parent / "tensorboard"
    server = subprocess.Popen(
        [str(executable), "--logdir", str(workdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, tags = time.time() + 90, {}
        while time.time() < deadline and not (
            TRAIN_TAGS <= set(tags.get("train", {})) and "val" in tags
        ):
            try:
                tags = get_json(f"{base}/data/plugin/scalars/tags")
            except OSError:
                pass  # not listening yet
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tensorboard_lists_the_grouped_tags_with_their_values(run, tensorboard):
    workdir, _, _ = run
    tags = get_json(f"{tensorboard}/data/plugin/scalars/tags")
    assert set(tags["train"]) == TRAIN_TAGS and set(tags["val"]) == VAL_TAGS
    # Training and validation loss share a tag, so TensorBoard draws them in one chart.
    for split in ("train", "val"):
        query = urllib.parse.urlencode({"run": split, "tag": "loss/cross_entropy"})
        served = get_json(f"{tensorboard}/data/plugin/scalars/scalars?{query}")
        written = read_events(workdir / split)["loss/cross_entropy"]
        assert {step: value for _, step, value in served} == pytest.approx(
            {step: float(value) for step, value in written.items()}
        )


def overview(tensorboard) -> dict:
    """The Overview page's step-time table for the one captured session."""
    profile = f"{tensorboard}/data/plugin/profile"
    (session,) = get_json(f"{profile}/runs")
    tools = get_json(f"{profile}/run_tools?run={session}")
    assert {"overview_page", "trace_viewer@", "input_pipeline_analyzer"} <= set(tools)
    (host,) = [h["hostname"] for h in get_json(f"{profile}/hosts?run={session}&tag=overview_page")]
    query = f"run={session}&host={host}"
    pages = {
        tool: get_json(f"{profile}/data?{query}&tag={tool}")
        for tool in ("overview_page", "input_pipeline_analyzer")
    }
    return {"session": session, **pages}


def test_profile_overview_has_one_step_time_per_profiled_step(tensorboard):
    pages = overview(tensorboard)
    steps = pages["overview_page"][1]
    assert [row["c"][0]["v"] for row in steps["rows"]] == [
        f"train {s}" for s in range(PROFILE[0], PROFILE[1] + 1)
    ]
    assert float(steps["p"]["steptime_ms_average"]) > 0
    assert all(row["c"][-1]["v"] > 0 for row in steps["rows"])  # each step's time, ms
    warnings = json.dumps(pages["overview_page"][-1])
    assert "No step marker" not in warnings
    # The Input Pipeline Analyzer attributes the host's tf.data work to the steps.
    host_ops = pages["input_pipeline_analyzer"][2]
    assert host_ops["rows"] and float(host_ops["p"]["preprocessing_us"]) > 0


def browser_text(url: str, workdir: pathlib.Path, name: str) -> str:
    """The page as headless Chromium prints it, as text. TensorBoard renders inside shadow
    roots that --dump-dom leaves out; the printed page holds what a user sees."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={workdir / 'chromium'}",
        "--virtual-time-budget=20000",  # lets the page fetch and draw before it is printed
    ]
    pdf = workdir / f"{name}.pdf"
    subprocess.run(
        [chromium, *flags, f"--print-to-pdf={pdf}", url], capture_output=True, timeout=120
    )
    return subprocess.run(
        ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
    ).stdout


def screenshot(url: str, workdir: pathlib.Path, name: str) -> str:
    path = workdir / f"{name}.png"
    subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={workdir / 'chromium'}",
            "--virtual-time-budget=20000",
            "--window-size=1400,1000",
            f"--screenshot={path}",
            url,
        ],
        capture_output=True,
        timeout=120,
    )
    return f"screenshot: {path}"


def test_browser_shows_the_loss_chart_and_the_overview_step_time(tensorboard, tmp_path):
    scalars_url = f"{tensorboard}/#timeseries"
    text = browser_text(scalars_url, tmp_path, "scalars")
    chart = text[text.find("loss/cross_entropy") :]
    assert "loss/cross_entropy" in text, screenshot(scalars_url, tmp_path, "scalars")
    assert "\ntrain" in chart and "\nval" in chart, screenshot(scalars_url, tmp_path, "scalars")
    average = overview(tensorboard)["overview_page"][1]["p"]["steptime_ms_average"]
    profile_url = f"{tensorboard}/#profile"
    text = browser_text(profile_url, tmp_path, "profile")
    assert "Step-time Graph" in text and f"{average} ms" in text, (
        text,
        screenshot(profile_url, tmp_path, "profile"),
    )
    assert "No step marker" not in text, screenshot(profile_url, tmp_path, "profile")
