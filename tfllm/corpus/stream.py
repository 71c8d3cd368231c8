"""The per-document work of prepare, in batches, in `data.workers` processes.

A worker cleans, filters, hashes (exact key, MinHash signature) and tokenizes each document of
a batch and sends back one `Batch`: a small tuple per document and the token ids of all kept
documents as one array (sent between processes as raw buffers, not as Python objects). The
main process takes the deduplication decisions, packs and writes in document order. Batches
are cut by a byte and document budget that does not depend on the worker count and results
are taken in submission order, so 1, 2 or N workers write the same bytes. At most
2 x workers + 1 batches are in flight: memory is bounded by the batch size, not the corpus.

Workers never import TensorFlow: they tokenize with the `sentencepiece` library (a `.model`:
tfllm's own or an imported Llama 2 / Mistral / Gemma one) or the `tokenizers` library (an
imported byte-level BPE `tokenizer.json`), which give the ids of the in-graph tokenizers that
training and serving use (tested), and a worker stays about 60 MB. They are started with
`spawn` (forking a process that runs TensorFlow's threads is unsafe).
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from tfllm.corpus import dedup, filters
from tfllm.corpus.clean import CleaningStats, clean_text, digest, split_long
from tfllm.errors import ConfigError, DataError

SNIPPET_CHARS = 300  # of a dropped document, kept for dropped-sample.jsonl


@dataclass(frozen=True)
class Settings:
    tokenizer: bytes  # the tokenizer file's bytes: a SentencePiece model or a tokenizer.json
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
    # an imported model reads one as its tokenizer does (Llama: BOS first) and ends it with its
    # own EOS.
    doc_start: tuple[int, ...] = ()
    doc_end: tuple[int, ...] = (2,)
    tokenizer_json: bool = False  # True: `tokenizer` is a tokenizer.json (`tokenizers`)


@dataclass
class Batch:
    """One batch's results in document order.

    docs: (name, source, reason, key, pieces, text_bytes, snippet) per document; reason is the
    drop counter for a document the worker dropped ("" when kept), key its exact-duplicate
    key, pieces how many parts data.max_doc_chars cut it into. The kept documents' ids are
    `tokens` (start ids, every piece, end ids, document after document), `piece_lengths` the
    tokens of each piece (document packing keeps them apart), `signatures` their MinHash rows
    (with near-duplicate removal). stats: the cleaning counters per source.
    """

    docs: list[tuple]
    tokens: np.ndarray
    piece_lengths: np.ndarray
    signatures: np.ndarray | None
    stats: dict[int, CleaningStats]


_WORKER: dict = {}  # per process: settings, the encoder and the MinHash permutations


def init(settings: Settings) -> None:
    _WORKER["settings"] = settings
    encoder = _json_encoder if settings.tokenizer_json else _sp_encoder
    _WORKER["encode"] = encoder(settings)
    _WORKER["perms"] = dedup.minhash_permutations(settings.perms) if settings.near_dedup else None


def _sp_encoder(settings: Settings):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=settings.tokenizer)
    # int32 buffers, no Python int per token. One call per text, in this thread: the batch call
    # hands the work to a pool thread even with num_threads=1, and on a loaded machine that
    # thread waited for a core (up to 2x the CPU time in wall time, measured).
    return lambda texts: [sp.encode(text, out_type="numpy") for text in texts]


def _json_encoder(settings: Settings):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ConfigError("data.tokenizer is a tokenizer.json: pip install 'tfllm[hub]'") from None
    # encode_batch would start a thread per core in each worker process: the workers are the
    # parallelism (the library reads this variable at each call).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tok = Tokenizer.from_str(settings.tokenizer.decode())
    # Without the post-processor's tokens: the start and end ids are the settings' (the same
    # prefix for Llama 3, whose template is "BOS $A").
    return lambda texts: [
        np.array(e.ids, np.int32) for e in tok.encode_batch(texts, add_special_tokens=False)
    ]


def process(batch: list[tuple[str, int, bytes]]) -> Batch:
    """Cleans, filters, hashes and tokenizes one batch."""
    s: Settings = _WORKER["settings"]
    stats: dict[int, CleaningStats] = collections.defaultdict(CleaningStats)
    docs, texts, signatures = [], [], []
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
            docs.append((name, source, reason, b"", 0, 0, snippet))
            continue
        if s.near_dedup:
            signatures.append(dedup.minhash(text, s.ngram, _WORKER["perms"]))
        pieces = split_long(text, s.max_chars)
        texts.extend(pieces)
        size = len(text.encode("utf-8"))
        docs.append((name, source, "", digest(text), len(pieces), size, text[:SNIPPET_CHARS]))
    ids = _WORKER["encode"](texts) if texts else []
    start, end = np.array(s.doc_start, np.int32), np.array(s.doc_end, np.int32)
    parts, lengths, at = [], [], 0
    for *_, pieces, _, _ in docs:
        if not pieces:
            continue
        rows = ids[at : at + pieces]
        at += pieces
        parts += [start, *rows, end]
        lengths += [len(row) for row in rows]
        lengths[-pieces] += start.size
        lengths[-1] += end.size
    return Batch(
        docs,
        np.concatenate(parts) if parts else np.zeros([0], np.int32),
        np.array(lengths, np.int64),
        np.stack(signatures) if signatures else None,
        dict(stats),
    )


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


class Workers:
    """The `data.workers` processes (none with one worker: this process does the work).

    Spawning them and importing their libraries takes about 0.2 s each, as long as tokenizing
    a few MB: prepare starts them before its sampling pass, and `start` gives them the
    settings once the tokenizer exists. Each worker takes exactly one `start` task: it waits
    at a barrier until all have taken theirs. A `ProcessPoolExecutor`, not a `Pool`: a worker
    that dies breaks it with an error, where a `Pool` would start another forever.
    """

    def __init__(self, count: int):
        self.count, self._pool = count, None
        if count > 1:
            context = multiprocessing.get_context("spawn")
            barrier = context.Barrier(count)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                count, mp_context=context, initializer=_keep, initargs=(barrier,)
            )

    def start(self, settings: Settings) -> None:
        if self._pool is None:
            init(settings)
        else:
            self._wait(self._pool.map(_init_one, [settings] * self.count))

    def run(self, batches_in: Iterable[list]) -> Iterator[Batch]:
        """Yields process(batch) for each batch, in order; at most 2 x workers + 1 in flight."""
        if self._pool is None:
            yield from map(process, batches_in)
            return
        in_flight: collections.deque = collections.deque()
        for batch in batches_in:
            in_flight.append(self._pool.submit(process, batch))
            if len(in_flight) > 2 * self.count:
                yield self._wait([in_flight.popleft()])[0]
        while in_flight:
            yield self._wait([in_flight.popleft()])[0]

    def _wait(self, results) -> list:
        """The results of `results` (futures or a map's iterator), or one error line when a
        worker process died."""
        try:
            return [r.result() if isinstance(r, concurrent.futures.Future) else r for r in results]
        except concurrent.futures.process.BrokenProcessPool:
            raise DataError(
                f"data.workers={self.count}: a worker process exited while starting or working. "
                "A script that calls tfllm.prepare or tfllm.train must call it under "
                '`if __name__ == "__main__":`: each worker imports the script again'
            ) from None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def refuse_in_worker_import() -> None:
    """Ends this process quietly when it is a prepare worker still importing the parent's main
    script, and that script calls prepare at its top level: preparing again here would start
    workers of its own, forever. The parent then names the cause (`Workers._wait`)."""
    # `_inheriting` is the flag multiprocessing itself reads for this (spawn's
    # `_check_not_importing_main`); it is set only while a spawned child imports __main__.
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise SystemExit(1)


def _keep(barrier) -> None:
    _WORKER["barrier"] = barrier


def _init_one(settings: Settings) -> None:
    try:
        init(settings)
    finally:  # also after an error: the others must not wait forever
        _WORKER["barrier"].wait()
