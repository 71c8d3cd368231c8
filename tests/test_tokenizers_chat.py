"""Chat templates render as transformers renders them; SFT records become trained/untrained
segments; bad records are counted and named."""

from __future__ import annotations

import gzip
import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tfllm.corpus import sft
from tfllm.errors import DataError
from tfllm.tokenizers import chat

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "chat_golden.json").read_text())


def _template(name: str) -> chat.Template:
    t = GOLDEN["templates"][name]
    return chat.Template(t["source"], name, t["bos_token"], t["eos_token"])


@pytest.mark.parametrize(
    "case", GOLDEN["cases"], ids=lambda c: f"{c['template']}-{c['conversation']}"
)
def test_rendering_equals_transformers(case):
    rendered = _template(case["template"]).render(case["messages"], case["add_generation_prompt"])
    assert rendered == case["rendered"]


@pytest.mark.parametrize("name", ["llama3", "chatml"])
def test_segments_cover_the_rendering_and_mask_exactly_the_assistant_replies(name):
    case = next(
        c
        for c in GOLDEN["cases"]
        if c["template"] == name and c["conversation"] == 1 and not c["add_generation_prompt"]
    )
    pieces = _template(name).segments(case["messages"])
    assert "".join(text for text, _ in pieces) == case["rendered"]
    trained = [text for text, is_trained in pieces if is_trained]
    end = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>\n"}[name]
    assert trained == [f"Bonjour !{end}", f"Oui.{end}"]


def test_a_message_marked_train_false_is_not_trained():
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "train": False},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    pieces = chat.load_template().segments(messages)
    assert [t for t, trained in pieces if trained] == ["d<|im_end|>\n"]
    assert "".join(t for t, _ in pieces) == chat.load_template().render(messages)


def test_template_precedence(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "config", "eos_token": {"content": "</s>"}})
    )
    assert chat.load_template(tokenizer_dir=str(tmp_path)).source == "config"
    (tmp_path / "chat_template.jinja").write_text("jinja {{ eos_token }}")
    template = chat.load_template(tokenizer_dir=str(tmp_path))
    assert template.render([]) == "jinja </s>"
    override = tmp_path / "mine.jinja"
    override.write_text("mine")
    assert chat.load_template(str(override), str(tmp_path)).source == "mine"
    assert chat.load_template().origin == "built-in ChatML"


def test_raise_exception_in_a_template_is_a_data_error():
    template = chat.Template("{{ raise_exception('only user/assistant') }}", "t.jinja")
    with pytest.raises(DataError, match="t.jinja: only user/assistant"):
        template.render([])


def _write(path: pathlib.Path, records: list) -> None:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(records))
    elif path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json", ".parquet"])
def test_every_container_reads_the_same_examples(tmp_path, suffix):
    records = [{"prompt": f"Q{i}: ", "completion": f"A{i}"} for i in range(3)]
    path = tmp_path / f"data{suffix}"
    _write(path, records)
    stats = sft.RecordStats()
    examples = list(
        sft.read_examples(
            [str(path)], "prompt_completion", "completion", chat.load_template(), stats
        )
    )
    assert [pieces for _, pieces in examples] == [
        [(f"Q{i}: ", False), (f"A{i}", True)] for i in range(3)
    ]
    assert stats.read == stats.used == 3


def test_alpaca_and_train_on_all(tmp_path):
    record = {"instruction": "Add", "input": "2 3", "output": "5"}
    pieces = sft.segments(record, "alpaca", "completion", chat.load_template())
    assert pieces[0][0].endswith("### Input:\n2 3\n\n### Response:\n") and not pieces[0][1]
    assert pieces[1] == ("5", True)
    everything = sft.segments({**record, "input": ""}, "alpaca", "all", chat.load_template())
    assert "### Input" not in everything[0][0] and all(t for _, t in everything)


def test_bad_records_are_counted_and_named(tmp_path):
    path = tmp_path / "chats.jsonl"
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant",
                                                                      "content": "yo"}]}),
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "x"},
                                 {"role": "assistant", "content": " "}]}),
        "{not json",
        json.dumps({"text": "no messages"}),
        json.dumps(["a list"]),
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    stats = sft.RecordStats()
    examples = list(sft.read_examples([str(path)], "messages", "completion", chat.load_template(),
                                      stats))  # fmt: skip
    assert len(examples) == 1 and stats.read == 6
    assert stats.skipped == {
        "bad_role": 1, "empty_field": 1, "bad_json": 1, "missing_field": 1, "not_an_object": 1
    }  # fmt: skip
    assert stats.named[0] == (
        f"{path}:2: messages[0].role is 'robot'; use one of ('system', 'user', 'assistant')"
    )
    assert stats.named[1] == f"{path}:3: field 'content' is empty"


def test_a_file_with_nothing_usable_stops_with_one_line(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(
        DataError,
        match=r"empty.jsonl: no usable prompt_completion record "
        r"\(missing_field 1\); first: .*empty.jsonl:1: missing field 'completion'",
    ):
        list(sft.read_examples([str(path)], "prompt_completion", "completion",
                               chat.load_template(), sft.RecordStats()))  # fmt: skip


def test_settings_are_checked():
    with pytest.raises(DataError, match="data.format must be one of"):
        sft.check_settings("chat", "completion")
    with pytest.raises(DataError, match="needs data.format=messages"):
        sft.check_settings("alpaca", "assistant")
