"""The tf.data input pipeline: one global stream of windows, sliced per input pipeline.

    global order of epoch e: shards permuted by (seed, e), taken `data.interleave_shards` at a
      time, each group's shards read in turn record by record; blocks of `shuffle_buffer`
      records each permuted by (seed, e, block)
    -> skip to the resume position -> global batch -> this pipeline's rows -> per-replica batches
    -> decode after batching -> causal shift (and segment masks) -> prefetch

Prepare scatters documents over the shards and writes each shard's windows in a seeded order
(assemble.py), so a group read in turn gives windows of documents from all over the corpus
from its first step on, with memory for one open reader per shard of the group, not for the
corpus.

The stream is a function of (seed, step) alone. Resume at step k is arithmetic: record k * GB
of the endless stream lies in epoch k * GB // N; whole groups before it are skipped by the
manifest's record counts, and inside its group the records each shard gave follow from the
turn-by-turn order (`_resume_point`); each shard skips them with the TFRecord reader's
header-only skip, and at most one block (< shuffle_buffer records) is read and thrown away.
Its cost does not grow with k. Every input pipeline reads the whole stream and keeps rows
[w * GB/W, (w+1) * GB/W) of each global batch, so 1 pipeline == W pipelines exactly and a
restart on another topology sees the same data; the price is that each pipeline reads (not
decodes) every record.

Each shard read is checked against the manifest's record count: a shard that yields fewer
records than the manifest says (damaged after verification) stops the run with an error naming it.
"""

from __future__ import annotations

import itertools
import re

import tensorflow as tf

from tfllm.data import records
from tfllm.data.verify import ShardSet
from tfllm.errors import DataError

_READ_BUFFER = 1 << 18  # bytes per open shard
# tf.strings.format quotes string tensors, and the error message escapes the quotes.
_DAMAGE = re.compile(r'shard (?:\\?")?(.+?)(?:\\?")? is damaged: read (\d+) of (\d+) records')
IGNORE = -1  # target id of a position that is not trained on (padding, document boundary)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Each input pipeline slices the global stream itself; TF must not auto-shard it again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def _read_shard(path, count, offset, compression: str, max_records: int) -> tf.data.Dataset:
    """Records [offset, count) of one shard, checked against the manifest's count."""
    raw = tf.data.TFRecordDataset(path, compression, _READ_BUFFER).skip(offset)
    # Errors end the shard early; the count check below turns that into a named error. The
    # shard is checked as one batch: per-record checks would cost more than the reading.
    raw = raw.ignore_errors().take(count - offset).batch(max_records)
    nothing = tf.data.Dataset.from_tensors(tf.constant([], tf.string))  # when nothing was read
    expected = count - offset

    def check(records_of_shard):
        read = tf.size(records_of_shard, tf.int64)
        message = tf.strings.format(
            "shard {} is damaged: read {} of {} records", (path, read + offset, count)
        )
        with tf.control_dependencies([tf.debugging.Assert(tf.equal(read, expected), [message])]):
            return tf.identity(records_of_shard)

    return raw.concatenate(nothing).take(1).map(check).unbatch()


def _epoch_seed(seed: int, epoch) -> tf.Tensor:
    # int64 always: fold_in gives other values for a Python int (int32) than for an int64.
    return tf.random.experimental.stateless_fold_in([seed, 0], tf.cast(epoch, tf.int64))


def _shard_order(shards: ShardSet, seed: int, epoch) -> tf.Tensor:
    """The shards' order in epoch `epoch`: a permutation drawn from (seed, epoch)."""
    uniform = tf.random.stateless_uniform([len(shards.paths)], _epoch_seed(seed, epoch))
    return tf.argsort(uniform)


def _interleaved(shards: ShardSet, paths, counts, offsets) -> tf.data.Dataset:
    """The records of a group of shards (from their offsets), one of each in turn: the first
    not exhausted after the one that gave the previous record."""
    files = tf.data.Dataset.from_tensor_slices((paths, counts, offsets))
    width = max(1, len(shards.paths))
    return files.interleave(
        lambda p, n, o: _read_shard(p, n, o, shards.compression, max(shards.records)),
        cycle_length=width,
        block_length=1,
        num_parallel_calls=width,
        deterministic=True,
    )


