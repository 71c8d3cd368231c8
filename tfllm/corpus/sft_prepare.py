"""`prepare` for instruction and chat data (`data.format` other than `text`): examples ->
template -> token ids with a loss mask -> packed windows -> the same shards and manifest.

Each example is tokenized with the model's own tokenizer (`data.tokenizer`: a tfllm
`tokenizer.model` or a Hugging Face directory) segment by segment (`tfllm.corpus.sft`), so the mask
follows the segments exactly; the ids around it follow the model's convention: a Hugging Face
tokenizer's post-processor prefix (its BOS) in front of plain formats (a chat template writes
its own BOS) and its first EOS id after them; a tfllm tokenizer's EOS in front and behind (the
document separator tfllm models are trained with). The closing EOS is trained: the model
learns to stop.

Examples are packed whole into windows of `seq_len + 1` tokens (document packing: each keeps its
own segment id, so no token attends across examples and positions restart per example). The
mask rides in the sign of the segment id: `-k` marks tokens of example `k` that are context, not
targets (`data/records.py`). An example longer than a window is cut (`data.truncate: cut`,
counted) or dropped (`drop`, counted and named).
"""

from __future__ import annotations

import logging
import posixpath
import time

import numpy as np
import tensorflow as tf

from tfllm.config import Config
from tfllm.corpus import example_manifest, sft
from tfllm.corpus.sources import list_files
from tfllm.data import records
from tfllm.data.layout import split_of
from tfllm.errors import DataError
from tfllm.tokenizers import chat
from tfllm.tokenizers.tokenizer import EOS_ID, load_tokenizer

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
_BATCH = 512  # examples tokenized per call of the in-graph tokenizer


def example_ends(tokenizer, fmt: str) -> tuple[list[int], list[int]]:
    """The ids before and after an example's own tokens (see the module docstring)."""
    if not hasattr(tokenizer, "eos_ids"):  # tfllm's own SentencePiece model
        return [EOS_ID], [EOS_ID]
    prefix = [] if fmt == "messages" else list(tokenizer.prefix_ids)
    suffix = [] if fmt == "messages" or not tokenizer.eos_ids else [tokenizer.eos_ids[0]]
    return prefix, suffix


def _tokenized(tokenizer, batch: list[list[tuple[str, bool]]], prefix, suffix):
    """Segments of many examples -> per example (ids, trained) int32 / bool arrays."""
    texts = [text for pieces in batch for text, _ in pieces]
    ids = tokenizer.tokenize(tf.constant(texts)).to_list() if texts else []
    out, i = [], 0
    for pieces in batch:
        tokens, trained = list(prefix), [False] * len(prefix)
        for _, is_trained in pieces:
            tokens += ids[i]
            trained += [is_trained] * len(ids[i])
            i += 1
        tokens += suffix
        trained += [True] * len(suffix)
        out.append((np.array(tokens, np.int32), np.array(trained, bool)))
    return out


