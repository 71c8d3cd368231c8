"""The reader: exact resume from (seed, step), coverage across input pipelines, document masks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tensorflow as tf
from _data_helpers import batch_digest, small_config, write_corpus

from tfllm.config import load_config
from tfllm.corpus import prepare
from tfllm.data import reader, verify
from tfllm.model.lm import build_model
from tfllm.training.steps import token_loss_sum

GLOBAL_BATCH = 16


def _shards(tmp_path_factory, packing: str, *overrides: str, files: int = 24, words: int = 600):
    root = tmp_path_factory.mktemp(packing)
    write_corpus(root / "text", files, words)
    cfg = small_config(root, str(root / "text"), "ds", f"data.packing={packing}", *overrides)
    manifest = prepare.prepare(cfg)
    return verify.check_split(prepare.data_dir(cfg), manifest, "train", "sha256", "error")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return _shards(tmp_path_factory, "concat")


@pytest.fixture(scope="module")
def doc_shards(tmp_path_factory):
    # Documents of 10 to 60 tokens in windows of 65: boundaries and padding in most windows.
    return _shards(tmp_path_factory, "document", "data.seq_len=64", files=200, words=24)


def _digests(shards, start: int, count: int, seed: int = 7, ctx=None) -> list[str]:
    ds = reader.train_dataset(shards, GLOBAL_BATCH, seed, 32, start_step=start, input_context=ctx)
    return [batch_digest(b) for b in ds.take(count)]


def test_restart_at_step_k_sees_the_uninterrupted_batches(shards):
    steps = 2 * shards.total_records // GLOBAL_BATCH + 3  # crosses two epoch boundaries
    uninterrupted = _digests(shards, 0, steps)
    assert len(set(uninterrupted)) == steps
    for k in (1, 5, shards.total_records // GLOBAL_BATCH, steps - 4):
        assert _digests(shards, k, steps - k) == uninterrupted[k:], f"restart at step {k}"
    assert _digests(shards, 0, 4, seed=8) != uninterrupted[:4]


def test_every_epoch_holds_every_record_once_in_a_new_order(shards):
    total = shards.total_records
    stream = [r.numpy() for r in reader.global_records(shards, 3, 32, 0).take(2 * total)]
    every = [r.numpy() for p in shards.paths for r in tf.data.TFRecordDataset(p)]
    assert sorted(stream[:total]) == sorted(every) == sorted(stream[total:])
    assert stream[:total] != stream[total:] and stream[:total] != every


@pytest.mark.parametrize("interleave", [1, 3, 1000])
def test_resume_inside_a_group_of_interleaved_shards_is_exact(shards, interleave):
    # Shards of unequal length (the scatter lanes' last ones) end at different turns: a resume
    # at any record, inside a group or at its edges, continues the uninterrupted order.
    total = shards.total_records
    stream = reader.global_records(shards, 3, 32, 0, interleave).take(total + 80)
    whole = [r.numpy() for r in stream]
    assert sorted(whole[:total]) == sorted(set(whole[:total]))  # every record once an epoch
    for start in (1, 63, 64, 65, total // 3 + 7, total - 70, total - 1, total + 5):
        resumed = reader.global_records(shards, 3, 32, start, interleave).take(40)
        assert [r.numpy() for r in resumed] == whole[start : start + 40], start


def test_resume_far_into_a_long_run_is_exact_and_cheap(shards):
    far = 10**9 * GLOBAL_BATCH + 5  # a billion steps in: millions of epochs
    started = time.perf_counter()
    head = [r.numpy() for r in reader.global_records(shards, 3, 32, far).take(40)]
    elapsed = time.perf_counter() - started
    before = [r.numpy() for r in reader.global_records(shards, 3, 32, far - 45).skip(45).take(40)]
    assert head == before
    assert elapsed < 10.0  # no record before the resume position is read, but one block


def test_two_input_pipelines_split_each_global_batch(shards):
    one = reader.train_dataset(shards, GLOBAL_BATCH, 5, 32).take(30)
    halves = []
    for pipeline in range(2):
        ctx = tf.distribute.InputContext(2, pipeline, 2)
        halves.append(
            list(reader.train_dataset(shards, GLOBAL_BATCH, 5, 32, input_context=ctx).take(30))
        )
    for step, (inputs, targets) in enumerate(one):
        inputs_0, targets_0 = halves[0][step]
        inputs_1, targets_1 = halves[1][step]
        assert inputs_0.shape[0] == GLOBAL_BATCH // 2
        np.testing.assert_array_equal(inputs, tf.concat([inputs_0, inputs_1], 0))
        np.testing.assert_array_equal(targets, tf.concat([targets_0, targets_1], 0))
    rows = [r.numpy().tobytes() for h in halves for b in h for r in b[0]]
    first_epoch = (shards.total_records // GLOBAL_BATCH) * GLOBAL_BATCH
    assert len(set(rows)) >= min(len(rows), first_epoch)  # disjoint: no window read twice


def test_one_pipeline_with_two_replicas_alternates_halves(shards):
    one = list(reader.train_dataset(shards, GLOBAL_BATCH, 5, 32).take(2))
    ctx = tf.distribute.InputContext(1, 0, 2)
    per_replica = list(reader.train_dataset(shards, GLOBAL_BATCH, 5, 32, input_context=ctx).take(4))
    np.testing.assert_array_equal(one[1][0], tf.concat([per_replica[2][0], per_replica[3][0]], 0))


def test_document_packing_masks_boundaries_and_padding(doc_shards):
    inputs, targets, segments = next(iter(reader.train_dataset(doc_shards, 64, 1, 32)))
    seg = segments.numpy()
    tgt = targets.numpy()
    assert (seg == 0).any() and (np.diff(seg, axis=1) != 0).any()
    next_seg = np.concatenate([seg[:, 1:], np.full([seg.shape[0], 1], -1)], 1)
    boundary = (next_seg != seg)[:, :-1]
    assert (tgt[:, :-1][boundary] == reader.IGNORE).all()
    assert (tgt[seg == 0] == reader.IGNORE).all()  # padding never trains
    assert (tgt[tgt != reader.IGNORE] >= 0).all()


def test_no_attention_across_documents():
    cfg = load_config(
        [],
        [
            "model.vocabulary_size=50",
            "model.hidden_dim=32",
            "model.num_heads=2",
            "model.intermediate_dim=64",
            "model.num_layers=2",
        ],
    )
    model = build_model(cfg.model)
    tokens = tf.constant([[5, 6, 7, 8, 9, 10, 11, 12]])
    changed = tf.constant([[40, 41, 42, 8, 9, 10, 11, 12]])  # document 1 differs
    segments = tf.constant([[1, 1, 1, 2, 2, 2, 2, 0]])
    with_seg = [model(t, segment_ids=segments) for t in (tokens, changed)]
    np.testing.assert_allclose(with_seg[0][:, 3:7], with_seg[1][:, 3:7], atol=1e-6)
    without = [model(t) for t in (tokens, changed)]
    assert not np.allclose(without[0][:, 3:7], without[1][:, 3:7], atol=1e-6)


def test_ignored_targets_add_nothing_to_the_loss():
    cfg = load_config(
        [],
        [
            "model.vocabulary_size=50",
            "model.hidden_dim=32",
            "model.num_heads=2",
            "model.intermediate_dim=64",
            "model.num_layers=1",
        ],
    )
    model = build_model(cfg.model)
    inputs = tf.constant([[5, 6, 7, 8]])
    segments = tf.constant([[1, 1, 2, 0]])
    targets = tf.constant([[6, reader.IGNORE, 8, reader.IGNORE]])
    loss = token_loss_sum(model, inputs, targets, False, segments)
    logits = model(inputs, segment_ids=segments)
    expected = sum(
        float(tf.nn.sparse_softmax_cross_entropy_with_logits(targets[0, t], logits[0, t]))
        for t in (0, 2)
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
