"""Reading preference pairs for training (`tfllm.corpus.preference` writes them).

A batch of pair records becomes (inputs, targets, segment_ids), each (B, 2, T) with the chosen
sequence at [:, 0] and the rejected one at [:, 1], and, when the reference log-probabilities
were precomputed, `reference` (B, 2): the pair's row of that table, looked up by the pair
number the record's segment ids carry. Targets are `reader.IGNORE` on prompt and padding, so
a sequence's log-probability is the sum over its counted targets.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.data import records
from tfllm.data.reader import IGNORE
from tfllm.data.verify import ShardSet


def decode_pairs(serialized: tf.Tensor, record_len: int, reference=None) -> tuple:
    """Serialized (B,) pair records of `record_len` (2 x window) tokens -> the batch above."""
    parsed = records.parse_batch(serialized, record_len, segments=True)
    tokens = tf.reshape(parsed[records.TOKENS_KEY], [-1, 2, record_len // 2])  # (B, 2, W)
    signed = tf.reshape(parsed[records.SEGMENTS_KEY], [-1, 2, record_len // 2])
    segment = tf.abs(signed)
    trained = (segment[..., 1:] == segment[..., :-1]) & (signed[..., 1:] > 0)
    batch = (tokens[..., :-1], tf.where(trained, tokens[..., 1:], IGNORE), segment[..., :-1])
    if reference is None:
        return batch
    number = tf.reduce_max(segment, axis=[1, 2])  # (B,) the pair's number
    return (*batch, tf.gather(reference, number))


def numbered_pairs(shards: ShardSet, batch_size: int) -> tf.data.Dataset:
    """Every pair of `shards` once, in file order, as (pair numbers (B,), inputs, targets,
    segment_ids), for the one pass that computes reference log-probabilities."""
    ds = tf.data.TFRecordDataset(shards.paths, shards.compression).batch(batch_size)

    def decode(serialized):
        batch = decode_pairs(serialized, shards.window_len)
        return (tf.reduce_max(batch[2], axis=[1, 2]), *batch)

    return ds.map(decode).prefetch(tf.data.AUTOTUNE)
