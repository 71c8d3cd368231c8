"""Continued pretraining of an imported model whose tokenizer is a byte-level BPE tokenizer.json.

The user's path, each step a `python -m tfllm.<command>`: convert a Llama-3-style HF directory
-> prepare a JSON Lines corpus with the workdir's own config (nothing trained: the shards hold
the `tokenizers` library's ids of each document between the model's BOS and its own EOS, with
1 and 2 workers byte-identical) -> train a few steps on those shards. The same framing for a
SentencePiece `tokenizer.model` (Llama 2), and an unsupported tokenizer.json refused first.
"""

from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from commands import run_main
from hf_tokenizer_files import CORPUS, write_tokenizer
from hub_fixtures import write_hf_dir
from test_corpus_scale import _shard_bytes
from tokenizers import Tokenizer

from tfllm.config import load_config
from tfllm.corpus import prepare
from tfllm.corpus.formats import BadInput
from tfllm.corpus.sources import read_raw
from tfllm.data import records
from tfllm.data.layout import split_of
from tfllm.errors import DataError
from tfllm.runs.trained import load_trained

# One scatter lane: the shards hold the documents in input order, so the expected token stream
# is the documents' ids one after another.
SETTINGS = [
    "data.seq_len=16",
    "data.records_per_shard=8",
    "data.val_fraction=0.2",
    "data.scatter_shards=1",
]
TRAIN = [
    "train.steps=4", "train.steps_per_loop=2", "train.eval_every=4", "train.checkpoint_every=4",
    "train.global_batch_size=2", "train.eval_batches=1", "train.sample_tokens=2",
    "train.warmup_steps=1", "train.sample_prompt=Hello",
]  # fmt: skip


