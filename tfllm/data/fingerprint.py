"""What a dataset was made from, recorded in its manifest and compared with the config.

The manifest's `built_from` holds the settings that decide the shards' content (format, text
field, tokenizer, cleaning and filters, the mixture's weights) and a description of the input
files: per file its name and size, and its sha256 when all inputs together are at most
`HASHED_BYTES` (else its modification time), summed up as a count, a byte total and a digest
(the per-file list is kept for up to `LISTED_FILES` files, so a message can name the file that
changed). A TFDS source is recorded by its name (and `data.tfds_data_dir`).

`check` runs before any shard is read (`tfllm.train`, and `tfllm.prepare` on a dataset that
exists): a difference is one line naming the key, the two values and what to do, since a
dataset reused under a changed config would train on the old data without a word.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import posixpath

from tfllm.config import Config
from tfllm.data.inputs import TFDS_PREFIX, list_files, sources
from tfllm.errors import DataError

HASHED_BYTES = 64 << 20  # inputs up to this size in all are recorded by content
LISTED_FILES = 100
# The data keys that decide what the shards hold (seq_len, packing and the vocabulary have
# their own checks in `check`; the rest say how to run, not what to make).
SETTINGS = (
    "format",
    "text_field",
    "tfds_data_dir",
    "train_on",
    "chat_template",
    "truncate",
    "val_fraction",
    "utf8_policy",
    "min_doc_chars",
    "max_doc_chars",
    "compression",
    "scatter_shards",  # which documents share a shard, and the order of its windows
    "scatter_seed",
    "tokenizer",
    "tokenizer_type",
    "tokenizer_sample_mb",
    "tokenizer_byte_fallback",
    "tokenizer_character_coverage",
    "filter_min_alnum",
    "filter_max_line_chars",
    "filter_max_repeated_lines",
    "near_dedup",
    "minhash_ngram",
    "minhash_perms",
    "minhash_bands",
    "minhash_threshold",
)


def _entries(entry: str) -> list[tuple[str, str]]:
    """(name, path) of each file of one source entry; a TFDS entry is its own name."""
    if entry.startswith(TFDS_PREFIX):
        return [(entry, "")]
    if (pathlib.Path(entry) / "state.json").is_file():  # a `datasets` save_to_disk directory
        root = pathlib.Path(entry)
        return sorted((str(p.relative_to(root)), str(p)) for p in root.rglob("*") if p.is_file())
    return [(name, str(path)) for name, path in list_files(entry)]


def _inputs(source: str) -> dict:
    files = [item for entry, _ in sources(source) for item in _entries(entry)]
    sizes = [os.stat(path).st_size if path else 0 for _, path in files]
    hashed = sum(sizes) <= HASHED_BYTES  # small inputs: content; large ones: size and mtime
    listing = []
    for (name, path), size in zip(files, sizes, strict=True):
        entry = {"name": name, "size": size}
        if not path:
            entry["tfds"] = True
        elif hashed:
            with open(path, "rb") as f:
                entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
        else:
            entry["mtime_ns"] = os.stat(path).st_mtime_ns
        listing.append(entry)
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    summary = {"files": len(listing), "bytes": sum(sizes), "sha256": digest}
    if len(listing) <= LISTED_FILES:
        summary["listing"] = listing
    return summary


def _given_file(path: str) -> str:
    """sha256 of a file the config names (data.tokenizer, data.chat_template), or ""."""
    if not path or "://" in path or not os.path.isfile(path):
        return ""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def describe(cfg: Config) -> dict:
    """The manifest's `built_from` for the config's data section, from the inputs as they are."""
    d = cfg.data
    settings = {key: getattr(d, key) for key in SETTINGS}
    settings["tokenizer_sha256"] = _given_file(d.tokenizer)
    settings["chat_template_sha256"] = _given_file(d.chat_template)
    settings["weights"] = [weight for _, weight in sources(d.source)]
    return {"source": d.source, "settings": settings, "inputs": _inputs(d.source)}


def _input_change(was: dict, now: dict) -> str:
    old = {e["name"]: e for e in was.get("listing", [])}
    new = {e["name"]: e for e in now.get("listing", [])}
    if old or new:
        for name in sorted(set(old) | set(new)):
            if name not in new:
                return f"input {name} is gone"
            if name not in old:
                return f"input {name} is new"
            if old[name] != new[name]:
                return f"input {name} changed (size {old[name]['size']} -> {new[name]['size']})"
    return (
        f"the input files changed ({was['files']} files of {was['bytes']} bytes -> "
        f"{now['files']} files of {now['bytes']} bytes)"
    )


def check(cfg: Config, manifest: dict, where: str) -> None:
    """Refuses shards made for another sequence length, packing or vocabulary, and a dataset
    whose `built_from` differs from what the config would build."""
    if manifest["packing"] != cfg.data.packing:
        raise DataError(
            f"{where} was prepared with data.packing {manifest['packing']}, the config asks for "
            f"{cfg.data.packing}; use another data.name or run prepare --force"
        )
    if manifest["seq_len"] != cfg.data.seq_len:
        raise DataError(
            f"{where} was prepared with seq_len {manifest['seq_len']}, the config asks for "
            f"{cfg.data.seq_len}; use another data.name or run prepare --force"
        )
    if manifest["vocabulary_size"] > cfg.model.vocabulary_size:
        raise DataError(
            f"{where} has a {manifest['vocabulary_size']}-piece tokenizer, larger than "
            f"model.vocabulary_size {cfg.model.vocabulary_size}"
        )
    recorded = manifest.get("built_from")
    if not isinstance(recorded, dict):
        raise DataError(
            f"{where} does not record what it was made from (written by an older tfllm); "
            "run python -m tfllm.prepare --force"
        )
    now = describe(cfg)
    advice = (
        f"run python -m tfllm.prepare --force to rebuild {posixpath.dirname(where)}, or set "
        "another data.name"
    )
    changed_source = DataError(
        f"{where} was prepared from data.source {recorded.get('source')!r}, the config says "
        f"{now['source']!r}; {advice}"
    )
    for key, value in now["settings"].items():
        was = recorded.get("settings", {}).get(key)
        if was != value:
            if key == "weights":  # a mixture's weights are part of data.source
                raise changed_source
            if key.endswith("_sha256"):
                name = key[: -len("_sha256")]
                raise DataError(
                    f"{where} was prepared with another data.{name} file (sha256 "
                    f"{str(was)[:12]} -> {str(value)[:12]}); {advice}"
                )
            raise DataError(
                f"{where} was prepared with data.{key} {was!r}, the config says {value!r}; {advice}"
            )
    was_inputs = recorded.get("inputs", {})
    if was_inputs.get("sha256") != now["inputs"]["sha256"]:
        if recorded.get("source") != now["source"]:
            raise changed_source
        change = _input_change(was_inputs, now["inputs"])
        raise DataError(f"{where}: {change} since it was prepared; {advice}")
