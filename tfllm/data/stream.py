"""The per-document work of prepare, in batches, in `data.workers` processes.

A worker cleans, filters, hashes (exact key, MinHash signature) and tokenizes each document of
a batch and sends back its verdict and token ids; the main process takes the deduplication
decisions, packs and writes in document order. Batches are cut by a byte and document budget
that does not depend on the worker count and results are taken in submission order, so 1, 2 or
N workers write the same bytes. At most 2 x workers + 1 batches are in flight: memory is bounded
by the batch size, not the corpus.

Workers import sentencepiece, numpy and datasketch, never TensorFlow: the `sentencepiece`
library and tensorflow-text's op run the same model and give the same ids (tested), and a
worker stays about 60 MB. They are started with `spawn` (forking a process that runs
TensorFlow's threads is unsafe).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tfllm.data import dedup, filters
from tfllm.data.clean import CleaningStats, clean_text, digest, split_long

SNIPPET_CHARS = 300  # of a dropped document, kept for dropped-sample.jsonl


@dataclass(frozen=True)
class Settings:
    model_proto: bytes
    utf8_policy: str
    min_chars: int
    max_chars: int
    min_alnum: float
    max_line_chars: int
    max_repeated_lines: float
    near_dedup: bool
    ngram: int
    perms: int
    # Ids around each document (`tokenizer.specials`): tfllm's models end a document with EOS,
    # an imported model reads one as its tokenizer does (Llama: BOS first) and ends it with EOS.
    doc_start: tuple[int, ...] = ()
    doc_end: tuple[int, ...] = (2,)


@dataclass
class Kept:
    name: str
    source: int
    key: bytes  # exact-duplicate key
    signature: np.ndarray | None  # MinHash, with near-duplicate removal
    tokens: np.ndarray  # int32 ids of every piece, EOS after the last
    piece_lengths: np.ndarray  # tokens per piece (document packing keeps them apart)
    pieces: int
    text_bytes: int
    snippet: str


@dataclass
class Dropped:
    name: str
    source: int
    reason: str
    snippet: str


_WORKER: dict = {}  # per process: settings, the tokenizer and the MinHash permutations


def init(settings: Settings) -> None:
    import sentencepiece as spm

    _WORKER["settings"] = settings
    _WORKER["sp"] = spm.SentencePieceProcessor(model_proto=settings.model_proto)
    _WORKER["perms"] = dedup.minhash_permutations(settings.perms) if settings.near_dedup else None


def process(batch: list[tuple[str, int, bytes]]) -> tuple[list, dict[int, CleaningStats]]:
    """(Kept or Dropped per document, counters per source) for one batch."""
    s: Settings = _WORKER["settings"]
    stats: dict[int, CleaningStats] = collections.defaultdict(CleaningStats)
    results, texts = [], []
    for name, source, data in batch:
        text, reason = clean_text(data, s.utf8_policy, s.min_chars, stats[source])
        if text is not None:
            reason = filters.failed_filter(
                text, s.min_alnum, s.max_line_chars, s.max_repeated_lines
            )
            if reason:
                stats[source][reason] += 1
        if reason:
            snippet = (text or data.decode("utf-8", "replace"))[:SNIPPET_CHARS]
            results.append(Dropped(name, source, reason, snippet))
            continue
        signature = dedup.minhash(text, s.ngram, _WORKER["perms"]) if s.near_dedup else None
        pieces = split_long(text, s.max_chars)
        texts.extend(pieces)
        kept = Kept(name, source, digest(text), signature, None, None, len(pieces), 0, "")
        kept.text_bytes, kept.snippet = len(text.encode("utf-8")), text[:SNIPPET_CHARS]
        results.append(kept)
    # One call for the whole batch; one thread: the parallelism is the worker processes.
    ids = _WORKER["sp"].encode(texts, num_threads=1) if texts else []
    lengths = iter(ids)
    for kept in results:
        if isinstance(kept, Kept):
            rows = list(itertools.islice(lengths, kept.pieces))
            rows[0] = [*s.doc_start, *rows[0]]
            rows[-1] = rows[-1] + list(s.doc_end)
            kept.piece_lengths = np.array([len(r) for r in rows], np.int64)
            kept.tokens = np.fromiter(
                itertools.chain.from_iterable(rows), np.int32, int(kept.piece_lengths.sum())
            )
    return results, dict(stats)


def batches(
    docs: Iterable, max_bytes: int, max_docs: int
) -> Iterator[list[tuple[str, int, bytes]]]:
    """Cuts the document stream into batches of at most max_docs documents and about max_bytes
    (a larger document is a batch of its own)."""
    batch, size = [], 0
    for doc in docs:
        batch.append((doc.name, doc.source, doc.data))
        size += len(doc.data)
        if size >= max_bytes or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def run(batches_in: Iterable[list], settings: Settings, workers: int) -> Iterator[tuple]:
    """Yields process(batch) for each batch, in order; in this process when workers == 1."""
    if workers == 1:
        init(settings)
        yield from map(process, batches_in)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=init, initargs=(settings,)) as pool:
        in_flight: collections.deque = collections.deque()
        for batch in batches_in:
            in_flight.append(pool.apply_async(process, (batch,)))
            if len(in_flight) > 2 * workers:
                yield in_flight.popleft().get()
        while in_flight:
            yield in_flight.popleft().get()
