"""The evaluation stage: a workdir's checkpoint or an exported SavedModel, the tasks, and the
results as a console table, a JSON file and TensorBoard scalars.

    <output_dir>/results-step-<N>.json    (an export: results-v<version>.json; a later eval of
                                          the same step: results-step-<N>-2.json, ...)
    <output_dir>/events.*                 scalars `<task>/<metric>` at the checkpoint's step

The default output_dir is `<workdir>/eval` (TensorBoard shows it next to train/ and val/), or
`<export_dir>/eval` for an export (TF Serving ignores directories that are not versions).
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import time

import tensorflow as tf

import tfllm
from tfllm import logs
from tfllm.cli import DEFAULT_CONFIG
from tfllm.config import load_config
from tfllm.errors import TfllmError
from tfllm.eval import builtin, tasks
from tfllm.eval.engine import Engine, model_engine
from tfllm.eval.scoring import run_task
from tfllm.runs.trained import load_trained

logger = logging.getLogger(__name__)

# Which export signature each task kind needs.
_SIGNATURES = {
    "loglikelihood": "logits",
    "loglikelihood_rolling": "logits",
    "multiple_choice": "logits",
    "generate_until": "serving_default",
}


def is_export(path: str) -> bool:
    """A SavedModel directory, or a TF Serving base path holding integer versions."""
    return tf.saved_model.contains_saved_model(path) or bool(_versions(path))


def _versions(base: str) -> list[int]:
    if not tf.io.gfile.isdir(base):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(base))
    return sorted(int(n) for n in names if n.isdigit())


def export_engine(path: str, kinds: set[str], **options) -> tuple[Engine, dict]:
    """An engine on an export's `logits` and `serving_default` signatures."""
    if not tf.saved_model.contains_saved_model(path):
        versions = _versions(path)
        if not versions:
            raise TfllmError(f"{path}: neither a SavedModel nor a base path with versions")
        path = posixpath.join(path, str(versions[-1]))
    loaded = tf.saved_model.load(path)
    for kind in sorted(kinds):
        if _SIGNATURES[kind] not in loaded.signatures:
            raise TfllmError(
                f"{path}: the export has no {_SIGNATURES[kind]!r} signature, which {kind} "
                f"tasks need (it has: {', '.join(sorted(loaded.signatures))})"
            )
    cfg = load_config([posixpath.join(path, "assets", "config.yaml")])
    signatures = loaded.signatures

    def logits(ids):
        return signatures["logits"](token_ids=ids)["logits"]

    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        out = signatures["serving_default"](
            prompts=tf.constant(prompts),
            max_new_tokens=tf.constant(max_new_tokens),
            temperature=tf.constant(0.0),
            top_k=tf.constant(0),
            top_p=tf.constant(1.0),
            seed=tf.constant(0, tf.int64),
        )
        return [t.decode("utf-8", "replace") for t in out["completions"].numpy().tolist()]

    tokenizer = posixpath.join(path, "assets", "tokenizer.model")
    engine = Engine(logits, generate, tokenizer, cfg.model.max_sequence_length,
                    jit_compile=False, **options)  # fmt: skip
    engine.saved_model = loaded  # the signatures' variables live as long as the object does
    version = int(posixpath.basename(path.rstrip("/"))) if path.rstrip("/")[-1].isdigit() else 0
    meta = {"model": path, "export_version": version, "step": version}
    return engine, meta


def resolve(
    workdir: str | None,
    export: str | None,
    task_names: str | None,
    config_files: list[str] | None = None,
    overrides: list[str] | None = None,
) -> tuple[str, str]:
    """(model path, tasks) from the command's flags, with the other commands' precedence: the
    config files (default: the workdir's own config.yaml, else `tiny`), then --set, then the
    specific flags --workdir/--export and --tasks.

    The config only supplies defaults (`runtime.workdir`, `train.eval_tasks`): the model is
    always the checkpoint's (a config file's model section is not read; --set model.* is
    refused).
    """
    own = posixpath.join(workdir, "config.yaml") if workdir else None
    if not config_files:
        config_files = [own] if own and tf.io.gfile.exists(own) else [DEFAULT_CONFIG]
    cfg = load_config(config_files, overrides)
    target = export or workdir or cfg.runtime.workdir
    task_names = task_names or cfg.train.eval_tasks
    if not task_names:
        raise TfllmError("no tasks: give --tasks NAME[,NAME...] or set train.eval_tasks")
    for assignment in overrides or []:
        if assignment.startswith("model."):
            raise TfllmError(
                f"--set {assignment}: eval reads the model from the checkpoint's config.yaml"
            )
    return target, task_names


