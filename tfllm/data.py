"""The tf.data input pipeline: a straight chain of named steps over the prepared shards.

    shard by input pipeline -> shuffle files -> repeat -> interleave -> shuffle records
      -> batch -> skip to the resume step -> decode after batching -> causal shift -> prefetch

Every random choice is seeded by `train.seed`, so the stream is a function of (seed, step):
a run restarted at step k skips k batches and sees exactly what an uninterrupted run would.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm import records
from tfllm.errors import DataError


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Shards are already split per input pipeline; TF must not auto-shard them again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def split_inputs_targets(windows: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, T+1) windows -> inputs (B, T) and next-token targets (B, T)."""
    return windows[:, :-1], windows[:, 1:]


def _pipeline_shards(
    paths: list[str], input_context: tf.distribute.InputContext | None
) -> tf.data.Dataset:
    files = tf.data.Dataset.from_tensor_slices(paths)
    if input_context is None or input_context.num_input_pipelines == 1:
        return files
    pipelines = input_context.num_input_pipelines
    if len(paths) < pipelines:
        raise DataError(
            f"{len(paths)} shards cannot feed {pipelines} input pipelines; "
            "prepare with a smaller data.records_per_shard"
        )
    return files.shard(pipelines, input_context.input_pipeline_id)


def train_dataset(
    directory: str,
    manifest: dict,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Endless (inputs, targets) batches of `batch_size` for this input pipeline."""
    paths = records.shard_paths(directory, manifest, "train")
    files = _pipeline_shards(paths, input_context)
    ds = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(paths)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.skip(start_step)
    ds = ds.map(
        lambda serialized: records.parse_batch(serialized, manifest["window_len"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.map(split_inputs_targets, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(
    directory: str,
    manifest: dict,
    batch_size: int,
    num_batches: int,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """The same `num_batches` validation batches at every evaluation (repeated if the split
    is smaller), so successive validation losses are comparable."""
    paths = records.shard_paths(directory, manifest, "val")
    ds = _pipeline_shards(paths, input_context)
    ds = ds.flat_map(tf.data.TFRecordDataset).repeat()
    ds = ds.batch(batch_size, drop_remainder=True).take(num_batches)
    ds = ds.map(lambda serialized: records.parse_batch(serialized, manifest["window_len"]))
    ds = ds.map(split_inputs_targets)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
