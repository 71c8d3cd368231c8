"""The built-in suite, made from the running interpreter's own files (nothing downloaded).

    stdlib_bpb        bits per byte on held-out standard-library files
    english_bpb       bits per byte on the interpreter's English docs (pydoc_data/topics.py)
    next_line         4-way multiple choice: the next line of held-out code, against the same
                      line with its words in another order
    next_indent       generate_until: the indentation of the next line of held-out code
    code_completion   generate_until: the rest of a line of held-out code, exact match
    stdlib            all five

"Held-out" files are those `data.source: stdlib` with the default val_fraction (0.02) puts in
the validation split: a model trained on the default data never saw them. Items are drawn
with a fixed seed, so every run and machine with the same Python scores the same documents.

The distractors of `next_line` hold the true line's words (whitespace-separated, the spacing
kept), so every choice has the same characters and, with any tokenizer that splits at spaces,
nearly the same tokens: a random model's unigram preferences cancel and it stays at chance
(0.25), while a model that learned which word follows which picks the true order.
"""

from __future__ import annotations

import random
import re

from tfllm.data.inputs import stdlib_files
from tfllm.data.layout import split_of
from tfllm.eval.tasks import Task, TaskError

TASKS = ("stdlib", "stdlib_bpb", "english_bpb", "next_line", "next_indent", "code_completion")
_VAL_FRACTION = 0.02  # DataConfig's default
_DOC_BYTES = 4096  # each bpb document: the first lines of a file up to this size
_BPB_DOCS = 16
_QUESTIONS = 200
_COMPLETIONS = 100
_INDENTS = 99  # a third each at 4, 8 and 12 spaces
_CONTEXT_LINES = 6


def held_out_files() -> list[tuple[str, str]]:
    """(name, text) of the held-out stdlib files, sorted by name."""
    files = []
    for name, path in stdlib_files():
        if split_of(name, _VAL_FRACTION) == "val":
            try:
                files.append((name, path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError):
                continue  # a file the data pipeline would skip too
    return files


def _head(text: str, limit: int = _DOC_BYTES) -> str:
    """The whole lines of `text` that fit in `limit` UTF-8 bytes."""
    kept, size = [], 0
    for line in text.splitlines(keepends=True):
        size += len(line.encode("utf-8"))
        if size > limit:
            break
        kept.append(line)
    return "".join(kept)


def _code_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line.strip()) >= 8]


def stdlib_bpb() -> Task:
    docs = [{"text": _head(text)} for _, text in held_out_files()[:_BPB_DOCS]]
    return Task("stdlib_bpb", "loglikelihood_rolling", docs, doc_to_target="text",
                source="built-in stdlib_bpb")  # fmt: skip


def english_bpb() -> Task:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise TaskError("english_bpb needs pydoc_data, which this Python lacks") from None
    docs = [{"text": _head(topics[key])} for key in sorted(topics)[:_BPB_DOCS]]
    return Task("english_bpb", "loglikelihood_rolling", docs, doc_to_target="text",
                source="built-in english_bpb")  # fmt: skip


def _positions(files, rng: random.Random, count: int):
    """(lines of one file, index of a line with at least _CONTEXT_LINES before it)."""
    pool = [lines for lines in (_code_lines(text) for _, text in files) if len(lines) > 20]
    found = []
    while len(found) < count:
        lines = rng.choice(pool)
        found.append((lines, rng.randrange(_CONTEXT_LINES, len(lines))))
    return found


def _reordered(line: str, rng: random.Random, count: int = 3) -> list[str] | None:
    """`count` versions of `line` with its words in other orders (indentation and spacing
    kept), or None if the line has fewer than four words or too few distinct orders."""
    indent = line[: len(line) - len(line.lstrip())]
    parts = re.split(r"(\s+)", line.strip())
    words, gaps = parts[0::2], [*parts[1::2], ""]
    if len(words) < 4:
        return None
    found: list[str] = []
    for _ in range(50):
        order = rng.sample(words, len(words))
        text = indent + "".join(word + gap for word, gap in zip(order, gaps, strict=True))
        if text != line and text not in found:
            found.append(text)
            if len(found) == count:
                return found
    return None


