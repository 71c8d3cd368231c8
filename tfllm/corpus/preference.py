"""Preference data (`data.format: preference`): prompt / chosen / rejected records, tokenized
into pairs of windows for DPO (`train.objective: dpo`).

Records, in TRL's two shapes (JSON Lines, JSON arrays or Parquet, read as `tfllm.corpus.sft` reads
them):

    text            {"prompt": str, "chosen": str, "rejected": str}
    conversational  {"prompt": [messages], "chosen": [assistant message(s)],
                     "rejected": [assistant message(s)]}   rendered with the chat template

The prompt is context; chosen and rejected are the completions scored. A conversational pair's
completion is the text the template renders after the prompt's generation prompt (its
end-of-turn marker included); a text pair gets the model's ids around it as SFT data does
(`sft_prepare`: BOS or tfllm's EOS in front, EOS after the completion).

One record holds one pair: 2 x (seq_len + 1) tokens, the chosen window then the rejected one,
each the prompt followed by the completion and padding. The segment ids carry the pair's
number k (1, 2, ... over the whole dataset): -k on prompt tokens, k on completion tokens, 0 on
padding. So the mask is SFT's, no token attends across the two sequences, and the reader finds
the pair's number (to look up precomputed reference log-probabilities) in the record itself.

A pair longer than a window (prompt + the longer completion) is cut (`data.truncate: cut`): the
prompt loses tokens from the left first, down to its last token, then both completions lose
tokens from the right; or dropped (`drop`). Both are counted, and dropped pairs named.
"""

from __future__ import annotations

import logging
import posixpath
import time

import numpy as np
import tensorflow as tf

from tfllm.config import Config
from tfllm.corpus import example_manifest, sft
from tfllm.corpus.sft_prepare import example_ends
from tfllm.corpus.sources import list_files
from tfllm.data import records
from tfllm.data.layout import split_of
from tfllm.errors import DataError
from tfllm.tokenizers import chat
from tfllm.tokenizers.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
_BATCH = 256  # pairs tokenized per call of the in-graph tokenizer


def _messages(value, field: str, assistant_only: bool) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise sft.BadRecord("missing_field", f"field {field!r} must be a non-empty list")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise sft.BadRecord("wrong_type", f"{field}[{i}] must be an object")
        role = message.get("role")
        if role not in chat.ROLES or (assistant_only and role != "assistant"):
            allowed = ("assistant",) if assistant_only else chat.ROLES
            raise sft.BadRecord("bad_role", f"{field}[{i}].role is {role!r}; use one of {allowed}")
        out.append({"role": role, "content": sft._string(message, "content", role != "assistant")})
    return out


def texts(record, template: chat.Template) -> tuple[str, str, str, bool]:
    """One record -> (prompt, chosen, rejected, conversational). Raises sft.BadRecord."""
    if isinstance(record, sft.BadRecord):
        raise record
    if not isinstance(record, dict):
        kind = type(record).__name__
        raise sft.BadRecord("not_an_object", f"a record must be an object, got {kind}")
    if "prompt" not in record:
        raise sft.BadRecord("missing_field", "missing field 'prompt'")
    if not isinstance(record["prompt"], list):  # text
        keys = ("prompt", "chosen", "rejected")
        return (*(sft._string(record, k, k == "prompt") for k in keys), False)
    prompt = _messages(record["prompt"], "prompt", assistant_only=False)
    head = template.render(prompt, add_generation_prompt=True)
    out = [head]
    for key in ("chosen", "rejected"):
        whole = template.render(prompt + _messages(record.get(key), key, assistant_only=True))
        if not whole.startswith(head):
            raise DataError(
                f"chat template {template.origin}: the conversation with its {key} reply does "
                "not extend the prompt's rendering; preference pairs need a template whose "
                "prefixes render as prefixes"
            )
        out.append(whole[len(head) :])
    return (*out, True)


def fit(prompt: list, chosen: list, rejected: list, window_len: int) -> tuple[list, list, list]:
    """The pair cut to `window_len` by the rule in the module docstring."""
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= window_len:
        return prompt, chosen, rejected
    keep = min(len(prompt), max(1, window_len - longest))
    prompt = prompt[len(prompt) - keep :]
    room = window_len - len(prompt)
    return prompt, chosen[:room], rejected[:room]


def _window(prompt: list, completion: list, number: int, window_len: int):
    tokens, segments = np.zeros([window_len], np.int32), np.zeros([window_len], np.int32)
    n, end = len(prompt), len(prompt) + len(completion)
    tokens[:end] = prompt + completion
    segments[:n], segments[n:end] = -number, number
    return tokens, segments