def load_tasks(names: str | list[str], max_length: int | None = None) -> list[tasks.Task]:
    """Built-in names and task-file paths, comma-separated or as a list."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    found = []
    for name in names:
        if name.endswith((".yaml", ".yml")) or "/" in name:
            found.append(tasks.load_task_file(name))
        elif name in builtin.TASKS:
            found.extend(builtin.make(name, max_length))
        else:
            raise tasks.TaskError(
                f"unknown task {name!r}; built-in: {', '.join(builtin.TASKS)} "
                "(or give a path to a task .yaml file)"
            )
    return found


def evaluate(engine: Engine, task_list: list[tasks.Task], limit: int | None = None) -> list[dict]:
    """One row per (task, metric): task, metric, value, stderr, n."""
    rows = []
    for task in task_list:
        result = run_task(engine, task, limit)
        for metric, (value, stderr) in result["metrics"].items():
            rows.append({"task": task.name, "metric": metric, "value": value,
                         "stderr": stderr, "n": result["n"]})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'task':<18} {'metric':<16} {'value':>10} {'stderr':>8} {'n':>6}"]
    for row in rows:
        stderr = "" if row["stderr"] is None else f"{row['stderr']:.4f}"
        lines.append(
            f"{row['task']:<18} {row['metric']:<16} {row['value']:>10.4f} {stderr:>8} {row['n']:>6}"
        )
    return "\n".join(lines)


def free_name(output_dir: str, name: str) -> str:
    """`name`, or `stem-2.json`, `stem-3.json`, ...: an earlier result is never overwritten
    (a second eval of one checkpoint, on other tasks or another --limit, is a new record)."""
    stem, suffix = posixpath.splitext(name)
    candidate, n = name, 1
    while tf.io.gfile.exists(posixpath.join(output_dir, candidate)):
        n += 1
        candidate = f"{stem}-{n}{suffix}"
    return candidate


_FLOAT32_MAX = 3.4028234663852886e38


def write_results(rows: list[dict], meta: dict, output_dir: str, name: str) -> str:
    tf.io.gfile.makedirs(output_dir)
    path = posixpath.join(output_dir, free_name(output_dir, name))
    record = {**meta, "tfllm_version": tfllm.__version__, "time": time.time(), "results": rows}
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
    tf.io.gfile.rename(path + ".tmp", path)  # overwrite=False: a racing eval's file stays
    writer = tf.summary.create_file_writer(output_dir)
    with writer.as_default():
        for row in rows:
            # TensorBoard stores float32: a perplexity beyond its range is inf there.
            value = row["value"] if abs(row["value"]) <= _FLOAT32_MAX else math.inf
            tf.summary.scalar(f"{row['task']}/{row['metric']}", value, step=meta["step"])
    writer.close()
    return path


def run(
    target: str,
    task_names: str,
    step: int | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    output_dir: str | None = None,
) -> dict:
    """`python -m tfllm.eval`: evaluates a workdir (or an export) on `tasks`; returns the
    metadata, the rows and the JSON file's path. The table goes to stdout."""
    if batch_size < 1:
        raise TfllmError(f"--batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise TfllmError(f"--limit must be at least 1 (documents per task), got {limit}")
    if is_export(target):
        if step is not None:
            raise TfllmError("--step applies to a workdir, not an export")
        task_list = load_tasks(task_names)
        kinds = {task.output_type for task in task_list}
        engine, meta = export_engine(
            target, kinds, batch_size=batch_size, progress_level=logging.INFO
        )
        name = f"results-v{meta['export_version']}.json"
        output_dir = output_dir or posixpath.join(posixpath.dirname(meta["model"]), "eval")
    else:
        task_list = load_tasks(task_names)  # first: a bad task file stops before the model
        trained = load_trained(target, step)
        engine = model_engine(trained.model, trained.tokenizer_path, batch_size=batch_size,
                              progress_level=logging.INFO)  # fmt: skip
        meta = {"model": target, "checkpoint": trained.checkpoint, "step": trained.step}
        name = f"results-step-{trained.step}.json"
        output_dir = output_dir or posixpath.join(target, "eval")
    rows = evaluate(engine, task_list, limit)
    logs.output(table(rows))
    path = write_results(rows, meta, output_dir, name)
    logger.info(f"results: {path}")
    return {**meta, "results": rows, "path": path}
