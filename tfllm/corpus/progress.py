"""The progress line of prepare: MB read (of the input's size when known), documents, tokens
written and shards, MB/s and ETA, on the shared line of `tfllm.progress`."""

from __future__ import annotations

import logging

from tfllm.config import DataConfig
from tfllm.corpus.clean import CleaningStats
from tfllm.corpus.sources import list_files, sources
from tfllm.errors import DataError
from tfllm.progress import Progress, format_count

logger = logging.getLogger(__name__)


class PrepareProgress:
    """Reads prepare's state after each batch and updates the line (written when it is due)."""

    def __init__(self, data: DataConfig):
        total = input_bytes(data.source)
        self.line = Progress(
            "prepare", total / 1e6 if total else None, unit="MB", count_unit="MB", logger=logger
        )

    def update(self, state: dict) -> None:
        totals = sum(state["sources"].values(), CleaningStats())
        writers = [w for info in state["splits"].values() for w in info["writers"]]
        tokens = sum(s["tokens"] for w in writers for s in w.shards)
        shards = sum(len(w.shards) for w in writers)
        self.line.update(
            totals["bytes_read"] / 1e6,
            fields=(
                f"{totals['documents_read']} documents",
                f"{format_count(tokens)} tokens in {shards} shards",
            ),
        )


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
