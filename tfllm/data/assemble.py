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
from tfllm.data import records, tokenizer
from tfllm.data.clean import CleaningStats
from tfllm.data.corpus import sources, split_of
from tfllm.data.packing import ConcatPacker, DocumentPacker
from tfllm.errors import DataError

SPLITS = ("train", "val")
DROPPED_SAMPLE = "dropped-sample.jsonl"


def data_dir(cfg: Config) -> str:
    return posixpath.join(cfg.data.root, cfg.data.name)


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


def take(cfg, state, deduplicator, results) -> int:
    """Deduplicates, counts, packs and writes one batch's results; returns shards finished."""
    d = cfg.data
    kept = {split: [] for split in SPLITS}
    for doc in results:
        counts = state["sources"][doc.source]
        reason = getattr(doc, "reason", "") or deduplicator.check(doc.key, doc.signature)
        if reason:
            if not hasattr(doc, "reason"):
                counts[reason] += 1
            if len(state["dropped"][reason]) < d.dropped_sample:
                state["dropped"][reason].append(
                    {"reason": reason, "source": doc.source, "name": doc.name, "text": doc.snippet}
                )
            continue
        counts["documents"] += 1
        counts["bytes"] += doc.text_bytes
        if doc.pieces > 1:
            counts["split_long"] += 1
            counts["split_pieces"] += doc.pieces
        moved = doc.name == state["moved_to_val"]
        kept["val" if moved else split_of(doc.name, d.val_fraction)].append(doc)
    finished = 0
    for split, docs in kept.items():
        if docs:
            info = state["splits"][split]
            flat = np.concatenate([doc.tokens for doc in docs])
            lengths = np.concatenate([doc.piece_lengths for doc in docs])
            info["documents"] += len(docs)
            info["tokens_in"] += flat.size
            finished += info["writer"].write(*info["packer"].add(flat, lengths))
    return finished


def finish(cfg, proto, state, bads, sources_stats) -> dict:
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
    records.write_atomically(
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
        "eos_id": tokenizer.EOS_ID,
        "tokenizer": {
            "file": records.TOKENIZER,
            "sha256": tokenizer.sha256(proto),
            "type": d.tokenizer_type,
            "byte_fallback": d.tokenizer_byte_fallback,
            "character_coverage": d.tokenizer_character_coverage,
            "sample_mb": d.tokenizer_sample_mb,
        },
        "cleaning": dict(sorted(cleaning.items())),
        "sources": {
            names[i]: {"weight": w, **dict(sorted(sources_stats[i].items()))}
            for i, (_, w) in enumerate(sources(d.source))
        },
        "moved_to_val": state["moved_to_val"],
        "splits": splits,
    }
    records.write_manifest(out, manifest)
    return manifest
