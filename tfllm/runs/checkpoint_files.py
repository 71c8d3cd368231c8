"""The on-disk layout of `<workdir>/checkpoints`: names, completion markers, TF's state file.

`ckpt-N.index` + `ckpt-N.data-*` are TF's files; `ckpt-N.done.json`, written last, publishes
them. Everything here reads files as plain bytes first, since any of them may be damaged: a
reason for refusing a checkpoint is raised as `Unusable` (the checkpointer then tries an older
one), never as TF's own error.
"""

from __future__ import annotations

import json
import os
import posixpath
import re

import tensorflow as tf

from tfllm.files import write_atomically

MARKER_SUFFIX = ".done.json"
STATE_FILE = "checkpoint"
_STEP = re.compile(r"^ckpt-(\d+)(?:[._]|$)")
# Test-only: `TFLLM_TEST_EXIT_IN_SAVE=<point>:<step>` ends the process with os._exit(99) at that
# point of the save of that step, to prove that a kill anywhere in a save leaves the previous
# checkpoint usable.
SAVE_POINTS = ("before_write", "after_write", "after_marker", "after_state")


class Unusable(Exception):
    """Why one checkpoint cannot be restored (restore then tries the next older one)."""


def prefix(directory: str, step: int) -> str:
    return posixpath.join(directory, f"ckpt-{step}")


def step_of(name: str) -> int | None:
    match = _STEP.match(name.rstrip("/"))
    return int(match.group(1)) if match else None


def files_of(directory: str, step: int) -> list[str]:
    """The names of every file of ckpt-`step`, marker included."""
    names = tf.io.gfile.listdir(directory) if tf.io.gfile.isdir(directory) else []
    return sorted(n.rstrip("/") for n in names if step_of(n) == step)


def steps_on_disk(directory: str) -> list[int]:
    """Every step with any `ckpt-N*` file, complete or not, newest first."""
    if not tf.io.gfile.isdir(directory):
        return []
    steps = {step_of(n) for n in tf.io.gfile.listdir(directory)}
    return sorted((s for s in steps if s is not None), reverse=True)


def read_marker(directory: str, step: int) -> dict:
    path = prefix(directory, step) + MARKER_SUFFIX
    if not tf.io.gfile.exists(path):
        raise Unusable("no completion marker (the save did not finish)")
    try:
        with tf.io.gfile.GFile(path) as f:
            marker = json.load(f)
        return {
            "step": int(marker["step"]),
            "model": marker["model"],
            "files": marker["files"],
            "weights_only": bool(marker.get("weights_only", False)),
            "base": marker.get("base"),
        }
    except (ValueError, KeyError, TypeError) as err:
        raise Unusable(f"unreadable completion marker: {err}") from None


def verify(directory: str, step: int, marker: dict) -> None:
    """Raises Unusable unless every file matches the marker and every tensor reads back."""
    for name, size in marker["files"].items():
        path = posixpath.join(directory, name)
        if not tf.io.gfile.exists(path):
            raise Unusable(f"{name} is missing")
        actual = tf.io.gfile.stat(path).length
        if actual != size:
            raise Unusable(f"{name} has {actual} bytes, the marker says {size}")
    try:
        # Reading every tensor checks its CRC32C before any variable is touched.
        reader = tf.train.load_checkpoint(prefix(directory, step))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError) as err:
        raise Unusable(f"tensors do not read back: {first_line(err)}") from None


def state_file_steps(directory: str) -> set[int]:
    """Steps named in TF's state file, read as plain text since it may be damaged."""
    path = posixpath.join(directory, STATE_FILE)
    if not tf.io.gfile.exists(path):
        return set()
    with tf.io.gfile.GFile(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return {int(s) for s in re.findall(r"ckpt-(\d+)", text)}


def write_state_file(directory: str, steps: list[int]) -> None:
    """Writes TF's CheckpointState text proto (what `tf.train.latest_checkpoint` reads) with
    paths relative to the directory, atomically. Written by hand: the only public writer,
    `tf.compat.v1.train.update_checkpoint_state`, prints a deprecation warning."""
    names = [f"ckpt-{s}" for s in sorted(steps)]
    text = f'model_checkpoint_path: "{names[-1]}"\n' + "".join(
        f'all_model_checkpoint_paths: "{name}"\n' for name in names
    )
    write_atomically(posixpath.join(directory, STATE_FILE), text)


def first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def remove(path: str) -> None:
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    else:
        tf.io.gfile.remove(path)


def test_exit_point(point: str, step: int) -> None:
    if os.environ.get("TFLLM_TEST_EXIT_IN_SAVE") == f"{point}:{step}":
        os._exit(99)
