"""The order-dependent end of prepare: deduplicate, pack, write shards, write the manifest.

Both runners feed it the per-document results of `stream.process` in document order, batch by
batch: the local runner as its worker processes return them, the Beam runner from the batch files
its workers wrote. Everything that depends on the order of documents (which duplicate is the
first, where a window ends, the shard a record lands in) is decided here, in one place, so the
shards and manifest are a function of the inputs and settings only.
"""

from __future__ import annotations

import collections
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
        "splits": {
            split: {
                "packer": packer(d.seq_len + 1),
                "writer": records.ShardWriter(
                    out, split, d.seq_len + 1, d.records_per_shard, d.compression
                ),
                "documents": 0,
                "tokens_in": 0,
            }
            for split in SPLITS
        },
        "dropped": collections.defaultdict(list),
    }


def take(cfg, state, deduplicator, batch) -> int:
    """Deduplicates, counts, packs and writes one `stream.Batch`; returns shards finished."""
    d = cfg.data
    for source, counts in batch.stats.items():
        state["sources"][source].update(counts)
    # Per document the worker kept: its split (0 train, 1 val) or -1 when dropped here.
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
        labels.append(SPLITS.index("val" if moved else split_of(name, d.val_fraction)))
    if not labels:
        return 0
    labels = np.array(labels, np.int64)
    n_pieces = np.array([doc[4] for doc in batch.docs if not doc[2]], np.int64)  # all >= 1
    doc_tokens = np.add.reduceat(batch.piece_lengths, np.cumsum(n_pieces) - n_pieces)
    piece_labels, token_labels = np.repeat(labels, n_pieces), np.repeat(labels, doc_tokens)
    finished = 0
    for index, split in enumerate(SPLITS):
        count = int(np.sum(labels == index))
        if count:
            info = state["splits"][split]
            flat = batch.tokens[token_labels == index]
            lengths = batch.piece_lengths[piece_labels == index]
            info["documents"] += count
            info["tokens_in"] += flat.size
            finished += info["writer"].write(*info["packer"].add(flat, lengths))
    return finished


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
        windows, segments, dropped = info["packer"].finish()
        info["writer"].write(windows, segments)
        shards = info["writer"].close()
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
