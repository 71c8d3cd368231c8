"""Text sources: from `data.source` to a deterministic stream of raw documents.

    stdlib                      the running interpreter's standard-library `.py` files
    a.txt,docs/,src/**/*.py     files, directories (recursive) and globs, one document per file;
                                `.gz` files are decompressed
    data/*.jsonl[.gz]           JSON Lines: one document per line, its text in `data.text_field`
    tfds:NAME[/CONFIG]:SPLIT    a TFDS dataset under `data.tfds_data_dir`, `data.text_field` of
                                each example

Documents come out as raw bytes with a stable name; `clean.py` decides what they become.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import pathlib
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass

from tfllm.errors import DataError

TFDS_PREFIX = "tfds:"
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


@dataclass(frozen=True)
class RawDocument:
    name: str  # stable name: decides the split, and names the document in messages
    data: bytes


def stdlib_files() -> tuple[pathlib.Path, list[pathlib.Path]]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = [
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts and "dist-packages" not in p.parts
    ]
    return root, sorted(files)


def _expand(entry: str) -> list[tuple[str, pathlib.Path]]:
    """(name, path) of each file of one entry; a directory's files are named relative to its
    parent, so the names (and the train/val split) do not depend on where the corpus lives."""
    path = pathlib.Path(entry)
    if path.is_dir():
        base = path.resolve()
        return [(str(p.relative_to(base.parent)), p) for p in base.rglob("*") if p.is_file()]
    if path.is_file():
        return [(entry, path)]
    return [(p, pathlib.Path(p)) for p in glob.glob(entry, recursive=True) if os.path.isfile(p)]


def list_files(source: str) -> list[tuple[str, pathlib.Path]]:
    """Resolves a file source to its files as (stable name, path), sorted by name."""
    if source == "stdlib":
        root, files = stdlib_files()
        return [(str(p.relative_to(root)), p) for p in files]
    files: dict[str, pathlib.Path] = {}
    for entry in filter(None, (s.strip() for s in source.split(","))):
        found = _expand(entry)
        if not found:
            raise DataError(f"data.source: {entry!r} matches no file")
        files.update(found)
    return sorted(files.items())


def name_hash(name: str) -> float:
    """A document's place in [0, 1), from a hash of its name: stable across machines."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_of(name: str, val_fraction: float) -> str:
    """Assigns a document to train or val by a hash of its name."""
    return "val" if name_hash(name) < val_fraction else "train"


def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except OSError as err:  # also gzip.BadGzipFile
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    except EOFError:
        raise DataError(f"cannot read {path}: the gzip stream is truncated") from None


def _jsonl_documents(
    name: str, path: pathlib.Path, text_field: str, stats: dict
) -> Iterator[RawDocument]:
    """One document per JSON line; bad lines are counted, a file without the field is an error."""
    found = 0
    seen_fields: set[str] = set()
    for number, line in enumerate(_read_bytes(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            # Invalid UTF-8 inside a string must reach the UTF-8 policy, not fail the parse.
            record = json.loads(line.decode("utf-8", "surrogateescape"))
        except (json.JSONDecodeError, RecursionError):
            stats["dropped_bad_json"] += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            stats["dropped_missing_field"] += 1
            seen_fields.update(record if isinstance(record, dict) else ())
            continue
        found += 1
        data = record[text_field].encode("utf-8", "surrogateescape")
        yield RawDocument(f"{name}:{number}", data)
    if not found and seen_fields:
        raise DataError(
            f"{path}: no line has a string field {text_field!r} (data.text_field); "
            f"fields seen: {', '.join(sorted(seen_fields)[:10])}"
        )


def _file_documents(source: str, text_field: str, stats: dict) -> Iterator[RawDocument]:
    for name, path in list_files(source):
        stats["files_read"] += 1
        if path.name.endswith(_JSONL_SUFFIXES):
            yield from _jsonl_documents(name, path, text_field, stats)
        else:
            yield RawDocument(name, _read_bytes(path))


def parse_tfds_source(source: str) -> tuple[str, str]:
    """`tfds:NAME[/CONFIG]:SPLIT` -> (`NAME[/CONFIG]`, `SPLIT`)."""
    parts = source[len(TFDS_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        raise DataError(f"data.source {source!r}: expected tfds:NAME[/CONFIG]:SPLIT")
    return parts[0], parts[1]


def _tfds_documents(source: str, text_field: str, data_dir: str) -> Iterator[RawDocument]:
    import tensorflow_datasets as tfds  # imported only for TFDS sources: it is slow to load

    name, split = parse_tfds_source(source)
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        if not builder.is_prepared():
            raise DataError(
                f"TFDS dataset {name} is not prepared in {builder.data_dir} "
                "(data.tfds_data_dir); run tfds build or download_and_prepare first"
            )
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, KeyError) as err:
        raise DataError(f"data.source {source!r}: {str(err).splitlines()[0]}") from None
    features = builder.info.features
    if text_field not in features:
        raise DataError(
            f"data.source {source!r} has no feature {text_field!r} (data.text_field); "
            f"features: {', '.join(features)}"
        )
    for index, example in enumerate(tfds.as_numpy(ds)):
        yield RawDocument(f"{source}:{index}", bytes(example[text_field]))


def read_raw(
    source: str, text_field: str, tfds_data_dir: str, stats: dict
) -> Iterator[RawDocument]:
    """Yields every document of `source` in a deterministic order."""
    if source.startswith(TFDS_PREFIX):
        return _tfds_documents(source, text_field, tfds_data_dir)
    return _file_documents(source, text_field, stats)
