"""The order-dependent end of prepare: deduplicate, pack, write shards, write the manifest.

Both runners feed it the per-document results of `stream.process` in document order, batch by
batch: the local runner as its worker processes return them, the Beam runner from the batch files
its workers wrote. Everything that depends on the order of documents (which duplicate is the
first, where a window ends, the shard a record lands in) is decided here, in one place, so the
shards and manifest are a function of the inputs and settings only.

Each split is written as `data.scatter_shards` lanes, each with its own packer and shard
writer: a document goes to the lane picked by a hash of its name and `data.scatter_seed`.
Sources arrive in file order (the stdlib alphabetically, a crawl by site); packed as they come,
a shard would hold one slice of that order and a training run that reads a few shards would
see a few topics. Scattered, every shard holds a sample of the documents from the whole
stretch of input it was filled from (the whole corpus while a lane has not filled a shard),
the same whatever the runner or worker count, with memory bounded by the lanes' unfinished
shards, not by the corpus. Each shard's windows are written in an order drawn from
(scatter_seed, lane, shard), so the reader, which takes several shards a record at a time
(reader.py), meets windows of all of a shard's documents from its first records on. The
manifest lists the shards round by round (the first shard of each lane, then the second...).
"""

from __future__ import annotations

import collections
import hashlib
import json
import posixpath

import numpy as np

from tfllm.config import Config, DataConfig
from tfllm.corpus.clean import CleaningStats
from tfllm.corpus.sources import sources
from tfllm.data import fingerprint, records
from tfllm.data.layout import data_dir, split_of, stored_tokenizer
from tfllm.data.packing import ConcatPacker, DocumentPacker
from tfllm.errors import DataError
from tfllm.files import write_atomically
from tfllm.tokenizers import tokenizer

SPLITS = ("train", "val")
DROPPED_SAMPLE = "dropped-sample.jsonl"


def no_usable(data: DataConfig, split: str, stats: CleaningStats, bads) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) or "nothing read"
    problems = [m for bad in bads for m in bad.messages]
    first = f"; first problem: {problems[0]}" if problems else ""
    raise DataError(
        f"data.source {data.source!r} gave no usable {split} documents ({counts}){first}"
    )


def fresh_state(cfg: Config, moved: str) -> dict:
    d, out = cfg.data, data_dir(cfg)
    packer = DocumentPacker if d.packing == "document" else ConcatPacker
    return {
        "position": 0,
        "moved_to_val": moved,
        "sources": collections.defaultdict(CleaningStats),
        "unsaved_shards": 0,  # shards finished since the last restart checkpoint
        "splits": {
            split: {
                "packers": [packer(d.seq_len + 1) for _ in range(d.scatter_shards)],
                "writers": [
                    records.ShardWriter(
                        out,
                        split,
                        d.seq_len + 1,
                        d.records_per_shard,
                        d.compression,
                        lane,
                        # One lane keeps the input order, windows included.
                        order_seed=d.scatter_seed if d.scatter_shards > 1 else None,
                    )
                    for lane in range(d.scatter_shards)
                ],
                "documents": 0,
                "tokens_in": 0,
            }
            for split in SPLITS
        },
        "dropped": collections.defaultdict(list),
    }


def lane_of(name: str, seed: int, lanes: int) -> int:
    """The lane (0 .. lanes - 1) of the document called `name`: a seeded hash, independent of
    the one that picks its split."""
    key = hashlib.sha256(f"scatter:{seed}:{name}".encode()).digest()
    return int.from_bytes(key[:8], "big") % lanes


def take(cfg, state, deduplicator, batch) -> int:
    """Deduplicates, counts, packs and writes one `stream.Batch`; returns shards finished."""
    d = cfg.data
    for source, counts in batch.stats.items():
        state["sources"][source].update(counts)
    # Per document the worker kept: split (0 train, 1 val) x lanes + lane, or -1 when dropped.
    labels, kept_index = [], 0
    for name, source, reason, key, pieces, size, snippet in batch.docs:
        counts = state["sources"][source]
        if not reason:
            signature = None if batch.signatures is None else batch.signatures[kept_index]
            kept_index += 1
            reason = deduplicator.check(key, signature)
            if reason:
                counts[reason] += 1
                labels.append(-1)
        if reason:
            if len(state["dropped"][reason]) < d.dropped_sample:
                state["dropped"][reason].append(
                    {"reason": reason, "source": source, "name": name, "text": snippet}
                )
            continue
        counts["documents"] += 1
        counts["bytes"] += size
        if pieces > 1:
            counts["split_long"] += 1
            counts["split_pieces"] += pieces
        moved = name == state["moved_to_val"]
        split = SPLITS.index("val" if moved else split_of(name, d.val_fraction))
        labels.append(split * d.scatter_shards + lane_of(name, d.scatter_seed, d.scatter_shards))
    if not labels:
        return 0
    labels = np.array(labels, np.int64)
    n_pieces = np.array([doc[4] for doc in batch.docs if not doc[2]], np.int64)  # all >= 1
    doc_tokens = np.add.reduceat(batch.piece_lengths, np.cumsum(n_pieces) - n_pieces)
    piece_labels, token_labels = np.repeat(labels, n_pieces), np.repeat(labels, doc_tokens)
    finished = 0
    for label in np.unique(labels[labels >= 0]).tolist():
        split, lane = divmod(label, d.scatter_shards)
        info = state["splits"][SPLITS[split]]
        flat = batch.tokens[token_labels == label]
        lengths = batch.piece_lengths[piece_labels == label]
        info["documents"] += int(np.sum(labels == label))
        info["tokens_in"] += flat.size
        finished += info["writers"][lane].write(*info["packers"][lane].add(flat, lengths))
    return finished


