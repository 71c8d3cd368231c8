"""Cleaning: raw document bytes -> text the tokenizer can take, every change counted.

Rules, in order (each has a counter in the manifest's `cleaning` section):
    invalid UTF-8        `data.utf8_policy`: skip the document, or replace bad bytes with U+FFFD
    byte-order mark      a leading BOM is removed
    control characters   C0 controls other than tab, newline, form feed and carriage return,
                         and DEL, are removed (NUL among them: C strings end there)
    empty                documents that are empty or whitespace only are dropped
    too short            documents under `data.min_doc_chars` characters are dropped
    exact duplicates     a document whose text hashes like an earlier one is dropped
    too long             documents over `data.max_doc_chars` characters are split into pieces,
                         not dropped; the pieces stay together and only the last ends with EOS
"""

from __future__ import annotations

import collections
import hashlib
import re
from dataclasses import dataclass

# Tab, newline, form feed (page breaks in old sources) and carriage return are text; the rest
# of C0 and DEL are not.
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")
_BOM = "\ufeff"


@dataclass(frozen=True)
class Document:
    name: str
    pieces: tuple[str, ...]  # the text, cut at data.max_doc_chars; usually one piece

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class CleaningStats(collections.Counter):
    """Documents and characters seen, kept, changed and dropped per rule."""


def split_long(text: str, max_chars: int) -> tuple[str, ...]:
    """Cuts text into pieces of at most max_chars, at a newline when one is in the second half."""
    pieces = []
    while len(text) > max_chars:
        cut = text.rfind("\n", max_chars // 2, max_chars) + 1 or max_chars
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return tuple(pieces)


def clean_text(
    data: bytes, utf8_policy: str, min_chars: int, stats: CleaningStats
) -> tuple[str | None, str]:
    """(text, "") after the rules up to the length check, or (None, the drop counter's name).

    Counts reads, changes and the drop; deduplication and splitting are the caller's."""
    stats["documents_read"] += 1
    stats["bytes_read"] += len(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if utf8_policy == "skip":
            return _drop(stats, "dropped_invalid_utf8")
        stats["replaced_invalid_utf8"] += 1
        text = data.decode("utf-8", "replace")
    if text.startswith(_BOM):
        stats["removed_bom"] += 1
        text = text[1:]
    text, removed = _CONTROL.subn("", text)
    if removed:
        stats["documents_with_control_chars"] += 1
        stats["removed_control_chars"] += removed
    if not text.strip():
        return _drop(stats, "dropped_empty")
    if len(text) < min_chars:
        return _drop(stats, "dropped_short")
    return text, ""


def _drop(stats: CleaningStats, reason: str) -> tuple[None, str]:
    stats[reason] += 1
    return None, reason


def digest(text: str) -> bytes:
    """The exact-duplicate key: 128 bits of sha256 (collisions are negligible at 1e12 docs)."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def count_kept(stats: CleaningStats, text: str, pieces: tuple[str, ...]) -> None:
    if len(pieces) > 1:
        stats["split_long"] += 1
        stats["split_pieces"] += len(pieces)
    stats["documents"] += 1
    stats["bytes"] += len(text.encode("utf-8"))


class Cleaner:
    """Applies the rules to one document at a time; remembers hashes for deduplication."""

    def __init__(self, utf8_policy: str, min_chars: int, max_chars: int, stats: CleaningStats):
        self.utf8_policy, self.min_chars, self.max_chars = utf8_policy, min_chars, max_chars
        self.stats = stats
        self._seen: set[bytes] = set()

    def __call__(self, name: str, data: bytes) -> Document | None:
        """Returns the cleaned document, or None when a rule dropped it (and counted why)."""
        text, _ = clean_text(data, self.utf8_policy, self.min_chars, self.stats)
        if text is None:
            return None
        key = digest(text)
        if key in self._seen:
            self.stats["dropped_duplicate"] += 1
            return None
        self._seen.add(key)
        pieces = split_long(text, self.max_chars)
        count_kept(self.stats, text, pieces)
        return Document(name, pieces)