class _Packer:
    """Whole examples into windows; segment id k (1, 2, ...) per example, -k where untrained."""

    def __init__(self, window_len: int):
        self.window_len = window_len
        self.tokens = np.zeros([window_len], np.int32)
        self.segments = np.zeros([window_len], np.int32)
        self.fill = self.count = 0
        self.windows: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, tokens: np.ndarray, trained: np.ndarray) -> None:
        if self.fill + tokens.size > self.window_len:
            self.close()
        self.count += 1
        end = self.fill + tokens.size
        self.tokens[self.fill : end] = tokens
        self.segments[self.fill : end] = np.where(trained, self.count, -self.count)
        self.fill = end

    def close(self) -> None:
        if self.fill:
            self.windows.append((self.tokens.copy(), self.segments.copy()))
        self.tokens[:], self.segments[:] = 0, 0
        self.fill = self.count = 0

    def take(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not self.windows:
            return None
        tokens, segments = (np.stack(a) for a in zip(*self.windows, strict=True))
        self.windows = []
        return tokens, segments


def prepare_sft(cfg: Config, out: str) -> dict:
    """Builds the dataset of `cfg.data` (an SFT format) in `out`; returns its manifest."""
    d, start = cfg.data, time.time()
    if not d.tokenizer:
        raise DataError(
            f"data.format={d.format} needs data.tokenizer: the model's own tokenizer (the "
            "workdir's tokenizer.model, or the directory `tfllm.convert` imported)"
        )
    tokenizer = load_tokenizer(d.tokenizer)
    template = chat.load_template(d.chat_template, example_manifest.tokenizer_dir(d.tokenizer))
    prefix, suffix = example_ends(tokenizer, d.format)
    window_len = d.seq_len + 1
    stats = sft.RecordStats()
    counts = {s: dict.fromkeys(("examples", "trained", "masked", "cut"), 0) for s in SPLITS}
    dropped: list[str] = []
    examples = {s: [] for s in SPLITS}
    for where, pieces in sft.read_examples(
        [str(p) for _, p in list_files(d.source)], d.format, d.train_on, template, stats
    ):
        # By file name and record, not the full path: the same split wherever the data sits.
        examples[split_of(posixpath.basename(where), d.val_fraction)].append((where, pieces))
    if not examples["val"] and len(examples["train"]) >= 2:
        examples["val"].append(examples["train"].pop())  # a small set: keep one to validate
    packed = {}
    for split in SPLITS:
        writer = records.ShardWriter(out, split, window_len, d.records_per_shard, d.compression)
        packer, c = _Packer(window_len), counts[split]
        for first in range(0, len(examples[split]), _BATCH):
            batch = examples[split][first : first + _BATCH]
            tokenized = _tokenized(tokenizer, [p for _, p in batch], prefix, suffix)
            for (where, _), (tokens, trained) in zip(batch, tokenized, strict=True):
                if tokens.size > window_len:
                    if d.truncate == "drop":
                        dropped.append(f"{where}: {tokens.size} tokens > {window_len}")
                        continue
                    tokens, trained, c["cut"] = (
                        tokens[:window_len],
                        trained[:window_len],
                        c["cut"] + 1,
                    )
                c["examples"] += 1
                c["trained"] += int(trained[1:].sum())  # the first token is never a target
                c["masked"] += int((~trained[1:]).sum())
                packer.add(tokens, trained)
            if (windows := packer.take()) is not None:
                writer.write(*windows)
        packer.close()
        if (windows := packer.take()) is not None:
            writer.write(*windows)
        if not c["examples"]:
            raise DataError(f"no usable {split} example in {d.source!r} ({len(dropped)} dropped)")
        packed[split] = {**c, "shards": writer.close()}
    manifest = _manifest(cfg, tokenizer, stats, dropped, packed)
    records.write_manifest(out, manifest)
    _report(manifest, time.time() - start)
    return manifest


def _manifest(cfg: Config, tokenizer, stats, dropped, packed) -> dict:
    splits = {
        split: example_manifest.split_entry(
            info, documents=info["examples"], examples_cut=info["cut"]
        )
        for split, info in packed.items()
    }
    return example_manifest.build(
        cfg, tokenizer, stats, dropped,
        train_on=cfg.data.train_on, window_len=cfg.data.seq_len + 1, splits=splits,
    )  # fmt: skip


def _report(manifest: dict, seconds: float) -> None:
    example_manifest.report_records(manifest)
    for split, info in manifest["splits"].items():
        logger.info(
            f"{split}: {info['documents']} examples in {info['records']} windows; "
            f"{info['tokens_trained']} tokens trained on, {info['tokens_masked']} masked, "
            f"{info['examples_cut']} examples cut to the window"
        )
    logger.info(f"prepared {manifest['name']} ({manifest['format']}) in {seconds:.1f}s")
