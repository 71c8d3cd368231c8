"""Damaged shards: each kind stops the run naming the shard, or is skipped and counted."""

from __future__ import annotations

import gzip
import os
import shutil

import pytest
import tensorflow as tf
from _data_helpers import small_config, write_corpus
from commands import logged, run_main

from tfllm.corpus import prepare
from tfllm.data import reader, records, verify
from tfllm.errors import DataError

VICTIM = 1  # index of the damaged train shard


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    write_corpus(root / "text")
    built = {}
    for compression in ("none", "gzip"):
        cfg = small_config(root, str(root / "text"), compression, f"data.compression={compression}")
        built[compression] = (prepare.data_dir(cfg), prepare.prepare(cfg))
    return built


def _flip(path, where):
    blob = bytearray(open(path, "rb").read())
    index = {"start": 0, "middle": len(blob) // 2, "end": len(blob) - 1}[where]
    blob[index] ^= 0x40
    open(path, "wb").write(bytes(blob))


def _huge_length(path):
    blob = bytearray(open(path, "rb").read())
    blob[0:8] = (2**62).to_bytes(8, "little")
    open(path, "wb").write(bytes(blob))


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _huge_length_valid_crc(path):
    """A length field with a valid checksum: TF's reader segfaults on it, so it must never
    reach the reader."""
    blob = bytearray(open(path, "rb").read())
    length = (2**62).to_bytes(8, "little")
    blob[0:12] = length + _masked_crc32c(length).to_bytes(4, "little")
    open(path, "wb").write(bytes(blob))


def _not_tfrecord(path):
    size = os.path.getsize(path)
    open(path, "wb").write((b"this is not a TFRecord file\n" * size)[:size])


def _rewritten(path):
    """Same records, another order: every CRC valid, same size, other content."""
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    with tf.io.TFRecordWriter(path) as writer:
        for record in reversed(serialized):
            writer.write(record)


def _appended(path):
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    with tf.io.TFRecordWriter(path) as writer:
        for record in serialized + serialized[:1]:
            writer.write(record)


def _unreadable(path):
    os.remove(path)
    os.mkdir(path)  # opening it fails even as root, unlike chmod 000


DAMAGE = {  # kind: (dataset compression, damage, detected at read time with data.verify: size)
    "flip_start": ("none", lambda p: _flip(p, "start"), True),
    "flip_middle": ("none", lambda p: _flip(p, "middle"), True),
    "flip_end": ("none", lambda p: _flip(p, "end"), True),
    "truncated_tail": ("none", lambda p: os.truncate(p, os.path.getsize(p) - 7), False),
    "zero_bytes": ("none", lambda p: os.truncate(p, 0), False),
    "huge_length": ("none", _huge_length, True),
    "huge_length_valid_crc": ("none", _huge_length_valid_crc, False),
    "not_tfrecord": ("none", _not_tfrecord, True),
    "gzip_read_as_raw": (
        "none",
        lambda p: open(p, "wb").write(gzip.compress(open(p, "rb").read())),
        False,
    ),
    "raw_read_as_gzip": (
        "gzip",
        lambda p: open(p, "wb").write(gzip.decompress(open(p, "rb").read())),
        False,
    ),
    "missing": ("none", os.remove, False),
    "unreadable": ("none", _unreadable, False),
    "changed_after_manifest": ("none", _rewritten, False),
    "extra_record": ("none", _appended, False),
}


def _damaged_copy(datasets, tmp_path, kind):
    compression, damage, _ = DAMAGE[kind]
    source, manifest = datasets[compression]
    directory = str(tmp_path / "ds")
    shutil.copytree(source, directory)
    entry = manifest["splits"]["train"]["shards"][VICTIM]
    damage(os.path.join(directory, entry["file"]))
    return directory, manifest, entry


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_default_stops_naming_the_shard(datasets, tmp_path, kind):
    directory, manifest, entry = _damaged_copy(datasets, tmp_path, kind)
    with pytest.raises(DataError, match=f"damaged shard .*{entry['file']}"):
        verify.check_split(directory, manifest, "train", "sha256", "error")


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_skip_continues_and_counts_the_loss(datasets, tmp_path, kind):
    directory, manifest, entry = _damaged_copy(datasets, tmp_path, kind)
    with logged() as lines:
        shards = verify.check_split(directory, manifest, "train", "sha256", "skip")
    assert shards.lost == {entry["file"]: entry["records"]}
    assert any(
        entry["file"] in line and f"{entry['records']} records lost" in line for line in lines
    )
    total = manifest["splits"]["train"]["records"]
    assert shards.total_records + entry["records"] == total
    stream = reader.global_records(shards, 0, 32, 0).take(shards.total_records + 1)
    assert sum(1 for _ in stream) == shards.total_records + 1  # reads on, into the next epoch


@pytest.mark.parametrize("kind", sorted(k for k, v in DAMAGE.items() if v[2]))
def test_damage_behind_a_size_check_is_caught_while_reading(datasets, tmp_path, kind):
    directory, manifest, entry = _damaged_copy(datasets, tmp_path, kind)
    shards = verify.check_split(directory, manifest, "train", "size", "error")
    ds = reader.train_dataset(shards, 16, 0, 32)
    with pytest.raises(DataError, match=f"damaged shard .*{entry['file']}: it ended after"):
        try:
            for _ in ds.take(shards.total_records // 16 + 1):
                pass
        except tf.errors.InvalidArgumentError as err:
            reader.raise_if_damaged_shard(err)
            raise


def test_prepare_verify_reports_every_shard(datasets, tmp_path, capsys):
    directory, manifest, entry = _damaged_copy(datasets, tmp_path, "flip_middle")
    root, name = os.path.split(directory)
    argv = ["--set", f"data.root={root}", "--set", f"data.name={name}", "--verify"]
    assert run_main("prepare", argv) == 2
    out, err = capsys.readouterr()
    assert "1 damaged file" in err
    shards = sum(len(s["shards"]) for s in manifest["splits"].values())
    assert out.count("ok  ") == shards - 1
    assert f"BAD {entry['file']} (train): has a different sha256" in out
    assert "record " in out.split(f"BAD {entry['file']}")[1].splitlines()[0]
    records.file_sha256(os.path.join(directory, records.TOKENIZER))
    shutil.rmtree(directory)
    shutil.copytree(datasets["none"][0], directory)
    assert run_main("prepare", argv) == 0
