"""`python -m tfllm.prepare --runner beam`: the streaming pass as an Apache Beam pipeline.

    read -> clean, filter, hash, tokenize (parallel) -> dedup -> pack -> write (in order)

The launcher draws the tokenizer sample and trains the tokenizer as the local runner does
(prepare.train_tokenizer). The pipeline then reads the sources in one task (the document order
of a weighted mixture is one random stream, so reading is sequential), cutting them into
numbered batches; after a Reshuffle the batches are cleaned, filtered, hashed and tokenized in
parallel on as many workers as the runner gives (stream.process, the code the local workers
run), each result written to `<dataset>/.beam/batch-NNNNNNNN.npz` (JSON and arrays only,
snapshot.py). A last task takes the batch files in order through assemble.py -
deduplication, packing, shards, manifest - so the output is byte for byte that of the local
runner. Every path goes through tf.io.gfile: `gs://` input
and output work on Dataflow. Needs the `tfllm[beam]` extra (apache-beam 2.69 or newer).
"""

from __future__ import annotations

import logging
import posixpath
import shlex

import tensorflow as tf

from tfllm import resources
from tfllm.config import Config
from tfllm.corpus import assemble, formats, prepare, resume, snapshot, stream
from tfllm.data import layout, records
from tfllm.errors import ConfigError

logger = logging.getLogger(__name__)

WORK_DIR = ".beam"
_READ_STATS = "read.npz"
# What the batch files hold besides plain data: the workers' results, the reader's counts.
snapshot.register(stream.Batch, formats.BadInput)


def _batch_path(work: str, index: int) -> str:
    return posixpath.join(work, f"batch-{index:08d}.npz")


def _dump(path: str, value) -> None:
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(snapshot.dumps(value))


def _load(path: str):
    with tf.io.gfile.GFile(path, "rb") as f:
        return snapshot.loads(f.read(), path)


def read_batches(_, cfg: Config, work: str):
    """Yields (index, batch) over the whole input; then saves what the reader counted (bad
    files and lines per source) for the manifest."""
    docs, bads = prepare.read_sources(cfg.data)
    batches = stream.batches(docs, prepare.batch_bytes(cfg.data, 1), prepare.MAX_BATCH_DOCS)
    yield from enumerate(batches)
    _dump(posixpath.join(work, _READ_STATS), bads)


class Tokenize:
    """One batch -> stream.process -> its batch file; emits the batch index."""

    def __init__(self, settings: stream.Settings, work: str):
        self.settings, self.work = settings, work
        self.ready = False

    def __call__(self, element: tuple[int, list]) -> int:
        if not self.ready:  # once per worker process: load the tokenizer
            stream.init(self.settings)
            self.ready = True
        index, batch = element
        _dump(_batch_path(self.work, index), stream.process(batch))
        return index


def assemble_all(
    indices: list[int], cfg: Config, settings: stream.Settings, moved: str, work: str
) -> None:
    """The batch files in order -> dedup, pack, write shards and the manifest."""
    from tfllm.corpus.dedup import Deduplicator

    d = cfg.data
    state = assemble.fresh_state(cfg, moved)
    deduplicator = Deduplicator(d.near_dedup, d.minhash_bands, d.minhash_threshold)
    for index in range(len(indices)):
        assemble.take(cfg, state, deduplicator, _load(_batch_path(work, index)))
    bads = _load(posixpath.join(work, _READ_STATS))
    assemble.finish(cfg, settings, state, bads, state["sources"])


def prepare_beam(cfg: Config, options: str = "") -> dict:
    """Builds the dataset of `cfg.data` with a Beam pipeline run with `options` (Beam's
    command-line flags, e.g. "--runner=DataflowRunner --project=P ..."); returns the manifest."""
    # Beam's import warns on the root logger about Google Cloud clients a local run does not
    # need, and its runner logs a step's error with a traceback before raising it: tfllm
    # reports the raised error itself (one line when it is the user's, e.g. a full disk).
    logging.disable(logging.WARNING)
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise ConfigError("--runner beam needs apache-beam: pip install 'tfllm[beam]'") from None
    finally:
        logging.disable(logging.NOTSET)
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    out = layout.data_dir(cfg)
    tf.io.gfile.makedirs(out)
    kept = "no shards: a Beam run starts over (run prepare again)"
    with prepare.building(out, kept, lambda: _remove_temporaries(out)):
        _run_pipeline(cfg, out, PipelineOptions(shlex.split(options)), beam)
    manifest = records.read_manifest(out)
    logger.info(f"prepared {out} with Beam ({options or 'default runner'})")
    return manifest


def _run_pipeline(cfg: Config, out: str, options, beam) -> None:
    work = posixpath.join(out, WORK_DIR)
    resume.Checkpoint(out, "").clear()  # a local run's state would not match these shards
    for stale in (work, posixpath.join(out, records.MANIFEST)):
        if tf.io.gfile.exists(stale):
            (tf.io.gfile.rmtree if stale == work else tf.io.gfile.remove)(stale)
    tf.io.gfile.makedirs(work)
    proto, moved = prepare.train_tokenizer(cfg, out)
    settings = prepare.settings(cfg, proto)
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "Start" >> beam.Create([None])
            | "Read" >> beam.FlatMap(read_batches, cfg, work)
            | "Spread" >> beam.Reshuffle()
            | "CleanTokenize" >> beam.Map(Tokenize(settings, work))
            | "AllBatches" >> beam.combiners.ToList()
            | "DedupPackWrite" >> beam.Map(assemble_all, cfg, settings, moved, work)
        )
    tf.io.gfile.rmtree(work)


def _remove_temporaries(out: str) -> None:
    """After a failed run: its batch files and half-written shards (a Beam run starts over)."""
    resources.remove_temporaries(out, ["*.tmp", ".*.shard", WORK_DIR])
