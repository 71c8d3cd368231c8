"""Instruction data through prepare: the loss mask covers exactly the answers, examples never
share attention, and the reader turns the mask into ignored targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tiny_run
from commands import logged

from tfllm.config import load_config
from tfllm.corpus import prepare
from tfllm.data import reader, records, verify
from tfllm.errors import ConfigError, DataError
from tfllm.tokenizers.tokenizer import EOS_ID, load_tokenizer

CHATS = [
    {"messages": [{"role": "user", "content": f"add {i} and {i + 1}"},
                  {"role": "assistant", "content": f"{2 * i + 1}"}]}
    for i in range(30)
]  # fmt: skip


SHORT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }};{% endfor %}"
    "{% if add_generation_prompt %}a:{% endif %}"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run"))


def _config(tmp_path, source, *overrides):
    return load_config(
        overrides=[
            f"model.vocabulary_size={tiny_run.VOCAB}",
            f"model.max_sequence_length={tiny_run.SEQ}",
            f"data.seq_len={tiny_run.SEQ}",
            f"data.root={tmp_path / 'data'}",
            f"data.source={source}",
            "data.name=sft",
            "data.packing=document",
            "data.val_fraction=0.1",
            *overrides,
        ]
    )


def _windows(directory, manifest, split):
    shards = verify.check_split(directory, manifest, split, "sha256", "error")
    window_len = manifest["window_len"]
    rows = [
        records.parse_batch(tf.constant([r.numpy()]), window_len, True)
        for path in shards.paths
        for r in tf.data.TFRecordDataset(path)
    ]
    return [(r[records.TOKENS_KEY][0].numpy(), r[records.SEGMENTS_KEY][0].numpy()) for r in rows]


def test_the_mask_covers_exactly_the_assistant_replies(run, tmp_path):
    source = tmp_path / "chats.jsonl"
    source.write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    # A short template (data.chat_template): ChatML's markers alone fill the fixture's 32-token
    # windows with its small tokenizer.
    template = tmp_path / "short.jinja"
    template.write_text(SHORT_TEMPLATE)
    cfg = _config(
        tmp_path,
        source,
        "data.format=messages",
        f"data.tokenizer={run.tokenizer_path}",
        f"data.chat_template={template}",
    )
    with logged() as lines:
        manifest = prepare.prepare(cfg)
    directory = prepare.data_dir(cfg)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["documents"] + val["documents"] == 30 and val["documents"] >= 1
    assert any("tokens trained on" in line for line in lines)
    sp = load_tokenizer(run.tokenizer_path)
    replies = set()
    for tokens, segments in _windows(directory, manifest, "train"):
        for k in range(1, segments.max() + 1):
            example = tokens[np.abs(segments) == k]
            trained = tokens[segments == k]
            assert example[0] == EOS_ID and example[-1] == EOS_ID  # tfllm's document rule
            text = sp.detokenize(tf.constant([trained[:-1].tolist()])).numpy()[0].decode()
            replies.add(text)
    # Each reply is the answer, its end-of-turn marker, then the closing EOS: nothing else.
    assert replies <= {f"{2 * i + 1};" for i in range(30)}
    assert len(replies) == train["documents"]
    # The reader: targets are the trained tokens only, and never cross an example.
    shards = verify.check_split(directory, manifest, "train", "sha256", "error")
    inputs, targets, segment_ids = next(iter(reader.eval_dataset(shards, 2, 1)))
    tokens, segments = _windows(directory, manifest, "train")[0]
    expected = np.where(
        (segments[1:] > 0) & (np.abs(segments[1:]) == np.abs(segments[:-1])), tokens[1:], -1
    )
    np.testing.assert_array_equal(targets.numpy()[0], expected)
    assert (segment_ids.numpy() >= 0).all()


def test_prompt_completion_truncation_is_counted(run, tmp_path):
    source = tmp_path / "pc.json"
    long = {"prompt": "word " * 200, "completion": " end"}
    source.write_text(json.dumps([long] + [{"prompt": f"p{i}", "completion": f" c{i}"}
                                           for i in range(5)]))  # fmt: skip
    common = ["data.format=prompt_completion", f"data.tokenizer={run.tokenizer_path}"]
    cut = prepare.prepare(_config(tmp_path, source, *common))
    assert sum(s["examples_cut"] for s in cut["splits"].values()) == 1
    dropped = prepare.prepare(
        _config(tmp_path, source, *common, "data.truncate=drop", "data.name=sft-drop"),
    )
    assert dropped["records"]["dropped_too_long"] == 1
    assert "pc.json:record 1" in dropped["records"]["dropped_named"][0]


def test_settings_and_missing_tokenizer_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="set data.packing=document"):
        load_config(overrides=["data.format=messages"])
    source = tmp_path / "x.jsonl"
    source.write_text(json.dumps(CHATS[0]) + "\n")
    with pytest.raises(DataError, match="needs data.tokenizer"):
        prepare.prepare(_config(tmp_path, source, "data.format=messages"))
