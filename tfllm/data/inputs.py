"""The files a `data.source` names, read by the prepare pipeline and recorded in a dataset's
manifest (fingerprint.py): the built-in corpus, files, directories and globs, and a mixture's
weights. TFDS entries (`tfds:NAME[/CONFIG]:SPLIT`) name no files here.
"""

from __future__ import annotations

import glob
import os
import pathlib
import sysconfig

from tfllm.errors import DataError

TFDS_PREFIX = "tfds:"


def stdlib_files() -> list[tuple[str, pathlib.Path]]:
    """The built-in corpus (`data.source: stdlib`): the running interpreter's standard-library
    `.py` files as (name, path), sorted by name. The name (the path below the standard library)
    decides the split, so the built-in evaluation knows which files training never saw."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = [
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts
    ]
    return sorted((str(p.relative_to(root)), p) for p in files)


def sources(source: str) -> list[tuple[str, float]]:
    """(entry, weight) per source: one source (weight 1) unless the entries carry weights."""
    entries = [s.strip() for s in source.split(",") if s.strip()]
    weighted = []
    for entry in entries:
        head, _, tail = entry.rpartition(":")
        try:
            weighted.append((head, float(tail)))
        except ValueError:
            weighted.append((entry, None))
    if all(w is None for _, w in weighted):
        return [(source, 1.0)]
    if any(w is None or w <= 0 or not head for head, w in weighted):
        raise DataError(
            f"data.source {source!r}: in a mixture every entry needs a positive weight "
            "(path:weight, e.g. a.parquet:0.7,b/*.jsonl.zst:0.3)"
        )
    return weighted


def _expand(entry: str) -> list[tuple[str, pathlib.Path]]:
    """(name, path) of each file of one entry; a directory's files are named relative to its
    parent, so the names (and the train/val split) do not depend on where the corpus lives."""
    path = pathlib.Path(entry)
    if path.is_dir():
        base = path.resolve()
        # Python's bytecode caches are not text, and appear whenever a module of a source
        # tree is imported: left in, they would change the inputs of a prepared dataset.
        return [
            (str(p.relative_to(base.parent)), p)
            for p in base.rglob("*")
            if p.is_file() and "__pycache__" not in p.relative_to(base).parts
        ]
    if path.is_file():
        return [(entry, path)]
    return [(p, pathlib.Path(p)) for p in glob.glob(entry, recursive=True) if os.path.isfile(p)]


def list_files(source: str) -> list[tuple[str, pathlib.Path]]:
    """Resolves a file source to its files as (stable name, path), sorted by name."""
    if source == "stdlib":
        return stdlib_files()
    files: dict[str, pathlib.Path] = {}
    for entry in filter(None, (s.strip() for s in source.split(","))):
        found = _expand(entry)
        if not found:
            raise DataError(f"data.source: {entry!r} matches no file")
        files.update(found)
    return sorted(files.items())
