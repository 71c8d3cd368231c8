"""The main job's quality, recorded with the commit: validation loss and bits per byte.

    PYTHONPATH=. python -m benchmarks.quality_bench [--steps N] [--root DIR] [--label NAME]

Runs the user's main job, `python -m tfllm.train` with no arguments (configs/tiny.yaml, the
built-in stdlib corpus, 2,000 steps; the data is prepared first), in a fresh directory, then
`python -m tfllm.eval --tasks stdlib_bpb,english_bpb` on its final checkpoint. `--steps N`
runs a shortened variant (`--set train.steps=N`, evaluated every N // 4 steps). Records the
validation loss at each evaluation (read from the run's TensorBoard files), the bits per byte
of both tasks, the commands, the commit, the machine and the versions as JSON in
`benchmarks/results/<date>-quality[-label].json`. Quality does not depend on the machine's
load (the data order and the seeds are fixed); the seconds do.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks.common import machine, versions

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
REPO = pathlib.Path(__file__).resolve().parent.parent
TASKS = "stdlib_bpb,english_bpb"
MAIN_JOB_STEPS = 2000  # configs/tiny.yaml with the defaults: train.steps


def commit() -> dict:
    """The checkout's commit, and whether tfllm/ has changes not committed."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--short", "tfllm"))}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=MAIN_JOB_STEPS, help="train.steps (default: the main job)"
    )
    parser.add_argument("--root", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--label", default="", help="appended to the result file's name")
    parser.add_argument("--out", default=None, help="result JSON (default: results/DATE-quality)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise SystemExit(f"error: --steps must be at least 1, got {args.steps}")
    before = machine()
    with tempfile.TemporaryDirectory() as scratch:
        root = pathlib.Path(args.root or scratch)
        root.mkdir(parents=True, exist_ok=True)
        result = measure(args.steps, root)
    record = {
        "benchmark": "quality",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **commit(),
        "label": args.label,
        **result,
        "machine": {**machine(), "load_average_before": before["load_average"]},
        "versions": versions(),
    }
    name = f"{datetime.date.today().isoformat()}-quality{'-' + args.label if args.label else ''}"
    out = pathlib.Path(args.out) if args.out else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("validation_loss", "bits_per_byte")}))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
