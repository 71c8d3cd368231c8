"""The record round trip: windows written to shards come back unchanged through the reader."""

import json
import pathlib

import numpy as np
import tensorflow as tf

from tfllm.corpus.prepare import data_dir, prepare
from tfllm.data import reader, records, verify
from tfllm.tokenizers import tokenizer


def test_shard_writer_round_trip(tmp_path):
    windows = np.arange(25 * 9, dtype=np.int32).reshape(25, 9)
    writer = records.ShardWriter(str(tmp_path), "train", window_len=9, records_per_shard=10)
    writer.write(windows[:13])
    writer.write(windows[13:])
    shards = writer.close()
    assert [s["file"] for s in shards] == [
        "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord",
        "train-00002-of-00003.tfrecord",
    ]
    assert [s["records"] for s in shards] == [10, 10, 5]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    for shard in shards:
        assert shard["sha256"] == records.file_sha256(str(tmp_path / shard["file"]))

    read = []
    for shard in shards:
        for batch in tf.data.TFRecordDataset(str(tmp_path / shard["file"])).batch(4):
            read.append(records.parse_batch(batch, 9)[records.TOKENS_KEY].numpy())
    np.testing.assert_array_equal(np.concatenate(read), windows)


def test_prepare_conserves_tokens_and_reads_back(make_config):
    cfg = make_config("data.name=records-test")
    manifest = prepare(cfg)
    directory = data_dir(cfg)
    tmp = pathlib.Path(directory)
    assert manifest == json.loads((tmp / "manifest.json").read_text())
    for split in ("train", "val"):
        info = manifest["splits"][split]
        assert info["tokens_in"] == info["tokens_written"] + info["tokens_dropped"]
        assert 0 <= info["tokens_dropped"] < manifest["window_len"]
        assert info["records"] * manifest["window_len"] == info["tokens_written"]
        assert info["documents"] > 0
    assert manifest["cleaning"]["documents"] == sum(
        manifest["splits"][split]["documents"] for split in ("train", "val")
    )
    assert manifest["tokenizer"]["sha256"] == tokenizer.sha256(
        (tmp / "tokenizer.model").read_bytes()
    )

    # The reader yields windows of the shards, shifted by one into inputs and targets.
    window_len = manifest["window_len"]
    shards = {
        split: verify.check_split(directory, manifest, split, "sha256", "stop")
        for split in ("train", "val")
    }
    written = set()
    for path in shards["train"].paths:
        for batch in tf.data.TFRecordDataset(path).batch(256):
            written.update(
                map(tuple, records.parse_batch(batch, window_len)[records.TOKENS_KEY].numpy())
            )
    ds = reader.train_dataset(shards["train"], 4, seed=0, shuffle_buffer=16)
    for x, y in ds.take(50):
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
        windows = np.concatenate([x, y[:, -1:]], axis=1)
        assert all(tuple(w) in written for w in windows)
    val = reader.eval_dataset(shards["val"], batch_size=4, num_batches=3)
    assert sum(1 for _ in val) == 3


def test_tokenizer_is_lossless_on_code(make_config):
    cfg = make_config("data.name=records-test")
    sp = tokenizer.load_tokenizer(f"{data_dir(cfg)}/tokenizer.model")
    text = 'def f(x):\n\treturn {"é": x ** 2}  # ünïcode, tabs\n\n    \r\n'
    ids = sp.tokenize(tf.constant([text]))
    assert sp.detokenize(ids)[0].numpy().decode() == text
    assert tokenizer.EOS_ID not in ids.flat_values.numpy()


def _example(window, segments=None):
    """The record as the tf.train.Example API builds it, in protobuf's deterministic
    (sorted-key) form, which every protobuf version writes alike."""
    int64 = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v.tolist()))  # noqa: E731
    features = {records.TOKENS_KEY: int64(window)}
    if segments is not None:
        features[records.SEGMENTS_KEY] = int64(segments)
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


def test_bulk_serialization_is_byte_identical_to_tf_train_example():
    rng = np.random.default_rng(0)
    # Ids from one to five varint bytes, windows whose sizes cross the varint length steps.
    for window_len in (2, 9, 129, 1025, 3000):
        for high in (2, 128, 300, 70_000, 2**31 - 1):
            windows = rng.integers(0, high, (5, window_len)).astype(np.int32)
            segments = rng.integers(-4, 4, (5, window_len)).astype(np.int32)  # SFT: signed
            assert records.serialize_windows(windows) == [_example(w) for w in windows]
            assert records.serialize_windows(windows, segments) == [
                _example(w, s) for w, s in zip(windows, segments, strict=True)
            ]
