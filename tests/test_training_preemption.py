"""Multi-worker preemption with real processes and real signals: SIGTERM one of two
MultiWorkerMirroredStrategy workers on localhost; both save at one agreed step and exit 143;
restarting both finishes the run with the weights of an uninterrupted one."""

import functools
import json
import re
import signal
import time

import portpicker
import pytest
from test_training_faults import TrainProcess
from test_training_loop import weight_difference

from tfllm.config import save_config
from tfllm.corpus import prepare
from tfllm.corpus.prepare import prepare as build_data
from tfllm.errors import TfllmError
from tfllm.training import loop

# As `tfllm.train` does: prepare the data first when it is missing.
train = functools.partial(loop.train, build_data=build_data)

pytestmark = pytest.mark.slow  # training processes sent signals

# PCH polls the signal flag once a second and saves one host loop after the next boundary:
# 400 steps of 4-step loops (about 9 ms a step here) leave room for that after the signal.
# One checkpoint at the end only, so the preemption's checkpoint is the one new one.
STEPS = 400
RUN = (f"train.steps={STEPS}", "train.steps_per_loop=4", f"train.checkpoint_every={STEPS}")
RUN += (f"train.eval_every={STEPS}",)
SAVED = re.compile(r"(signal 15|a peer worker was preempted): saved \S+ at step (\d+)")


class Cluster:
    """Two `python -m tfllm.train --strategy=multiworker` workers on localhost ports."""

    def __init__(self, config_path):
        workers = [f"localhost:{portpicker.pick_unused_port()}" for _ in range(2)]
        self.workers = [
            TrainProcess(
                config_path,
                "--strategy=multiworker",
                env={
                    "TF_CONFIG": json.dumps(
                        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
                    )
                },
            )
            for i in range(2)
        ]

    def finish(self) -> list[int]:
        return [worker.finish() for worker in self.workers]

    def log(self) -> str:
        return "\n\n".join(
            f"worker {i}:\n" + "\n".join(w.lines[-40:]) for i, w in enumerate(self.workers)
        )

    def kill(self) -> None:
        for worker in self.workers:
            worker.kill()


def run_cluster(config_path) -> tuple[list[int], Cluster]:
    cluster = Cluster(config_path)
    try:
        return cluster.finish(), cluster
    finally:
        cluster.kill()


def test_sigterm_one_worker_all_save_at_one_step_and_resume(make_config, tmp_path):
    straight = make_config(*RUN, workdir=tmp_path / "straight")
    prepare.ensure_prepared(straight)  # once, not by two racing workers
    save_config(straight, str(tmp_path / "straight.yaml"))
    started = time.time()
    codes, cluster = run_cluster(tmp_path / "straight.yaml")
    assert codes == [0, 0], cluster.log()
    print(f"uninterrupted 2-worker run: {time.time() - started:.1f}s")

    cfg = make_config(*RUN, workdir=tmp_path / "preempted")
    path = tmp_path / "preempted.yaml"
    save_config(cfg, str(path))
    started = time.time()
    cluster = Cluster(path)
    try:
        chief, other = cluster.workers
        line = other.wait_for(r"^step \d+/")
        # The chief holds the workdir lock for the job: a second trainer is refused.
        holder = json.loads((tmp_path / "preempted" / "train.lock").read_text())
        assert holder["pid"] == chief.proc.pid
        with pytest.raises(TfllmError, match=f"in use by process {chief.proc.pid}"):
            train(cfg)
        other.proc.send_signal(signal.SIGTERM)  # the non-chief: the chief must save anyway
        codes = cluster.finish()
    finally:
        cluster.kill()
    print(f"SIGTERM to worker 1 after {line.strip()!r}; preempted run {time.time() - started:.1f}s")
    assert codes == [143, 143], cluster.log()
    saves = [SAVED.findall("\n".join(w.lines)) for w in cluster.workers]
    print("saves:", saves)
    assert saves[0] and saves[1] and saves[0][0][0] == "a peer worker was preempted"
    assert saves[1][0][0] == "signal 15"
    (step0,), (step1,) = ({int(s) for _, s in found} for found in saves)
    assert step0 == step1 < STEPS
    markers = sorted(p.name for p in (tmp_path / "preempted" / "checkpoints").glob("*.done.json"))
    assert markers == [f"ckpt-{step0}.done.json"]
    assert not list((tmp_path / "preempted" / "checkpoints").glob("scratch-*"))

    started = time.time()
    codes, cluster = run_cluster(path)
    assert codes == [0, 0], cluster.log()
    print(f"resumed 2-worker run: {time.time() - started:.1f}s")
    for worker in cluster.workers:
        assert any("resumed from" in x and f"at step {step0}" in x for x in worker.lines)

    diff, expected_step, got_step = weight_difference(straight, cfg)
    assert got_step == expected_step == STEPS
    print(f"2 workers, SIGTERM at step {step0} + restart vs uninterrupted: max abs diff {diff:.3g}")
    assert diff <= 1e-6


def test_sigint_to_the_chief_stops_both_at_one_step(make_config, tmp_path):
    """The chief is the signalled one (it writes the checkpoint as well as deciding), and the
    signal is SIGINT: the chief exits 130, its peer 143, after one save at one step."""
    cfg = make_config(*RUN, workdir=tmp_path / "interrupted")
    prepare.ensure_prepared(cfg)
    path = tmp_path / "interrupted.yaml"
    save_config(cfg, str(path))
    cluster = Cluster(path)
    try:
        chief, _ = cluster.workers
        chief.wait_for(r"^step \d+/")
        chief.proc.send_signal(signal.SIGINT)
        codes = cluster.finish()
    finally:
        cluster.kill()
    assert codes == [130, 143], cluster.log()
    saved = re.compile(r"(signal 2|a peer worker was preempted): saved \S+ at step (\d+)")
    (chief_save,), (peer_save,) = (saved.findall("\n".join(w.lines)) for w in cluster.workers)
    assert chief_save[0] == "signal 2" and peer_save[0] == "a peer worker was preempted"
    assert chief_save[1] == peer_save[1]
    markers = sorted(p.name for p in (tmp_path / "interrupted" / "checkpoints").glob("*.done.json"))
    assert markers == [f"ckpt-{chief_save[1]}.done.json"]