def prepare_preference(cfg: Config, out: str) -> dict:
    """Builds the pair dataset of `cfg.data` in `out`; returns its manifest."""
    d, start = cfg.data, time.time()
    if not d.tokenizer:
        raise DataError(
            "data.format=preference needs data.tokenizer: the model's own tokenizer (the "
            "workdir's tokenizer.model, or the directory `tfllm.convert` imported)"
        )
    tokenizer = load_tokenizer(d.tokenizer)
    template = chat.load_template(d.chat_template, example_manifest.tokenizer_dir(d.tokenizer))
    window_len = d.seq_len + 1
    stats = sft.RecordStats()
    pairs = {s: [] for s in SPLITS}
    for path in (str(p) for _, p in list_files(d.source)):
        used_before = stats.used
        for where, record in sft.read_records(path):
            stats.read += 1
            try:
                triple = texts(record, template)
            except sft.BadRecord as bad:
                stats.skip(where, bad)
                continue
            stats.used += 1
            pairs[split_of(posixpath.basename(where), d.val_fraction)].append((where, triple))
        if stats.used == used_before:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.skipped.items()))
            first = f"; first: {stats.named[0]}" if stats.named else ""
            raise DataError(
                f"{posixpath.basename(path)}: no usable preference record "
                f"({reasons or 'empty'}){first}"
            )
    if not pairs["val"] and len(pairs["train"]) >= 2:
        pairs["val"].append(pairs["train"].pop())  # a small set: keep one to validate
    # A template writes its own BOS and end-of-turn marker; plain text gets SFT's ids around it.
    text_prefix, text_suffix = example_ends(tokenizer, "prompt_completion")
    number, dropped, packed = 0, [], {}
    for split in SPLITS:
        writer = records.ShardWriter(out, split, 2 * window_len, d.records_per_shard, d.compression)
        c = dict.fromkeys(("pairs", "cut", "trained", "masked"), 0)
        for first in range(0, len(pairs[split]), _BATCH):
            batch = pairs[split][first : first + _BATCH]
            flat = [text for _, triple in batch for text in triple[:3]]
            ids = tokenizer.tokenize(tf.constant(flat)).to_list()
            tokens, segments = [], []
            for i, (where, triple) in enumerate(batch):
                prefix, end = ([], []) if triple[3] else (text_prefix, text_suffix)
                p, ch, rj = ids[3 * i], ids[3 * i + 1], ids[3 * i + 2]
                p, ch, rj = prefix + p, ch + end, rj + end
                if len(p) + max(len(ch), len(rj)) > window_len:
                    if d.truncate == "drop":
                        size = len(p) + max(len(ch), len(rj))
                        dropped.append(f"{where}: {size} tokens > {window_len}")
                        continue
                    c["cut"] += 1
                    p, ch, rj = fit(p, ch, rj, window_len)
                number += 1
                c["pairs"] += 1
                c["trained"] += len(ch) + len(rj)
                c["masked"] += 2 * len(p)
                (tc, sc), (tr, sr) = (_window(p, x, number, window_len) for x in (ch, rj))
                tokens.append(np.concatenate([tc, tr]))
                segments.append(np.concatenate([sc, sr]))
            if tokens:
                writer.write(np.stack(tokens), np.stack(segments))
        if not c["pairs"]:
            raise DataError(f"no usable {split} pair in {d.source!r} ({len(dropped)} dropped)")
        packed[split] = {**c, "shards": writer.close()}
    manifest = _manifest(cfg, tokenizer, stats, dropped, packed, number)
    records.write_manifest(out, manifest)
    _report(manifest, time.time() - start)
    return manifest


def _manifest(cfg: Config, tokenizer, stats, dropped, packed, pairs: int) -> dict:
    splits = {
        split: example_manifest.split_entry(info, documents=info["pairs"], pairs_cut=info["cut"])
        for split, info in packed.items()
    }
    return example_manifest.build(
        cfg, tokenizer, stats, dropped,
        train_on="completion",
        window_len=2 * (cfg.data.seq_len + 1),  # a record: the chosen window, then the rejected
        pair_window_len=cfg.data.seq_len + 1,
        pairs=pairs,  # pair numbers run 1..pairs over both splits
        splits=splits,
    )  # fmt: skip


def _report(manifest: dict, seconds: float) -> None:
    example_manifest.report_records(manifest)
    for split, info in manifest["splits"].items():
        logger.info(
            f"{split}: {info['documents']} pairs, {info['pairs_cut']} cut to the window "
            "(prompt from the left first)"
        )
    logger.info(f"prepared {manifest['name']} (preference) in {seconds:.1f}s")
