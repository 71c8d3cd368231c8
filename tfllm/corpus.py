"""Text sources and cleaning: from `data.source` to a deterministic list of documents.

`stdlib` is the built-in corpus: the running interpreter's own standard-library `.py` files,
present on every machine, nothing downloaded. Any other source is a comma-separated list of
files, directories (read recursively) and glob patterns.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import os
import pathlib
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass

from tfllm.errors import DataError


@dataclass(frozen=True)
class Document:
    name: str  # stable name used for the split hash and error messages
    text: str


def stdlib_files() -> tuple[pathlib.Path, list[pathlib.Path]]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = [
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts
    ]
    return root, sorted(files)


def _expand(entry: str) -> list[pathlib.Path]:
    path = pathlib.Path(entry)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if path.is_file():
        return [path]
    return sorted(pathlib.Path(p) for p in glob.glob(entry, recursive=True) if os.path.isfile(p))


def list_files(source: str) -> tuple[pathlib.Path | None, list[pathlib.Path]]:
    """Resolves a source to (root for relative names, sorted files)."""
    if source == "stdlib":
        return stdlib_files()
    files: list[pathlib.Path] = []
    for entry in filter(None, (s.strip() for s in source.split(","))):
        found = _expand(entry)
        if not found:
            raise DataError(f"data.source: {entry!r} matches no file")
        files.extend(found)
    if not files:
        raise DataError(f"data.source {source!r} names no file")
    return None, sorted(set(files))


def split_of(name: str, val_fraction: float) -> str:
    """Assigns a document to train or val by a hash of its name: stable across machines."""
    bucket = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"


class CleaningStats(collections.Counter):
    """Counts documents read, kept and dropped per rule; stored in the manifest."""


def read_documents(
    source: str, split: str, val_fraction: float, stats: CleaningStats
) -> Iterator[Document]:
    """Yields the documents of one split in a deterministic order, counting every drop."""
    root, files = list_files(source)
    for path in files:
        name = str(path.relative_to(root)) if root else str(path)
        if split_of(name, val_fraction) != split:
            continue
        stats["files_read"] += 1
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise DataError(f"cannot read {path}: {err.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            stats["dropped_invalid_utf8"] += 1
            continue
        text = text.removeprefix("\ufeff").replace("\x00", "")
        if not text.strip():
            stats["dropped_empty"] += 1
            continue
        stats["documents"] += 1
        stats["bytes"] += len(text.encode("utf-8"))
        yield Document(name, text)