def _epoch_from_start(shards: ShardSet, seed: int, epoch, group: int) -> tf.data.Dataset:
    """All records of epoch `epoch` (a tensor) in its order: the permuted shards taken
    `group` at a time, each group's shards read in turn, record by record."""
    order = _shard_order(shards, seed, epoch)
    paths = tf.gather(tf.constant(shards.paths), order)
    counts = tf.gather(tf.constant(shards.records, tf.int64), order)
    groups = -(-len(shards.paths) // group)

    def one_group(g):
        at = tf.range(g * group, tf.minimum((g + 1) * group, len(shards.paths)))
        parts = tf.gather(paths, at), tf.gather(counts, at)
        return _interleaved(shards, *parts, tf.zeros_like(parts[1]))

    return tf.data.Dataset.range(groups).flat_map(one_group)


def _resume_point(counts: list[int], consumed: int) -> tuple[list[int], list[int]]:
    """Where one group's turn-by-turn reading stands after `consumed` records: (records taken
    from each shard, the group's shard indices still to read, in the order they go on)."""

    def taken(rounds):
        return sum(min(c, rounds) for c in counts)

    low, high = 0, max(counts)  # full rounds: the largest R with taken(R) <= consumed
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if taken(mid) <= consumed else (low, mid - 1)
    active = [i for i, c in enumerate(counts) if c > low]
    extra = consumed - taken(low)  # < len(active): shards that gave a record of round `low`
    offsets = [min(c, low) for c in counts]
    for i in active[:extra]:
        offsets[i] += 1
    start = active[extra] if extra < len(active) else 0
    rotated = [(start + k) % len(counts) for k in range(len(counts))]
    return offsets, [i for i in rotated if offsets[i] < counts[i]]


def _epoch_from(shards: ShardSet, seed: int, epoch: int, start: int, group: int):
    """Records [start, N) of epoch `epoch` (Python ints), `start` anywhere: the group that
    holds it resumes each of its shards at the record reached, the later groups as usual."""
    order = _shard_order(shards, seed, epoch).numpy().tolist()  # eager: a dataset function
    paths = [shards.paths[i] for i in order]
    counts = [shards.records[i] for i in order]
    ends = list(itertools.accumulate(counts))
    first = 0  # the first shard of the group that holds record `start`
    while start >= ends[min(first + group, len(ends)) - 1]:
        first += group
    members = range(first, min(first + group, len(paths)))
    before = ends[first - 1] if first else 0
    offsets, going_on = _resume_point([counts[i] for i in members], start - before)
    head = _interleaved(
        shards,
        tf.constant([paths[first + i] for i in going_on], tf.string),
        tf.constant([counts[first + i] for i in going_on], tf.int64),
        tf.constant([offsets[i] for i in going_on], tf.int64),
    )
    groups = -(-len(paths) // group)
    rest = tf.data.Dataset.range(first // group + 1, groups)

    def later_group(g):
        at = tf.range(g * group, tf.minimum((g + 1) * group, len(paths)))
        parts = tf.gather(paths, at), tf.gather(tf.constant(counts, tf.int64), at)
        return _interleaved(shards, *parts, tf.zeros_like(parts[1]))

    return head.concatenate(rest.flat_map(later_group))


def _permuted_blocks(stream, seed: int, epoch, block: int, first_block: int):
    """Each block of `block` records permuted by (seed, epoch, block index)."""
    epoch_seed = _epoch_seed(seed, epoch)

    def permute(index, records_block):
        block_seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
        shuffle = tf.argsort(tf.random.stateless_uniform([tf.size(records_block)], block_seed))
        return tf.gather(records_block, shuffle)

    blocks = stream.batch(block).enumerate(first_block)
    return blocks.map(permute, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def global_records(
    shards: ShardSet, seed: int, block: int, start_record: int, interleave: int = 16
) -> tf.data.Dataset:
    """The endless global record stream from record `start_record` (all epochs chained);
    `interleave` shards are read at once, record by record (data.interleave_shards)."""
    total = shards.total_records
    first_epoch, position = divmod(start_record, total)
    block_start = position - position % block
    group = max(1, min(interleave, len(shards.paths)))
    head = _epoch_from(shards, seed, first_epoch, block_start, group)
    head = _permuted_blocks(head, seed, first_epoch, block, block_start // block)

    def later_epoch(epoch):
        stream = _epoch_from_start(shards, seed, epoch, group)
        return _permuted_blocks(stream, seed, epoch, block, 0)

    later = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(later_epoch)
    return head.concatenate(later).skip(position - block_start)


def decode(serialized: tf.Tensor, window_len: int, segments: bool) -> tuple[tf.Tensor, ...]:
    """Serialized (B,) records -> (inputs, targets[, segment_ids]), each (B, window_len - 1).

    With segment ids, a target is IGNORE where it is padding or belongs to another document
    than its input position: the first token of a document is never predicted from the
    previous one, and padding is never trained on; nor is a token whose segment id is negative
    (the prompt side of an instruction example, see `tfllm.corpus.sft_prepare`).
    """
    parsed = records.parse_batch(serialized, window_len, segments)
    windows = parsed[records.TOKENS_KEY]
    inputs, targets = windows[:, :-1], windows[:, 1:]
    if not segments:
        return inputs, targets
    signed = parsed[records.SEGMENTS_KEY]
    seg = tf.abs(signed)  # a negative id: the same document, a token that is not a target
    same_document = tf.logical_and(tf.equal(seg[:, 1:], seg[:, :-1]), seg[:, 1:] > 0)
    trained = tf.logical_and(same_document, signed[:, 1:] > 0)
    return inputs, tf.where(trained, targets, IGNORE), seg[:, :-1]


def _pipeline_rows(
    input_context: tf.distribute.InputContext | None, global_batch_size: int
) -> tuple[int, int, int]:
    """(first row, last row + 1, per-replica batch) of this pipeline in each global batch."""
    if input_context is None:
        return 0, global_batch_size, global_batch_size
    pipelines = input_context.num_input_pipelines
    if global_batch_size % pipelines:
        raise DataError(
            f"train.global_batch_size {global_batch_size} does not split into "
            f"{pipelines} input pipelines"
        )
    rows = global_batch_size // pipelines
    first = input_context.input_pipeline_id * rows
    return first, first + rows, input_context.get_per_replica_batch_size(global_batch_size)


def train_dataset(
    shards: ShardSet,
    global_batch_size: int,
    seed: int,
    shuffle_buffer: int,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    interleave: int = 16,
    decoder=None,
) -> tf.data.Dataset:
    """Endless per-replica batches (inputs, targets[, segment_ids]) from step `start_step`;
    `decoder` (serialized records -> tensors) replaces `decode` (preference pairs)."""
    first, last, per_replica = _pipeline_rows(input_context, global_batch_size)
    start = start_step * global_batch_size
    ds = global_records(shards, seed, shuffle_buffer, start, interleave)
    ds = ds.batch(global_batch_size, drop_remainder=True)
    if (first, last) != (0, global_batch_size):
        ds = ds.map(lambda batch: batch[first:last])
    if per_replica != last - first:
        ds = ds.rebatch(per_replica, drop_remainder=True)
    decoder = decoder or (lambda serialized: decode(serialized, shards.window_len, shards.segments))
    ds = ds.map(decoder, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(
    shards: ShardSet,
    batch_size: int,
    num_batches: int,
    input_context: tf.distribute.InputContext | None = None,
    decoder=None,
) -> tf.data.Dataset:
    """The same `num_batches` validation batches at every evaluation (repeated if the split
    is smaller), so successive validation losses are comparable."""
    ds = tf.data.Dataset.from_tensor_slices((shards.paths, tf.constant(shards.records, tf.int64)))
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(shards.paths) < input_context.num_input_pipelines:
            raise DataError(
                f"{len(shards.paths)} validation shards cannot feed "
                f"{input_context.num_input_pipelines} input pipelines; prepare with a smaller "
                "data.records_per_shard"
            )
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = ds.flat_map(
        lambda path, count: _read_shard(path, count, 0, shards.compression, max(shards.records))
    )
    ds = ds.repeat().batch(batch_size, drop_remainder=True).take(num_batches)
    ds = ds.map(
        decoder or (lambda serialized: decode(serialized, shards.window_len, shards.segments))
    )
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def raise_if_damaged_shard(err: tf.errors.OpError) -> None:
    """Turns the reader's count-check failure into a one-line DataError naming the shard."""
    found = _DAMAGE.search(err.message)
    if found:
        path, read, expected = found.groups()
        raise DataError(
            f"damaged shard {path}: it ended after {read} of its {expected} records while "
            "training (changed since verification?); run python -m tfllm.prepare --verify"
        ) from None
