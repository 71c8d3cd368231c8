"""The main job's quality, recorded with the commit: validation loss and bits per byte.

    python -m benchmarks quality [--quick] [--rounds R]   # --quick: 300 steps

Runs the user's main job, `python -m tfllm.train` with no arguments (configs/tiny.yaml, the
built-in stdlib corpus, 2,000 steps; the data is prepared first), in a fresh directory, then
`python -m tfllm.eval --tasks stdlib_bpb,english_bpb` on its final checkpoint. `--quick`
runs a shortened variant (`--set train.steps=300`, evaluated every 75 steps). The figures: the
validation loss at each evaluation (read from the run's TensorBoard files), the bits per byte
of both tasks and the seconds; the harness records them with the commit, machine and
versions. Quality does not depend on the machine's load (the data order and the seeds are
fixed); the seconds do.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks import records
from benchmarks.common import summarize

RESULTS = records.RESULTS
REPO = pathlib.Path(__file__).resolve().parent.parent
TASKS = "stdlib_bpb,english_bpb"
MAIN_JOB_STEPS = 2000  # configs/tiny.yaml with the defaults: train.steps
QUICK_STEPS = 300  # the quality test's length


def train_command(steps: int) -> list[str]:
    command = [sys.executable, "-m", "tfllm.train"]
    if steps != MAIN_JOB_STEPS:
        every = max(1, steps // 4)
        command += [f"--set=train.steps={steps}", f"--set=train.eval_every={every}"]
        command += [f"--set=train.checkpoint_every={steps}"]
    return command


def validation_losses(workdir: pathlib.Path) -> dict[int, float]:
    """step -> validation loss, from `<workdir>/val/events.*` (tag loss/cross_entropy)."""
    import tensorflow as tf

    losses = {}
    for path in sorted(glob.glob(str(workdir / "val" / "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "loss/cross_entropy":
                    losses[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return dict(sorted(losses.items()))


def run(command: list[str], cwd: pathlib.Path, log: pathlib.Path) -> float:
    """Runs `command` in `cwd` with its output in `log`; returns the seconds it took."""
    paths = filter(None, [str(REPO), os.environ.get("PYTHONPATH")])  # this checkout's tfllm
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    started = time.time()
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"error: {' '.join(command)} exited {done.returncode}: {tail}")
    return time.time() - started


def measure(steps: int, root: pathlib.Path) -> dict:
    """Trains and evaluates in `root` (relative paths of the config land there)."""
    workdir = root / "runs" / "tiny"  # configs/tiny.yaml's runtime.workdir
    train = train_command(steps)
    seconds = run(train, root, root / "train.log")
    evaluate = [sys.executable, "-m", "tfllm.eval", f"--workdir={workdir}", f"--tasks={TASKS}"]
    evaluate.append(f"--output_dir={root / 'eval'}")
    eval_seconds = run(evaluate, root, root / "eval.log")
    rows = json.loads((root / "eval" / f"results-step-{steps}.json").read_text())["results"]
    losses = validation_losses(workdir)
    return {
        "commands": [" ".join(["python", *train[1:]]), " ".join(["python", *evaluate[1:]])],
        "steps": steps,
        "validation_loss": {str(step): round(loss, 4) for step, loss in losses.items()},
        "final_validation_loss": round(losses[max(losses)], 4) if losses else None,
        "bits_per_byte": {
            row["task"]: round(row["value"], 4) for row in rows if row["metric"] == "bits_per_byte"
        },
        "train_seconds": round(seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
    }


def figures(steps: int, rounds: int, root: str | None = None) -> dict:
    """The harness's figures: one row, the main job (or its shortened variant), with the
    validation loss at each evaluation, bits per byte and seconds; `rounds` runs (quality is
    deterministic, so more rounds only repeat the seconds)."""
    runs = []
    for index in range(rounds):
        with tempfile.TemporaryDirectory() as scratch:
            where = pathlib.Path(root, f"round-{index}") if root else pathlib.Path(scratch)
            where.mkdir(parents=True, exist_ok=True)
            runs.append(measure(steps, where))

    def cell(values: list):
        return values[0] if len(set(values)) == 1 else summarize(values)

    first = runs[0]
    row = {
        f"val loss @{k}": cell([r["validation_loss"][k] for r in runs])
        for k in first["validation_loss"]
    }
    for task in first["bits_per_byte"]:
        row[f"{task} bits/byte"] = cell([r["bits_per_byte"][task] for r in runs])
    row["train s"] = cell([r["train_seconds"] for r in runs])
    return {
        "figures": {f"main job, {steps} steps": row},
        "notes": [f"commands: {'; '.join(first['commands'])}"],
        "runs": runs,
    }


def case(rounds: int, quick: bool) -> dict:
    """`python -m benchmarks quality [--quick]`: the main job (300 steps with --quick)."""
    return figures(QUICK_STEPS if quick else MAIN_JOB_STEPS, rounds)
