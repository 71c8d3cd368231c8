"""The progress line of prepare: documents, MB read, MB/s, tokens written, shards, ETA."""

from __future__ import annotations

import time

from tfllm.config import DataConfig
from tfllm.data.clean import CleaningStats
from tfllm.data.corpus import list_files, sources
from tfllm.errors import DataError

_PROGRESS_SECONDS = 10.0


class Progress:
    """One line every few seconds: documents, MB read, MB/s, tokens, shards, ETA."""

    def __init__(self, log, data: DataConfig, start: float):
        self.log, self.start, self.last = log, start, time.time()
        self.total = input_bytes(data.source)

    def update(self, state: dict, bads) -> None:
        now = time.time()
        if now - self.last < _PROGRESS_SECONDS:
            return
        self.last = now
        totals = sum(state["sources"].values(), CleaningStats())
        megabytes = totals["bytes_read"] / 1e6
        rate = megabytes / (now - self.start)
        writers = [w for info in state["splits"].values() for w in info["writers"]]
        tokens = sum(s["tokens"] for w in writers for s in w.shards)
        line = (
            f"prepare: {totals['documents_read']} documents, {megabytes:.1f} MB read, "
            f"{rate:.2f} MB/s, {tokens} tokens in {sum(len(w.shards) for w in writers)} shards"
        )
        if self.total:
            line += f", ETA {max(0.0, (self.total / 1e6 - megabytes) / max(rate, 1e-9)):.0f}s"
        self.log(line)


def input_bytes(source: str) -> int:
    """The input's size when it is known: one source of uncompressed text or JSON Lines."""
    if len(sources(source)) > 1 or source.startswith("tfds:"):
        return 0
    try:
        files = list_files(source)
    except DataError:
        return 0
    if any(p.suffix in (".gz", ".zst", ".parquet") or p.is_dir() for _, p in files):
        return 0
    return sum(p.stat().st_size for _, p in files)