def _sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(root, workdir config, corpus): a converted Llama-3-style model and a JSONL corpus."""
    root = tmp_path_factory.mktemp("imported_pretrain")
    hf = root / "hf"
    write_hf_dir(str(hf), "llama", vocabulary_size=640)
    write_tokenizer(hf, "llama3")
    workdir = root / "runs" / "imp"
    assert run_main("convert", ["--from_hf", str(hf), "--workdir", str(workdir)]) == 0
    # Digits, contractions, runs of spaces, tabs, accents, CJK, emoji, and a special token
    # written in the text (never split, as the `tokenizers` library reads it).
    docs = [f"{CORPUS[i % len(CORPUS)]} doc {i}: {i * 7919} items." for i in range(60)]
    docs[5] += " <|eot_id|> after"
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root, str(workdir / "config.yaml"), corpus


def _prepare(root, config, corpus, name, *overrides) -> int:
    sets = _sets(f"data.source={corpus}", f"data.root={root / 'data'}", f"data.name={name}")
    return run_main("prepare", ["--config", config, *sets, *_sets(*SETTINGS, *overrides)])


def _windows(directory: pathlib.Path, manifest: dict, split: str) -> np.ndarray:
    files = [str(directory / s["file"]) for s in manifest["splits"][split]["shards"]]
    window = manifest["window_len"]
    serialized = list(tf.data.TFRecordDataset(files).as_numpy_iterator())
    return records.parse_batch(tf.constant(serialized), window)[records.TOKENS_KEY].numpy()


@pytest.mark.slow  # trains
def test_shards_hold_the_models_own_tokens_and_train(imported):
    root, config, corpus = imported
    assert _prepare(root, config, corpus, "w1", "data.workers=1") == 0
    assert _prepare(root, config, corpus, "w2", "data.workers=2") == 0
    data = [f"data.source={corpus}", f"data.root={root / 'data'}", "data.name=w1", *SETTINGS]
    cfg = load_config([config], data)
    given = cfg.data.tokenizer
    assert given.endswith("hf/tokenizer.json")
    one = records.read_manifest(prepare.data_dir(cfg))
    two = records.read_manifest(str(root / "data" / "w2"))
    assert _shard_bytes(cfg, one) == _shard_bytes(cfg, {"splits": two["splits"]})

    # The given tokenizer is used as it is, never trained: the dataset keeps a copy of it.
    directory = pathlib.Path(prepare.data_dir(cfg))
    assert (directory / "tokenizer.json").read_bytes() == pathlib.Path(given).read_bytes()
    assert not (directory / "tokenizer.model").exists()
    assert one["tokenizer"]["given"] == given and one["tokenizer"]["file"] == "tokenizer.json"
    assert one["eos_id"] == 1  # Llama 3's <|end_of_text|>, not tfllm's EOS (2)

    reference = Tokenizer.from_file(given)
    bos, eos = reference.token_to_id("<|begin_of_text|>"), reference.token_to_id("<|end_of_text|>")
    expected = {"train": [], "val": []}
    bads = [BadInput("error", collections.Counter())]
    for doc in read_raw(cfg.data.source, "text", "", bads):
        ids = reference.encode(doc.data.decode(), add_special_tokens=False).ids
        assert reference.encode(doc.data.decode()).ids == [bos, *ids]  # the template's BOS
        expected[split_of(doc.name, cfg.data.val_fraction)] += [bos, *ids, eos]
    assert reference.token_to_id("<|eot_id|>") in expected["train"] + expected["val"]
    for split, stream in expected.items():
        info = one["splits"][split]
        assert info["tokens_in"] == len(stream)
        written = _windows(directory, one, split).reshape(-1)
        assert info["tokens_written"] == written.size > 0
        assert written.tolist() == stream[: written.size]

    assert run_main("train", ["--config", config, *_sets(*TRAIN, *data)]) == 0
    trained = load_trained(str(pathlib.Path(config).parent))
    assert trained.step == 4


def test_a_tokenizer_json_tfllm_cannot_run_stops_before_reading(tmp_path):
    spec = {"model": {"type": "WordPiece", "vocab": {"a": 0}}, "added_tokens": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    cfg = load_config(
        [],
        [
            f"data.tokenizer={tmp_path / 'tokenizer.json'}",
            f"data.source={tmp_path / 'missing.jsonl'}",
            f"data.root={tmp_path}",
        ],
    )
    with pytest.raises(DataError, match="model.type 'WordPiece'; supported: BPE"):
        prepare.prepare(cfg)


def test_an_imported_sentencepiece_model_frames_documents_with_its_bos_and_eos(tmp_path):
    """Llama 2 style: `tokenizer.model` beside tokenizer_config.json (add_bos_token)."""
    import sentencepiece as spm

    hf = write_tokenizer(tmp_path / "hf", "llama2")
    docs = [f"{CORPUS[i % len(CORPUS)]} number {i * 31}" for i in range(30)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = load_config(
        [],
        [
            f"data.tokenizer={hf / 'tokenizer.model'}",
            f"data.source={corpus}",
            f"data.root={tmp_path}",
            "model.vocabulary_size=512",
            "data.workers=1",
            *SETTINGS,
        ],
    )
    manifest = prepare.prepare(cfg)
    directory = pathlib.Path(prepare.data_dir(cfg))
    assert (directory / "tokenizer.model").read_bytes() == (hf / "tokenizer.model").read_bytes()
    assert manifest["tokenizer"]["given"] == cfg.data.tokenizer and manifest["eos_id"] == 2
    sp = spm.SentencePieceProcessor(model_file=str(hf / "tokenizer.model"))
    expected = {"train": [], "val": []}
    for i, text in enumerate(docs):
        name = f"{corpus}:{i + 1}"
        expected[split_of(name, cfg.data.val_fraction)] += [1, *sp.encode(text), 2]
    for split, stream in expected.items():
        assert manifest["splits"][split]["tokens_in"] == len(stream)
        written = _windows(directory, manifest, split).reshape(-1)
        assert written.size > 0 and written.tolist() == stream[: written.size]