def should_save(cfg, state, finished: int) -> bool:
    """Whether to write a restart checkpoint after a batch that finished `finished` shards.

    A checkpoint holds every lane's unfinished shard, so one per finished shard would write
    about scatter_shards / 2 shards' worth each time; one per scatter_shards finished shards
    writes about half the dataset's size in all.
    """
    state["unsaved_shards"] += finished
    if state["unsaved_shards"] < cfg.data.scatter_shards:
        return False
    state["unsaved_shards"] = 0
    return True


def _close_lanes(info: dict, window_len: int) -> int:
    """Writes what a split's packers still hold; returns the tokens dropped. In concat packing
    the lanes' tails are packed together, so a split drops less than one window, as with one
    lane (and no lane's last small documents are lost)."""
    packers, writers = info["packers"], info["writers"]
    if isinstance(packers[0], ConcatPacker):
        merged = ConcatPacker(window_len)
        tails = np.concatenate([packer.tail() for packer in packers])
        writers[0].write(merged.add(tails, np.array([tails.size]))[0])
        packers, writers = [merged], writers[:1]
    dropped = 0
    for packer, writer in zip(packers, writers, strict=True):
        windows, segments, lane_dropped = packer.finish()
        writer.write(windows, segments)
        dropped += lane_dropped
    return dropped


def finish(cfg, settings, state, bads, sources_stats) -> dict:
    d, out = cfg.data, data_dir(cfg)
    for index, bad in enumerate(bads):
        sources_stats[index].update(bad.stats)
    cleaning = sum(sources_stats.values(), CleaningStats())
    splits = {}
    for split in SPLITS:
        info = state["splits"][split]
        if not info["documents"]:
            no_usable(d, split, cleaning, bads)
        dropped = _close_lanes(info, d.seq_len + 1)
        finished = [writer.finish() for writer in info["writers"]]
        rounds = max(len(lane) for lane in finished)
        in_order = [lane[i] for i in range(rounds) for lane in finished if i < len(lane)]
        shards = records.publish(out, split, in_order)
        written = sum(s["tokens"] for s in shards)
        count = sum(s["records"] for s in shards)
        if count == 0:
            raise DataError(
                f"{split} split has {info['tokens_in']} tokens, fewer than one window of "
                f"data.seq_len + 1 = {d.seq_len + 1}; use more text or a smaller data.seq_len"
            )
        splits[split] = {
            "documents": info["documents"],
            "tokens_in": int(info["tokens_in"]),
            "tokens_written": int(written),
            "tokens_dropped": int(dropped),
            "tokens_padding": int(count * (d.seq_len + 1) - written),
            "records": count,
            "shards": shards,
        }
    dropped = [entry for reason in sorted(state["dropped"]) for entry in state["dropped"][reason]]
    write_atomically(
        posixpath.join(out, DROPPED_SAMPLE), "".join(json.dumps(e) + "\n" for e in dropped)
    )
    names = [entry for entry, _ in sources(d.source)]
    manifest = {
        "version": records.MANIFEST_VERSION,
        "name": d.name,
        "source": d.source,
        "seq_len": d.seq_len,
        "window_len": d.seq_len + 1,
        "packing": d.packing,
        "compression": d.compression,
        "vocabulary_size": cfg.model.vocabulary_size,
        "eos_id": settings.doc_end[0],
        "tokenizer": _tokenizer_entry(d, settings.tokenizer),
        "cleaning": dict(sorted(cleaning.items())),
        "sources": {
            names[i]: {"weight": w, **dict(sorted(sources_stats[i].items()))}
            for i, (_, w) in enumerate(sources(d.source))
        },
        "moved_to_val": state["moved_to_val"],
        "built_from": fingerprint.describe(cfg),
        "splits": splits,
    }
    records.write_manifest(out, manifest)
    return manifest


def _tokenizer_entry(d: DataConfig, data: bytes) -> dict:
    """The manifest's `tokenizer`: the dataset's copy, and how it was trained or where the
    given one (data.tokenizer) came from."""
    entry = {"file": stored_tokenizer(d), "sha256": tokenizer.sha256(data)}
    if d.tokenizer:
        return {**entry, "given": d.tokenizer}
    return {
        **entry,
        "type": d.tokenizer_type,
        "byte_fallback": d.tokenizer_byte_fallback,
        "character_coverage": d.tokenizer_character_coverage,
        "sample_mb": d.tokenizer_sample_mb,
    }