def next_line() -> Task:
    rng, files = random.Random(0), held_out_files()
    docs = []
    while len(docs) < _QUESTIONS:
        ((lines, index),) = _positions(files, rng, 1)
        others = _reordered(lines[index], rng)
        if others is None:
            continue
        # Each choice ends its line: where a line may end is part of word order.
        answer = lines[index] + "\n"
        choices = [answer, *(other + "\n" for other in others)]
        rng.shuffle(choices)
        context = "\n".join(lines[index - _CONTEXT_LINES : index]) + "\n"
        docs.append({"context": context, "choices": choices, "label": choices.index(answer)})
    return Task("next_line", "multiple_choice", docs, doc_to_text="context",
                doc_to_choice="choices", doc_to_target="label", target_delimiter="",
                source="built-in next_line")  # fmt: skip


def next_indent() -> Task:
    """After six whole lines, the next line's indentation: as many prompts at 4, 8 and 12
    spaces (a constant guess scores 1/3; every target is non-empty, so a model that starts the
    line with text or ends it at once scores 0)."""
    rng = random.Random(2)
    files = [text.splitlines() for _, text in held_out_files()]
    pool = [lines for lines in files if len(lines) > 20]
    docs: list[dict] = []
    wanted = {4: _INDENTS // 3, 8: _INDENTS // 3, 12: _INDENTS // 3}
    while len(docs) < _INDENTS:
        lines = rng.choice(pool)
        index = rng.randrange(_CONTEXT_LINES, len(lines))
        line = lines[index]
        depth = len(line) - len(line.lstrip(" "))
        if not line.strip() or line[depth] == "\t" or not wanted.get(depth):
            continue
        wanted[depth] -= 1
        context = "\n".join(lines[index - _CONTEXT_LINES : index]) + "\n"
        docs.append({"context": context, "answer": " " * depth})
    return Task(
        "next_indent", "generate_until", docs, doc_to_text="context", doc_to_target="answer",
        generation_kwargs={"until": ["\n"], "max_gen_toks": 8},
        # The prediction is its leading spaces: everything from the first other character on
        # is dropped (the harness's regex filter would strip the spaces themselves).
        metrics=[{"metric": "exact_match", "regexes_to_ignore": [r"\S.*"]}],
        source="built-in next_indent",
    )  # fmt: skip


def code_completion() -> Task:
    rng = random.Random(1)
    docs = []
    for lines, index in _positions(held_out_files(), rng, _COMPLETIONS):
        line = lines[index]
        indent = len(line) - len(line.lstrip())
        cut = line.rfind(" ", indent + 1, indent + 1 + (len(line) - indent) // 2)
        cut = cut if cut > indent else indent + (len(line) - indent) // 2
        context = "\n".join(lines[index - _CONTEXT_LINES : index]) + "\n" + line[:cut]
        docs.append({"context": context, "answer": line[cut:]})
    return Task(
        "code_completion", "generate_until", docs, doc_to_text="context",
        doc_to_target="answer", generation_kwargs={"until": ["\n"], "max_gen_toks": 24},
        # Whitespace at either end does not count: the split point may fall before a space.
        metrics=[{"metric": "exact_match", "regexes_to_ignore": [r"^\s+", r"\s+$"]}],
        source="built-in code_completion",
    )  # fmt: skip


_MAKERS = {
    "stdlib_bpb": stdlib_bpb,
    "english_bpb": english_bpb,
    "next_line": next_line,
    "next_indent": next_indent,
    "code_completion": code_completion,
}


def make(name: str, max_length: int | None = None) -> list[Task]:
    """The tasks of one built-in name (`stdlib`: the whole suite)."""
    names = list(_MAKERS) if name == "stdlib" else [name]
    return [_MAKERS[n]() for n in names]
