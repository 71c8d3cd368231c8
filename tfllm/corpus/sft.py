"""Instruction and chat data: records read from JSON Lines, JSON arrays or Parquet, validated,
and turned into (text, trained) segments for tokenization with a loss mask.

Formats (`data.format`) and the fields each record must have:

    text               {"text": str}                              every token trained
    prompt_completion  {"prompt": str, "completion": str}         prompt + completion, plain
    messages           {"messages": [{"role", "content"[, "train"]}, ...]}   via the template
    alpaca             {"instruction": str, "input": str (may be ""), "output": str}

`data.train_on`: `completion` (the default: the completion, the alpaca output, the assistant
turns), `assistant` (the same for messages, refused for the other formats) or `all`.
A bad record is skipped and counted under its reason; the first few are named with file, line
(or row) and field. A file with no usable record is an error.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from tfllm.errors import DataError
from tfllm.tokenizers.chat import ROLES, Template

FORMATS = ("text", "prompt_completion", "messages", "alpaca")
TRAIN_ON = ("completion", "assistant", "all")
# Stanford Alpaca's prompts, as its training code writes them.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
_NAMED = 5  # bad records named in the report; the rest are counted


class BadRecord(Exception):
    """One record that cannot be used: the reason (a counter name) and the field."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class RecordStats:
    """Records read, used and skipped (per reason), with the first few bad ones named."""

    read: int = 0
    used: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    named: list[str] = field(default_factory=list)

    def skip(self, where: str, bad: BadRecord) -> None:
        self.skipped[bad.reason] += 1
        if len(self.named) < _NAMED:
            self.named.append(f"{where}: {bad}")


def read_records(path: str) -> Iterator[tuple[str, object]]:
    """(where, record) for every record of a .jsonl[.gz], .json (an array) or .parquet file;
    `where` is `file:line` or `file:row N`. A line that is not JSON comes as a BadRecord."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # only Parquet users need pyarrow

        table = pq.read_table(path)
        for row, record in enumerate(table.to_pylist(), start=1):
            yield f"{path}:row {row}", record
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                records = json.load(f)
            except ValueError as err:
                raise DataError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON array of records")
        for row, record in enumerate(records, start=1):
            yield f"{path}:record {row}", record
    else:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{line_number}", json.loads(line)
                except ValueError as err:
                    yield f"{path}:{line_number}", BadRecord("bad_json", f"not JSON ({err})")


def _string(record: dict, key: str, allow_empty: bool = False) -> str:
    value = record.get(key)
    if value is None:
        raise BadRecord("missing_field", f"missing field {key!r}")
    if not isinstance(value, str):
        raise BadRecord("wrong_type", f"field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadRecord("empty_field", f"field {key!r} is empty")
    return value


def _messages(record: dict) -> list[dict]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRecord("missing_field", "missing or empty field 'messages'")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRecord("wrong_type", f"messages[{i}] must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise BadRecord("bad_role", f"messages[{i}].role is {role!r}; use one of {ROLES}")
        content = _string(message, "content", allow_empty=role != "assistant")
        train = message.get("train", True)
        if not isinstance(train, bool):
            raise BadRecord("wrong_type", f"messages[{i}].train must be true or false")
        checked.append({"role": role, "content": content, "train": train})
    if not any(m["role"] == "assistant" for m in checked):
        raise BadRecord("no_assistant", "no assistant message to learn from")
    return checked


def segments(record, fmt: str, train_on: str, template: Template) -> list[tuple[str, bool]]:
    """One record -> (text, trained) segments. Raises BadRecord."""
    if isinstance(record, BadRecord):
        raise record
    if not isinstance(record, dict):
        raise BadRecord("not_an_object", f"a record must be an object, got {type(record).__name__}")
    everything = train_on == "all"
    if fmt == "text":
        return [(_string(record, "text"), True)]
    if fmt == "prompt_completion":
        prompt, completion = _string(record, "prompt", True), _string(record, "completion")
        return [(prompt, everything), (completion, True)]
    if fmt == "alpaca":
        instruction, extra = _string(record, "instruction"), _string(record, "input", True)
        output = _string(record, "output")
        template_text = ALPACA_WITH_INPUT if extra.strip() else ALPACA
        return [(template_text.format(instruction=instruction, input=extra), everything),
                (output, True)]  # fmt: skip
    roles = ROLES if everything else ("assistant",)
    return template.segments(_messages(record), train_roles=roles)


def check_settings(fmt: str, train_on: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"data.format must be one of {FORMATS}, got {fmt!r}")
    if train_on not in TRAIN_ON:
        raise DataError(f"data.train_on must be one of {TRAIN_ON}, got {train_on!r}")
    if train_on == "assistant" and fmt != "messages":
        raise DataError("data.train_on=assistant needs data.format=messages; use completion")


def read_examples(
    paths: list[str], fmt: str, train_on: str, template: Template, stats: RecordStats
) -> Iterator[tuple[str, list[tuple[str, bool]]]]:
    """(where, segments) for every usable record of `paths`, counting the others."""
    check_settings(fmt, train_on)
    for path in paths:
        used_before = stats.used
        for where, record in read_records(path):
            stats.read += 1
            try:
                pieces = segments(record, fmt, train_on, template)
            except BadRecord as bad:
                stats.skip(where, bad)
                continue
            stats.used += 1
            yield where, pieces
        if stats.used == used_before:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items()))
            first = f"; first: {stats.named[0]}" if stats.named else ""
            raise DataError(
                f"{os.path.basename(path)}: no usable {fmt} record ({reasons or 'empty'}){first}"
            )
