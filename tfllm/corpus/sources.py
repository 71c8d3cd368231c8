"""Text sources: from `data.source` to a deterministic stream of raw documents.

    stdlib                      the running interpreter's standard-library `.py` files
    a.txt,docs/,src/**/*.py     files, directories (recursive) and globs; each file is read by
                                its format (formats.py): text (one document per file, `.gz`
                                decompressed), JSON Lines (.jsonl[.gz|.zst]), Parquet, or a
                                `datasets` save_to_disk directory
    tfds:NAME[/CONFIG]:SPLIT    a TFDS dataset under `data.tfds_data_dir`, `data.text_field` of
                                each example
    a.parquet:0.7,b/*.zst:0.3   a mixture: every entry with a weight is its own source; documents
                                are drawn from source i with probability w_i / sum(w) by a fixed
                                seed, until the drawn source runs out (so the output follows the
                                weights)

Documents come out as raw bytes with a stable name and their source's index; `clean.py` decides
what they become. Nothing holds more than one file's row group or line at a time.
"""

from __future__ import annotations

import pathlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from tfllm.corpus import formats
from tfllm.data.inputs import TFDS_PREFIX, list_files, sources  # noqa: F401 - read here too
from tfllm.errors import DataError

_MIXTURE_SEED = 4321


@dataclass(frozen=True)
class RawDocument:
    name: str  # stable name: decides the split, and names the document in messages
    data: bytes
    source: int = 0  # index of its source in sources(data.source)


def _file_documents(
    source: str, index: int, text_field: str, bad: formats.BadInput
) -> Iterator[RawDocument]:
    stats = bad.stats
    saved = formats.is_saved_dataset(pathlib.Path(source))
    entries = [(source, pathlib.Path(source))] if saved else list_files(source)
    for name, path in entries:
        stats["files_read"] += 1
        if formats.is_saved_dataset(path):
            for file, row, text in formats.saved_dataset_texts(path, text_field, bad):
                yield RawDocument(f"{name}/{file}:{row}", text, index)
        elif path.name.endswith(formats.JSONL_SUFFIXES):
            for number, text in formats.jsonl_texts(path, text_field, bad):
                yield RawDocument(f"{name}:{number}", text, index)
        elif path.name.endswith(".parquet"):
            for row, text in formats.parquet_texts(path, text_field, bad):
                yield RawDocument(f"{name}:{row}", text, index)
        else:
            yield RawDocument(name, formats.whole_file(path), index)


def parse_tfds_source(source: str) -> tuple[str, str]:
    """`tfds:NAME[/CONFIG]:SPLIT` -> (`NAME[/CONFIG]`, `SPLIT`)."""
    parts = source[len(TFDS_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        raise DataError(f"data.source {source!r}: expected tfds:NAME[/CONFIG]:SPLIT")
    return parts[0], parts[1]


def _tfds_documents(
    source: str, index: int, text_field: str, data_dir: str
) -> Iterator[RawDocument]:
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
    for number, example in enumerate(tfds.as_numpy(ds)):
        yield RawDocument(f"{source}:{number}", bytes(example[text_field]), index)


def _one_source(
    entry: str, index: int, text_field: str, tfds_data_dir: str, bad: formats.BadInput
) -> Iterator[RawDocument]:
    if entry.startswith(TFDS_PREFIX):
        return _tfds_documents(entry, index, text_field, tfds_data_dir)
    return _file_documents(entry, index, text_field, bad)


def read_raw(
    source: str, text_field: str, tfds_data_dir: str, bads: list[formats.BadInput]
) -> Iterator[RawDocument]:
    """Yields the documents of `source` (one source or a weighted mixture), deterministically;
    `bads[i]` handles and counts the bad input of source i."""
    mixture = sources(source)
    streams = [
        _one_source(entry, i, text_field, tfds_data_dir, bads[i])
        for i, (entry, _) in enumerate(mixture)
    ]
    if len(streams) == 1:
        yield from streams[0]
        return
    rng = random.Random(_MIXTURE_SEED)
    indices, weights = range(len(streams)), [w for _, w in mixture]
    while True:
        pick = rng.choices(indices, weights)[0]
        doc = next(streams[pick], None)
        if doc is None:
            return
        yield doc
