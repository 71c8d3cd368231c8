"""prepare: text -> shards round trip, token conservation, cleaning counts, corpus edge cases."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import tensorflow as tf
from _data_helpers import WORDS, small_config, write_corpus

from tfllm.corpus import prepare
from tfllm.corpus.clean import Cleaner, CleaningStats, split_long
from tfllm.data import records
from tfllm.errors import DataError
from tfllm.tokenizers import tokenizer


@pytest.fixture(scope="module", params=["concat", "document"])
def prepared(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    write_corpus(root / "text")
    cfg = small_config(root, str(root / "text"), "ds", f"data.packing={request.param}")
    return cfg, prepare.prepare(cfg)


def _shard_windows(directory, manifest, split):
    rows, segments = [], []
    for shard in manifest["splits"][split]["shards"]:
        serialized = next(
            iter(tf.data.TFRecordDataset(f"{directory}/{shard['file']}").batch(1 << 20))
        )
        parsed = records.parse_batch(
            serialized, manifest["window_len"], manifest["packing"] == "document"
        )
        rows.append(parsed[records.TOKENS_KEY].numpy())
        if records.SEGMENTS_KEY in parsed:
            segments.append(parsed[records.SEGMENTS_KEY].numpy())
    return np.concatenate(rows), (np.concatenate(segments) if segments else None)


def test_round_trip_conserves_every_token(prepared):
    cfg, manifest = prepared
    directory = prepare.data_dir(cfg)
    sp = tokenizer.load_tokenizer(f"{directory}/{records.TOKENIZER}")
    for split in ("train", "val"):
        info = manifest["splits"][split]
        assert info["tokens_in"] == info["tokens_written"] + info["tokens_dropped"]
        windows, segments = _shard_windows(directory, manifest, split)
        assert len(windows) == info["records"] == sum(s["records"] for s in info["shards"])
        real = windows if segments is None else windows[segments > 0]
        assert real.size == info["tokens_written"]
        # Every document comes back: the EOS count equals the document count (none dropped
        # in document packing; in concat packing the dropped tail, less than one window, holds
        # the last tokens of the scatter lanes' last documents, so at most one EOS per token).
        eos = int(np.sum(real == tokenizer.EOS_ID))
        assert info["documents"] - info["tokens_dropped"] <= eos <= info["documents"]
        assert info["tokens_dropped"] < manifest["window_len"]
        if segments is not None:
            assert info["tokens_dropped"] == 0
            assert info["tokens_padding"] == int(np.sum(segments == 0))
        # The text round-trips through the stored tokenizer (byte fallback: lossless).
        flat = list(real.ravel())  # a split of a few short documents may keep no EOS at all
        first = np.array(flat[: flat.index(tokenizer.EOS_ID)] if tokenizer.EOS_ID in flat else flat)
        text = sp.detokenize(tf.constant(first[None], tf.int32))[0].numpy().decode()
        assert text and text.split()[0] in open(next(iter(_corpus_files(cfg)))).read() + text


def _corpus_files(cfg):
    import glob

    return sorted(glob.glob(cfg.data.source + "/*.txt"))


def test_manifest_lists_checksums_and_options(prepared):
    cfg, manifest = prepared
    directory = prepare.data_dir(cfg)
    assert manifest["tokenizer"]["sha256"] == records.file_sha256(f"{directory}/tokenizer.model")
    assert manifest["tokenizer"]["type"] == "unigram"
    for shard in manifest["splits"]["train"]["shards"]:
        assert shard["sha256"] == records.file_sha256(f"{directory}/{shard['file']}")
        assert shard["records"] <= cfg.data.records_per_shard
    assert manifest["cleaning"]["documents"] == 24
    shards = manifest["splits"]["train"]["shards"]
    assert shards[0]["file"] == f"train-00000-of-{len(shards):05d}.tfrecord"


def _clean(texts: list[bytes], **kwargs) -> tuple[list, CleaningStats]:
    stats = CleaningStats()
    cleaner = Cleaner(
        kwargs.get("policy", "skip"), kwargs.get("min", 1), kwargs.get("max", 100), stats
    )
    return [cleaner(f"d{i}", t) for i, t in enumerate(texts)], stats


def test_cleaning_rules_count_every_change():
    docs, stats = _clean(
        [
            b"ok text",
            b"bad \xff utf8",
            b"\xef\xbb\xbfbom first",
            b"nul\x00 and \x07bell",
            b"   \n\t ",
            b"",
            b"ok text",
            b"x" * 250,
        ],
        min=2,
    )
    assert stats["dropped_invalid_utf8"] == 1
    assert stats["removed_bom"] == 1 and docs[2].text == "bom first"
    assert stats["removed_control_chars"] == 2 and docs[3].text == "nul and bell"
    assert stats["dropped_empty"] == 2
    assert stats["dropped_duplicate"] == 1
    assert stats["split_long"] == 1 and docs[7].pieces == ("x" * 100, "x" * 100, "x" * 50)
    assert stats["documents"] == 4 and stats["documents_read"] == 8
    docs, stats = _clean([b"bad \xff utf8", b"a"], policy="replace", min=2)
    assert docs[0].text == "bad \ufffd utf8" and stats["replaced_invalid_utf8"] == 1
    assert docs[1] is None and stats["dropped_short"] == 1


def test_split_long_prefers_newlines():
    assert split_long("aaaa\nbbbb\ncc", 6) == ("aaaa\n", "bbbb\n", "cc")


def test_only_empty_files_is_one_clear_error(tmp_path):
    for i in range(3):
        (tmp_path / f"e{i}.txt").write_bytes(b" \n" * i)
    cfg = small_config(tmp_path, str(tmp_path / "*.txt"))
    message = "gave 0 usable document.*dropped_empty 3.*at least 2 are needed"
    with pytest.raises(DataError, match=message):
        prepare.prepare(cfg)


@pytest.mark.slow  # prepare with its worker processes
def test_hostile_corpus_prepares_with_counts(tmp_path):
    """Invalid UTF-8, NUL bytes, a BOM and a single 50 MB line never crash the tokenizer."""
    text = tmp_path / "text"
    write_corpus(text, files=12)
    (text / "bad.txt").write_bytes(b"valid start \xc3\x28 invalid \xff end\n" * 20)
    (text / "nul.txt").write_bytes(b"null\x00bytes\x00inside " * 50)
    (text / "bom.txt").write_bytes(b"\xef\xbb\xbfdef bom(): return 1\n" * 20)
    line = (" ".join(["alpha beta gamma delta"] * 8) + " ").encode()
    (text / "huge.txt").write_bytes(line * (50 * 2**20 // len(line)))  # one 50 MB line
    (text / "empty.txt").write_bytes(b"")
    cfg = small_config(
        tmp_path,
        str(text),
        "ds",
        "data.utf8_policy=replace",
        "data.seq_len=512",
        "data.records_per_shard=4096",
        "model.max_sequence_length=512",
    )
    manifest = prepare.prepare(cfg)
    cleaning = manifest["cleaning"]
    assert cleaning["replaced_invalid_utf8"] == 1
    assert cleaning["removed_control_chars"] >= 100
    assert cleaning["removed_bom"] == 1
    assert cleaning["dropped_empty"] == 1
    assert cleaning["split_long"] == 1 and cleaning["split_pieces"] >= 50
    for info in manifest["splits"].values():
        assert info["tokens_in"] == info["tokens_written"] + info["tokens_dropped"]


def test_jsonl_source_with_gzip_and_bad_lines(tmp_path):
    body = [" ".join(WORDS[(i * j + j) % len(WORDS)] for j in range(60)) for i in range(80)]
    lines = [json.dumps({"id": i, "body": f"record {i} {body[i]}"}) for i in range(80)]
    lines += ["{not json", json.dumps({"id": 99})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines[:40]) + "\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(lines[40:]) + "\n")
    cfg = small_config(tmp_path, f"{tmp_path}/*.jsonl*", "js", "data.text_field=body")
    manifest = prepare.prepare(cfg)
    cleaning = manifest["cleaning"]
    assert cleaning["documents"] == 80
    assert cleaning["dropped_bad_json"] == 1 and cleaning["dropped_missing_field"] == 1
    wrong = small_config(tmp_path, f"{tmp_path}/a.jsonl", "js2", "data.text_field=text")
    with pytest.raises(DataError, match="a.jsonl: no line has a string field 'text'.*body, id"):
        prepare.prepare(wrong)


def test_bpe_without_byte_fallback(tmp_path):
    write_corpus(tmp_path / "text", files=10)
    cfg = small_config(
        tmp_path,
        str(tmp_path / "text"),
        "bpe",
        "data.tokenizer_type=bpe",
        "data.tokenizer_byte_fallback=false",
        "data.tokenizer_character_coverage=1.0",
    )
    manifest = prepare.prepare(cfg)
    assert manifest["tokenizer"]["type"] == "bpe"
    assert manifest["tokenizer"]["byte_fallback"] is False
