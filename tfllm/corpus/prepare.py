"""`python -m tfllm.prepare`: sources -> cleaning, filters, dedup -> SentencePiece -> packed shards.

    python -m tfllm.prepare --config configs/tiny.yaml [--force | --verify] [--runner beam]

Two streaming passes over the sources. The first draws the tokenizer's training sample: the
cleaned train documents with the smallest hash of their name, up to `data.tokenizer_sample_mb`
(the same sample whatever the order or the size of the corpus); with `data.tokenizer` set (an
imported model's `.model` or `tokenizer.json`) nothing is sampled or trained, that tokenizer
reads the corpus and the model's own start and EOS ids frame each document. The second sends
batches of documents to `data.workers` processes (stream.py) and, in document order,
deduplicates, packs and writes `<data.root>/<data.name>/{train,val}-*.tfrecord` (assemble.py:
each document to one of `data.scatter_shards` shards filled at once, by a seeded hash of its
name); a checkpoint after every `data.scatter_shards` finished shards makes it restartable
(resume.py). Then the tokenizer's copy (`tokenizer.model` or `tokenizer.json`),
`dropped-sample.jsonl` (the first `data.dropped_sample` documents dropped per reason) and, last
and atomically, `manifest.json`:
shards with record and token counts, sizes and sha256, the tokenizer and its checksum, counts
per cleaning rule and per source, and what the dataset was made from (fingerprint.py), which
a later run compares with its config before reading a shard. `--verify` checks every shard
and the tokenizer against the manifest. `--runner beam` runs the second pass as an Apache Beam
pipeline instead (beam.py), with the same output.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import heapq
import logging
import os
import posixpath
import time
from collections.abc import Callable, Iterator

import tensorflow as tf

from tfllm import resources
from tfllm.config import Config, DataConfig
from tfllm.corpus import assemble, formats, resume, sft_prepare, stream
from tfllm.corpus.assemble import DROPPED_SAMPLE  # noqa: F401 - the stage's names
from tfllm.corpus.clean import CleaningStats, clean_text
from tfllm.corpus.progress import PrepareProgress
from tfllm.corpus.sources import read_raw, sources
from tfllm.data import layout
from tfllm.data.layout import data_dir, split_of
from tfllm.errors import DataError
from tfllm.locks import DirectoryLock
from tfllm.tokenizers import tokenizer

logger = logging.getLogger(__name__)
MAX_BATCH_DOCS = 256
LOCK_NAME = "prepare.lock"


def workers(data: DataConfig) -> int:
    return data.workers or os.cpu_count() or 1


def read_sources(data: DataConfig) -> tuple[object, list[formats.BadInput]]:
    bads = [formats.BadInput(data.on_bad_input, CleaningStats()) for _ in sources(data.source)]
    return read_raw(data.source, data.text_field, data.tfds_data_dir, bads), bads


def batch_bytes(data: DataConfig, n_workers: int) -> int:
    """Sized so that the batches in flight (2 per worker and one being packed) stay well
    inside data.max_memory_mb, and small enough (256 KB: about 0.1 s of tokenizing) that the
    workers stay evenly busy to the end of a corpus of a few MB."""
    return min(256 << 10, max(64 << 10, (data.max_memory_mb << 20) // (16 * (2 * n_workers + 1))))


def _sample_key(name: str) -> bytes:
    return hashlib.sha256(b"tokenizer-sample:" + name.encode()).digest()


def sample_pass(data: DataConfig) -> tuple[list[str], str]:
    """(the tokenizer's sample, the name of a train document moved to val or "").

    The sample is the bottom-k by `_sample_key` of the usable train documents up to
    tokenizer_sample_mb: drawn from the whole stream, in memory only the sample. With two or
    more usable documents and none hashed to val, the train document nearest to val goes there.
    """
    # No sample when data.tokenizer names the tokenizer: nothing is trained.
    budget = 0 if data.tokenizer else data.tokenizer_sample_mb << 20
    held, heap = 0, []
    counts, nearest, stats = collections.Counter(), (2.0, ""), CleaningStats()
    docs, bads = read_sources(data)
    for raw in docs:
        text, _ = clean_text(raw.data, data.utf8_policy, data.min_doc_chars, stats)
        if text is None:
            continue
        split = split_of(raw.name, data.val_fraction)
        counts[split] += 1
        if split == "val":
            continue
        bucket = int.from_bytes(hashlib.sha256(raw.name.encode()).digest()[:8], "big") / 2**64
        nearest = min(nearest, (bucket, raw.name))
        key = int.from_bytes(_sample_key(raw.name), "big")
        if held >= budget and (not heap or key >= -heap[0][0]):
            continue
        heapq.heappush(heap, (-key, text))
        held += len(text)
        while held - len(heap[0][1]) >= budget:
            held -= len(heapq.heappop(heap)[1])
    usable = counts["train"] + counts["val"]
    if usable < 2:
        stats = sum((b.stats for b in bads), stats)
        tally = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "nothing read"
        problems = [m for bad in bads for m in bad.messages]
        first = f"; first problem: {problems[0]}" if problems else ""
        raise DataError(
            f"data.source {data.source!r} gave {usable} usable document(s) ({tally}){first}; "
            "at least 2 are needed, one for training and one for validation: add text, or "
            "lower data.min_doc_chars if documents were dropped as too short"
        )
    if not counts["train"]:
        assemble.no_usable(data, "train", sum((b.stats for b in bads), stats), bads)
    moved = nearest[1] if not counts["val"] else ""
    if moved:
        logger.info(
            f"data.val_fraction {data.val_fraction} gave no val document among {usable}: "
            f"{moved} moved to val"
        )
    return [text for _, text in sorted(heap, reverse=True) if text], moved


def train_tokenizer(cfg: Config, out: str) -> tuple[bytes, str]:
    """(the tokenizer file's bytes, the train document moved to val or "") after the first
    pass; stores a copy of the tokenizer in the dataset. With data.tokenizer set (an imported
    model's `tokenizer.model` or byte-level BPE `tokenizer.json`) that file is used as it is:
    nothing is trained, the corpus is read with the model's own tokenizer."""
    d = cfg.data
    if d.tokenizer:
        if not d.tokenizer.endswith((".model", ".json")) or not tf.io.gfile.exists(d.tokenizer):
            raise DataError(
                f"data.tokenizer {d.tokenizer}: prepare reads text with a SentencePiece .model "
                "or a byte-level BPE tokenizer.json file that exists"
            )
        _document_ends(d.tokenizer)  # a tokenizer.json tfllm cannot run stops here, not later
    sample, moved = sample_pass(d)
    if d.tokenizer:
        with tf.io.gfile.GFile(d.tokenizer, "rb") as f:
            proto = f.read()
        logger.info(f"tokenizer: {d.tokenizer} (given, not trained)")
    else:
        proto = tokenizer.train_tokenizer(
            sample,
            cfg.model.vocabulary_size,
            d.tokenizer_type,
            d.tokenizer_sample_mb,
            d.tokenizer_byte_fallback,
            d.tokenizer_character_coverage,
        )
        logger.info(
            f"tokenizer: {d.tokenizer_type}, {cfg.model.vocabulary_size} pieces, {len(sample)} docs"
        )
    with tf.io.gfile.GFile(posixpath.join(out, layout.stored_tokenizer(d)), "wb") as f:
        f.write(proto)
    return proto, moved


def settings(cfg: Config, proto: bytes) -> stream.Settings:
    d = cfg.data
    return stream.Settings(
        proto,
        d.utf8_policy,
        d.min_doc_chars,
        d.max_doc_chars,
        d.filter_min_alnum,
        d.filter_max_line_chars,
        d.filter_max_repeated_lines,
        d.near_dedup,
        d.minhash_ngram,
        d.minhash_perms,
        *_document_ends(d.tokenizer),
        d.tokenizer.endswith(".json"),
    )


def _document_ends(given: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What goes around each document: nothing and EOS for a tokenizer prepare trains; for a
    given one (an imported model's), its start ids (Llama: BOS) and its own first stop id
    (`tokenizer.specials`), never tfllm's EOS."""
    if not given:
        return (), (tokenizer.EOS_ID,)
    return _given_ends(given, tf.io.gfile.stat(given).mtime_nsec)


@functools.lru_cache(maxsize=4)
def _given_ends(path: str, modified: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # Cached: building a Llama 3-sized in-graph tokenizer takes seconds, and prepare asks twice
    # (the early check, then the workers' settings). `modified` keeps a rewritten file fresh.
    ids = tokenizer.specials(tokenizer.load_tokenizer(path))
    return ids.start, ids.stop[:1]


def prepare(cfg: Config, timings: dict | None = None) -> dict:
    """Builds (or finishes building) the dataset of `cfg.data`; returns its manifest.

    One process at a time per dataset (`<dataset>/prepare.lock`). A full disk is one error
    line, with the temporary files removed and the restart state kept.
    `timings`, when given, receives the seconds of each phase (read: the sampling pass,
    tokenizer, pack: the streaming pass; pack_cpu: this process's CPU seconds in it).
    """
    stream.refuse_in_worker_import()
    out = data_dir(cfg)
    kept = (
        f"the shards finished so far and the restart state in {out}/{resume.STATE_DIR} (run "
        "prepare again to continue)"
    )
    with building(out, kept, lambda: _remove_temporaries(out)):
        return _prepare(cfg, {} if timings is None else timings)


def _remove_temporaries(out: str) -> None:
    resources.remove_temporaries(out, ["*.tmp"])
    resources.remove_temporaries(posixpath.join(out, resume.STATE_DIR), ["*.tmp"])


@contextlib.contextmanager
def building(out: str, kept: str, cleanup: Callable[[], object]) -> Iterator[None]:
    """One writer per dataset (`<dataset>/prepare.lock`), and a full disk as one error line
    naming what is `kept`, after `cleanup` removed the temporary files."""
    with (
        DirectoryLock(out, LOCK_NAME, "dataset", "prepare"),
        resources.guarded("the dataset", out, kept, cleanup),
    ):
        yield


def _prepare(cfg: Config, timings: dict) -> dict:
    d, out, start = cfg.data, data_dir(cfg), time.time()
    tf.io.gfile.makedirs(out)
    if d.format == "preference":  # pairs for DPO
        from tfllm.corpus.preference import prepare_preference

        return prepare_preference(cfg, out)
    if d.format != "text":  # instruction and chat data: examples, a loss mask, no dedup
        return sft_prepare.prepare_sft(cfg, out)
    checkpoint = resume.Checkpoint(out, resume.fingerprint(cfg))
    state = checkpoint.load()
    tokenizer_path = posixpath.join(out, layout.stored_tokenizer(d))
    with stream.Workers(workers(d)) as pool:  # they start while the first pass runs
        if state is None:
            checkpoint.clear()
            proto, moved = train_tokenizer(cfg, out)
            state = assemble.fresh_state(cfg, moved)
            timings["read"], timings["tokenizer"] = time.time() - start, 0.0
        else:
            with tf.io.gfile.GFile(tokenizer_path, "rb") as f:
                proto = f.read()
            logger.info(f"resuming {out} after {state['position']} documents")
            timings["read"] = timings["tokenizer"] = 0.0
        dedup_state = (state.pop("dedup_keys", []), state.pop("dedup_signatures", None))
        stream_settings = settings(cfg, proto)
        pool.start(stream_settings)
        cpu = time.process_time()
        sources_stats, bads = _stream(cfg, pool, state, checkpoint, dedup_state)
    timings["pack"] = time.time() - start - timings["read"] - timings["tokenizer"]
    timings["pack_cpu"] = time.process_time() - cpu
    manifest = assemble.finish(cfg, stream_settings, state, bads, sources_stats)
    checkpoint.clear()
    megabytes = manifest["cleaning"].get("bytes_read", 0) / 1e6
    seconds = time.time() - start
    logger.info(
        f"prepared {out} in {seconds:.1f}s ({megabytes:.1f} MB of text, "
        f"{megabytes / max(seconds, 1e-9):.2f} MB/s, {workers(d)} workers)"
    )
    return manifest


def _stream(cfg, pool, state, checkpoint, dedup_state):
    """The second pass: documents -> workers -> dedup -> packers -> shards, in order."""
    from tfllm.corpus.dedup import Deduplicator

    d = cfg.data
    deduplicator = Deduplicator(d.near_dedup, d.minhash_bands, d.minhash_threshold)
    deduplicator.restore(*dedup_state)
    docs, bads = read_sources(d)
    for _ in range(state["position"]):  # read again, not processed again
        next(docs)
    batches = stream.batches(docs, batch_bytes(d, pool.count), MAX_BATCH_DOCS)
    progress = PrepareProgress(d)
    for batch in pool.run(batches):
        finished = assemble.take(cfg, state, deduplicator, batch)
        state["position"] += len(batch.docs)
        if assemble.should_save(cfg, state, finished):
            checkpoint.save(state, *deduplicator.take_added())
        progress.update(state)
    return state["sources"], bads


def ensure_prepared(cfg: Config, build=None) -> dict:
    """Returns the manifest of `cfg.data`, preparing the dataset first when it is missing
    (with `build`, `prepare` when None)."""
    return layout.ensure_prepared(cfg, build or prepare)
