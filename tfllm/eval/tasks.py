"""Task files in lm-evaluation-harness's form, and the documents they read.

    task: my_task
    dataset_path: json                 # the harness's form, with dataset_kwargs.data_files
    dataset_kwargs: {data_files: {test: data/my_task.jsonl}}
    test_split: test
    output_type: multiple_choice       # | loglikelihood | loglikelihood_rolling | generate_until
    doc_to_text: "Q: {{question}}\nA:" # a Jinja template or a field name
    doc_to_choice: choices             # a field (list), a template giving a list, or a list
    doc_to_target: label               # an index, a choice's text, or (generate_until) the answer
    metric_list: [{metric: acc}, {metric: acc_norm}]

`dataset_path` may also be a JSONL file itself. Relative data paths are tried from the working
directory, then from the task file's directory. `generation_kwargs` (until, max_gen_toks) and
`filter_list` (regex, take_first) work as in the harness; `rolling_context` (tokens, default 0)
is tfllm's: the context rule of `loglikelihood_rolling` (see `tfllm.eval.engine`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import pathlib
import re

import jinja2
import yaml

from tfllm import templates
from tfllm.errors import TfllmError

OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until")
DEFAULT_METRICS = {
    "loglikelihood": ["perplexity", "acc"],
    "loglikelihood_rolling": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "multiple_choice": ["acc", "acc_norm"],
    "generate_until": ["exact_match"],
}
_KNOWN_KEYS = {
    "task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "test_split",
    "validation_split", "training_split", "fewshot_split", "output_type", "doc_to_text",
    "doc_to_target", "doc_to_choice", "target_delimiter", "fewshot_delimiter", "metric_list",
    "generation_kwargs", "filter_list", "metadata", "num_fewshot", "should_decontaminate",
    "doc_to_decontamination_query", "description", "repeats", "rolling_context",
}  # fmt: skip


@functools.cache
def _jinja():
    """The harness's template environment, in tfllm's sandbox (`tfllm.templates`): a task file
    is shared like a dataset, and its templates must not reach Python."""
    env = templates.environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = lambda value, pattern, repl: re.sub(pattern, repl, value)
    return env


class TaskError(TfllmError):
    """A task that cannot be found, parsed or rendered (file, line, key named)."""


@dataclasses.dataclass
class Task:
    name: str
    output_type: str
    docs: list[dict]
    doc_to_text: object = ""
    doc_to_target: object = None
    doc_to_choice: object = None
    target_delimiter: str = " "
    metrics: list[dict] = dataclasses.field(default_factory=list)  # {"metric": name, **kwargs}
    generation_kwargs: dict = dataclasses.field(default_factory=dict)
    filters: list[dict] = dataclasses.field(default_factory=list)  # one pipeline's steps
    rolling_context: int = 0
    source: str = ""  # where it was defined, for messages

    def __post_init__(self):
        if self.output_type not in OUTPUT_TYPES:
            raise TaskError(
                f"{self.source or self.name}: output_type must be one of "
                f"{', '.join(OUTPUT_TYPES)}, got {self.output_type!r}"
            )
        if not self.metrics:
            self.metrics = [{"metric": m} for m in DEFAULT_METRICS[self.output_type]]

    def render(self, spec, doc: dict, index: int, key: str):
        """A doc_to_* value for one document: a field, a Jinja template, or a constant."""
        if isinstance(spec, str) and spec in doc:
            return doc[spec]
        if isinstance(spec, list):
            return [self.render(item, doc, index, key) for item in spec]
        if not isinstance(spec, str):
            return spec
        try:
            template = templates.compile_template(_jinja(), spec, f"{self.source}: {key}")
            text = templates.render(template, f"{self.source}: {key} on document {index}", **doc)
        except templates.TemplateFailure as err:
            raise TaskError(str(err)) from None
        return int(text) if key == "doc_to_target" and text.strip().isdigit() else text

    def check(self) -> None:
        """Renders every template on every document once: a template that fails (or reaches
        outside the sandbox) stops the command before any model is loaded."""
        for index, doc in enumerate(self.docs):
            self.text(doc, index)
            if self.output_type == "multiple_choice":
                self.gold(doc, index, self.choices(doc, index))
            elif self.doc_to_target is not None:
                self.target(doc, index)

    def text(self, doc: dict, index: int) -> str:
        return str(self.render(self.doc_to_text, doc, index, "doc_to_text"))

    def target(self, doc: dict, index: int):
        return self.render(self.doc_to_target, doc, index, "doc_to_target")

    def choices(self, doc: dict, index: int) -> list[str]:
        value = self.render(self.doc_to_choice, doc, index, "doc_to_choice")
        if isinstance(value, str):  # a template that prints a list, as the harness allows
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                value = None
        if isinstance(value, dict):
            value = list(value.values())
        if not isinstance(value, list) or not value:
            raise TaskError(f"{self.source}: doc_to_choice on document {index} is not a list")
        return [str(choice) for choice in value]

    def gold(self, doc: dict, index: int, choices: list[str]) -> int:
        target = self.target(doc, index)
        if isinstance(target, str) and target in choices:
            return choices.index(target)
        if isinstance(target, int) and 0 <= target < len(choices):
            return target
        raise TaskError(
            f"{self.source}: doc_to_target on document {index} is {target!r}: "
            f"neither a choice nor an index below {len(choices)}"
        )


def read_jsonl(path: pathlib.Path) -> list[dict]:
    docs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TaskError(f"cannot read {path}: {err}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{path}:{number}: not valid JSON: {err.msg}") from None
        if not isinstance(doc, dict):
            raise TaskError(f"{path}:{number}: expected a JSON object, got {type(doc).__name__}")
        docs.append(doc)
    if not docs:
        raise TaskError(f"{path}: no documents")
    return docs


def _data_file(spec: dict, yaml_path: pathlib.Path) -> str:
    split = spec.get("test_split") or spec.get("validation_split") or "train"
    if spec.get("dataset_path") == "json":
        files = (spec.get("dataset_kwargs") or {}).get("data_files")
        if isinstance(files, dict):
            if split not in files:
                raise TaskError(f"{yaml_path}: dataset_kwargs.data_files has no split {split!r}")
            files = files[split]
        elif split != "train":  # one file is the split `train`, as `datasets` names it
            raise TaskError(
                f"{yaml_path}: one data_files entry is the split 'train', not {split!r}"
            )
        if isinstance(files, list) and len(files) == 1:
            files = files[0]
        if not isinstance(files, str):
            raise TaskError(f"{yaml_path}: dataset_kwargs.data_files must name one JSONL file")
        return files
    path = spec.get("dataset_path")
    if not isinstance(path, str) or not path.endswith((".jsonl", ".json")):
        raise TaskError(
            f"{yaml_path}: dataset_path must be 'json' (with dataset_kwargs.data_files) or a "
            f".jsonl file, got {path!r} (hub datasets are not downloaded)"
        )
    return path


_TYPES = {
    "task": (str,),
    "output_type": (str,),
    "doc_to_text": (str,),
    "doc_to_target": (str, int, list),
    "doc_to_choice": (str, list, dict),
    "target_delimiter": (str,),
    "metric_list": (list,),
    "generation_kwargs": (dict,),
    "filter_list": (list,),
    "dataset_kwargs": (dict,),
    "rolling_context": (int,),
}


def _wrong(path: str, key: str, value, what: str) -> TaskError:
    return TaskError(f"{path}: {key} must be {what}, got {type(value).__name__} {value!r:.60}")


def check_types(spec: dict, path: str) -> None:
    """The types of the keys tfllm reads, so that a wrong one is a line naming it rather than
    a traceback where it is first used."""
    for key, types in _TYPES.items():
        value = spec.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise _wrong(path, key, value, " or ".join(t.__name__ for t in types))
    if spec.get("rolling_context", 0) < 0:
        raise _wrong(path, "rolling_context", spec["rolling_context"], "at least 0")
    for entry in spec.get("metric_list") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("metric"), str):
            raise _wrong(path, "metric_list", entry, "a list of {metric: NAME, ...} entries")
    options = spec.get("generation_kwargs") or {}
    until = options.get("until", [])
    if not isinstance(until, str) and not (
        isinstance(until, list) and all(isinstance(u, str) for u in until)
    ):
        raise _wrong(path, "generation_kwargs.until", until, "a string or a list of strings")
    tokens = options.get("max_gen_toks", 1)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise _wrong(path, "generation_kwargs.max_gen_toks", tokens, "an integer at least 1")
    for pipeline in spec.get("filter_list") or []:
        steps = pipeline.get("filter") if isinstance(pipeline, dict) else None
        if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
            raise _wrong(path, "filter_list", pipeline, "a list of {name, filter: [steps]}")
        for step in steps:
            _check_filter_step(step, path)


def _check_filter_step(step: dict, path: str) -> None:
    pattern = step.get("regex_pattern", "")
    if not isinstance(pattern, str):
        raise _wrong(path, "filter_list regex_pattern", pattern, "a string")
    try:
        re.compile(pattern)
    except re.error as err:
        raise TaskError(f"{path}: filter_list regex_pattern {pattern!r}: {err}") from None
    group = step.get("group_select", 0)
    if not isinstance(group, int) or isinstance(group, bool):
        raise _wrong(path, "filter_list group_select", group, "an integer")


def load_task_file(path: str) -> Task:
    yaml_path = pathlib.Path(path)
    try:
        spec = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TaskError(f"cannot read task file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise TaskError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise TaskError(f"{where}: YAML syntax error: {getattr(err, 'problem', err)}") from None
    if not isinstance(spec, dict):
        raise TaskError(f"{path}: expected a mapping of task keys")
    unknown = sorted(set(spec) - _KNOWN_KEYS)
    if unknown:
        raise TaskError(f"{path}: unknown key(s) {', '.join(unknown)}")
    check_types(spec, path)
    data = pathlib.Path(_data_file(spec, yaml_path))
    if not data.is_absolute() and not data.exists():
        data = yaml_path.parent / data
    filters = spec.get("filter_list") or []
    task = Task(
        name=str(spec.get("task") or yaml_path.stem),
        output_type=spec.get("output_type", "generate_until"),
        docs=read_jsonl(data),
        doc_to_text=spec.get("doc_to_text", ""),
        doc_to_target=spec.get("doc_to_target"),
        doc_to_choice=spec.get("doc_to_choice"),
        target_delimiter=spec.get("target_delimiter", " "),
        metrics=list(spec.get("metric_list") or []),
        generation_kwargs=dict(spec.get("generation_kwargs") or {}),
        filters=list(filters[0].get("filter", [])) if filters else [],
        rolling_context=spec.get("rolling_context", 0),
        source=str(yaml_path),
    )
    task.check()
    return task
