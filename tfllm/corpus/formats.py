"""File formats: one reader per format, each streaming documents without holding the file.

    *.parquet                   row group by row group (pyarrow), the `data.text_field` column
    *.jsonl[.gz|.zst]           JSON Lines (also .ndjson): one document per line, decompressed
                                as a stream (gzip, zstandard)
    DIR with state.json         a Hugging Face `datasets` directory from `save_to_disk`: its
                                Arrow files, record batch by record batch
    anything else               one document per file (`.gz` decompressed)

Bad input is named (file and line or row) and handled by `data.on_bad_input`: `skip` counts it
(`dropped_bad_json`, `dropped_missing_field`, `bad_files`) and goes on, `error` stops.
"""

from __future__ import annotations

import gzip
import io
import json
import pathlib
from collections.abc import Iterator

from tfllm.errors import DataError

JSONL_SUFFIXES = tuple(
    base + comp for base in (".jsonl", ".ndjson") for comp in ("", ".gz", ".zst")
)
_READ_BYTES = 1 << 20  # decompression and Arrow batches are read this much at a time


class BadInput:
    """Applies `data.on_bad_input` to one problem: raise it, or count it and remember the first
    message for the log."""

    def __init__(self, policy: str, stats: dict):
        self.policy, self.stats = policy, stats
        self.messages: list[str] = []

    def __call__(self, counter: str, message: str) -> None:
        if self.policy == "error":
            raise DataError(message)
        self.stats[counter] += 1
        if counter == "bad_files":  # a whole file says more than one of its lines
            self.messages.insert(0, message)
        elif len(self.messages) < 20:
            self.messages.append(message)


def is_saved_dataset(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / "state.json").is_file()


def _open_stream(path: pathlib.Path):
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller through the wrapper
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    if path.name.endswith(".zst"):
        return io.BufferedReader(_ZstdFrames(raw))
    return raw


class _ZstdFrames(io.RawIOBase):
    """A .zst file as a stream, frame after frame; a file that ends inside a frame raises
    (zstandard's own stream reader returns a silent early EOF there)."""

    def __init__(self, raw):
        import zstandard

        self._raw, self._new = raw, zstandard.ZstdDecompressor().decompressobj
        self._frame, self._buffer = self._new(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            chunk = self._raw.read(_READ_BYTES)
            if not chunk:
                if not self._frame.eof:
                    raise OSError("the zstd stream ends inside a frame (truncated)")
                return 0
            if self._frame.eof:
                self._frame = self._new()
            self._buffer = self._frame.decompress(chunk)
            while self._frame.eof and self._frame.unused_data:
                rest, self._frame = self._frame.unused_data, self._new()
                self._buffer += self._frame.decompress(rest)
        size = min(len(target), len(self._buffer))
        target[:size], self._buffer = self._buffer[:size], self._buffer[size:]
        return size

    def close(self) -> None:
        self._raw.close()
        super().close()


def whole_file(path: pathlib.Path) -> bytes:
    try:
        with _open_stream(path) as f:
            return f.read()
    except OSError as err:  # also gzip.BadGzipFile
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    except EOFError:
        raise DataError(f"cannot read {path}: the gzip stream is truncated") from None


def jsonl_texts(path: pathlib.Path, field: str, bad: BadInput) -> Iterator[tuple[int, bytes]]:
    """(line number, text) per line holding a string `field`; reads the file as a stream."""
    number = found = 0
    seen_fields: set[str] = set()
    try:
        with _open_stream(path) as f:
            for number, line in enumerate(f, start=1):  # noqa: B007 - used after the loop
                if not line.strip():
                    continue
                try:
                    # Invalid UTF-8 inside a string must reach the UTF-8 policy, not the parser.
                    record = json.loads(line.decode("utf-8", "surrogateescape"))
                except (json.JSONDecodeError, RecursionError):
                    bad("dropped_bad_json", f"{path}:{number}: not valid JSON")
                    continue
                if not isinstance(record, dict):
                    kind = type(record).__name__
                    bad("dropped_bad_json", f"{path}:{number}: a JSON {kind}, not an object")
                    continue
                if not isinstance(record.get(field), str):
                    seen_fields.update(record)
                    bad("dropped_missing_field", f"{path}:{number}: no string field {field!r}")
                    continue
                found += 1
                yield number, record[field].encode("utf-8", "surrogateescape")
    except (OSError, EOFError) as err:  # also gzip.BadGzipFile
        _truncated(path, number, err, bad)
    except Exception as err:  # zstandard's ZstdError (corrupt data) is not an OSError
        if type(err).__name__ != "ZstdError":
            raise
        _truncated(path, number, err, bad)
    if not found and seen_fields:
        bad(
            "bad_files",
            f"{path}: no line has a string field {field!r} (data.text_field); "
            f"fields seen: {', '.join(sorted(seen_fields)[:10])}",
        )


def _truncated(path: pathlib.Path, line: int, err: Exception, bad: BadInput) -> None:
    bad("bad_files", f"{path}: unreadable after line {line} ({err or 'truncated stream'})")


def _arrow_texts(batches, path, field: str, bad: BadInput) -> Iterator[tuple[int, bytes]]:
    row = 0
    for batch in batches:
        column = batch.column(batch.schema.get_field_index(field))
        for value in column.to_pylist():
            row += 1
            if not isinstance(value, str):
                bad("dropped_missing_field", f"{path} row {row}: {field!r} is not a string")
                continue
            yield row, value.encode("utf-8", "surrogateescape")


def parquet_texts(path: pathlib.Path, field: str, bad: BadInput) -> Iterator[tuple[int, bytes]]:
    """(row number, text) per row, one row group in memory at a time."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow.ArrowInvalid and OSError: not a Parquet file
        bad("bad_files", f"{path}: not a readable Parquet file ({err})")
        return
    names = parquet.schema_arrow.names
    if field not in names:
        bad("bad_files", f"{path}: no column {field!r} (data.text_field); columns: {names}")
        return
    batches = parquet.iter_batches(batch_size=1024, columns=[field])
    yield from _arrow_texts(batches, path, field, bad)


def saved_dataset_texts(
    directory: pathlib.Path, field: str, bad: BadInput
) -> Iterator[tuple[str, int, bytes]]:
    """(file, row, text) of a `save_to_disk` directory: its Arrow stream files in the order
    `state.json` lists them."""
    import pyarrow as pa

    state = json.loads((directory / "state.json").read_text())
    for entry in state.get("_data_files", []):
        path = directory / entry["filename"]
        with pa.memory_map(str(path)) as source:
            stream = pa.ipc.open_stream(source)
            if field not in stream.schema.names:
                bad("bad_files", f"{path}: no column {field!r}; columns: {stream.schema.names}")
                continue
            for row, text in _arrow_texts(stream, path, field, bad):
                yield entry["filename"], row, text
