"""Property-based tests of hostile input: configs, corpus files, Hugging Face directories and
task files are mutated at random, the command runs, and the outcome must be success or exit
code 2 with one `error:` line: never a traceback, and nothing written or changed where a
refused command must not write.

Fixed seed (`derandomize`) and a bounded number of examples, so the suite is the same on every
run and stays under two minutes; the costly legs (prepare, convert) are marked slow.
Commands run in-process the way `python -m tfllm.<command>` runs them (`commands.run_main`):
a subprocess per example would spend its time importing TensorFlow.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import string

import pytest
import yaml
from commands import run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfllm.config import Config
from tfllm.eval.tasks import _KNOWN_KEYS

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SECTIONS = Config().to_dict()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=12),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=5)


def outcome(code: int, err: str) -> None:
    """Success, or exit 2 with exactly one `error:` line and no traceback."""
    assert code in (0, 2), (code, err[-1500:])
    assert "Traceback" not in err, err[-1500:]
    if code == 2:
        assert len([x for x in err.splitlines() if x.startswith("error:")]) == 1, err[-1500:]


def tree(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}  # fmt: skip


@st.composite
def config_overlays(draw):
    """A config file: real sections and keys (sometimes a near-miss) with values of any type."""
    overlay = {}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from([*SECTIONS, "modle"]))
        keys = list(SECTIONS.get(section, {"x": 0})) + ["num_layer"]
        overlay.setdefault(section, {})[draw(st.sampled_from(keys))] = draw(values)
    return overlay


@settings(FUZZ, max_examples=60)
@given(overlay=config_overlays())
def test_any_config_file_is_accepted_or_one_line(tmp_path, capsys, overlay):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(overlay))
    before = tree(tmp_path)
    # --verify reads a dataset and writes nothing: a config that loads then fails on the
    # missing dataset, with the same one-line contract.
    code = run_main("prepare", ["--config", str(path), "--set", f"data.root={tmp_path}/d",
                                "--verify"])  # fmt: skip
    outcome(code, capsys.readouterr().err)
    assert tree(tmp_path) == before


templates = st.sampled_from([
    "{{ q }}", "Q: {{ q }}\nA:", "{{ q | upper }}", "{% for c in q %}{{ c }}{% endfor %}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}", "{{ ''.__class__.__mro__ }}",
    "{{ lipsum.__globals__ }}", "{{ 'x' * 10**10 }}", "{{ q", "{% if %}", "{{ missing }}",
    "{{ range(10**9) | list }}", "{{ q.format_map({}) }}", "q", "choices", "{{ a }}",
])  # fmt: skip
task_values = st.one_of(values, templates, st.dictionaries(st.text(max_size=5), values,
                                                           max_size=2))  # fmt: skip


@st.composite
def task_specs(draw):
    spec = {"dataset_path": "docs.jsonl", "doc_to_text": draw(templates)}
    for _ in range(draw(st.integers(0, 4))):
        spec[draw(st.sampled_from(sorted(_KNOWN_KEYS)))] = draw(task_values)
    return spec


@settings(FUZZ, max_examples=80)
@given(spec=task_specs())
def test_any_task_file_is_loaded_or_one_line(tmp_path, capsys, spec):
    (tmp_path / "docs.jsonl").write_text('{"q": "a b", "a": "b", "choices": ["x", "y"]}\n')
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    before = tree(tmp_path)
    # The tasks load (every template rendered once) before the model: with no workdir the
    # command ends on the missing checkpoint, after the task file was judged.
    code = run_main("eval", ["--workdir", str(tmp_path / "none"), "--tasks",
                             str(tmp_path / "t.yaml")])  # fmt: skip
    outcome(code, capsys.readouterr().err)
    assert tree(tmp_path) == before


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory) -> pathlib.Path:
    from hub_fixtures import write_hf_dir

    directory = tmp_path_factory.mktemp("fuzz_hf") / "qwen2"
    write_hf_dir(str(directory), "qwen2")
    return directory


HF_KEYS = ["vocab_size", "num_hidden_layers", "num_attention_heads", "hidden_size",
           "intermediate_size", "max_position_embeddings", "rms_norm_eps", "num_key_value_heads",
           "head_dim", "rope_theta", "rope_scaling", "tie_word_embeddings", "model_type",
           "hidden_act", "use_sliding_window", "new_feature"]  # fmt: skip


@st.composite
def hf_mutations(draw):
    kind = draw(st.sampled_from(["config", "header", "length", "index"]))
    if kind == "config":
        return kind, {draw(st.sampled_from(HF_KEYS)): draw(values) for _ in range(2)}
    if kind == "header":
        return kind, (draw(st.sampled_from(["dtype", "shape", "data_offsets"])), draw(values))
    if kind == "length":
        return kind, draw(st.integers(0, 2**64 - 1))
    return kind, draw(st.one_of(values, st.sampled_from(["../x", "/etc/passwd", "a/../../b"])))


def mutate(directory: pathlib.Path, kind: str, change) -> None:
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    if kind == "config":
        config = json.loads((directory / "config.json").read_text())
        config.update(change)
        (directory / "config.json").write_text(json.dumps(config))
    elif kind == "header":
        header = json.loads(data[8 : 8 + length])
        name = sorted(k for k in header if k != "__metadata__")[0]
        header[name][change[0]] = change[1]
        encoded = json.dumps(header).encode()
        weights.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + length :])
    elif kind == "length":
        weights.write_bytes(change.to_bytes(8, "little") + data[8:])
    else:
        header = json.loads(data[8 : 8 + length])
        mapping = {name: change for name in header if name != "__metadata__"}
        index = {"weight_map": mapping}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.slow
@settings(FUZZ, max_examples=25)
@given(mutation=hf_mutations())
def test_any_hugging_face_directory_imports_or_one_line(hf_source, tmp_path_factory, capsys,
                                                        mutation):  # fmt: skip
    root = tmp_path_factory.mktemp("case")
    directory = root / "hf"
    shutil.copytree(hf_source, directory)
    mutate(directory, *mutation)
    code = run_main("convert", ["--from_hf", str(directory), "--workdir", str(root / "w")])
    outcome(code, capsys.readouterr().err)
    if code:  # refused: no workdir, no temporary directory left
        assert sorted(p.name for p in root.iterdir()) == ["hf"]


@pytest.fixture(scope="module")
def tokenizer_file(corpus_dir, tmp_path_factory) -> pathlib.Path:
    from tfllm.tokenizers.tokenizer import train_tokenizer

    text = [p.read_text() for p in sorted((corpus_dir / "json").glob("*.py"))]
    path = tmp_path_factory.mktemp("fuzz_tok") / "tokenizer.model"
    path.write_bytes(train_tokenizer(text, 512, sample_mb=1))
    return path


corpus_lines = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.builds(lambda v: json.dumps({"text": v}).encode(), values),
    st.builds(lambda v: json.dumps(v).encode(), values),
)


@pytest.mark.slow
@settings(FUZZ, max_examples=8)
@given(lines=st.lists(corpus_lines, min_size=1, max_size=30),
       suffix=st.sampled_from([".txt", ".jsonl", ".py"]))  # fmt: skip
def test_any_corpus_is_prepared_or_one_line(tokenizer_file, tmp_path_factory, capsys, lines,
                                            suffix):  # fmt: skip
    root = tmp_path_factory.mktemp("corpus")
    (root / "in").mkdir()
    for i in range(3):
        (root / "in" / f"f{i}{suffix}").write_bytes(b"\n".join(lines[i::3]))
    argv = ["--set", f"data.source={root / 'in'}", "--set", f"data.root={root / 'd'}",
            "--set", f"data.tokenizer={tokenizer_file}", "--set", "model.vocabulary_size=512",
            "--set", "data.seq_len=8", "--set", "model.max_sequence_length=8", "--set",
            "data.workers=1", "--set", "data.val_fraction=0.4", "--set",
            "data.name=fuzz"]  # fmt: skip
    code = run_main("prepare", argv)
    outcome(code, capsys.readouterr().err)
    manifest = root / "d" / "fuzz" / "manifest.json"
    assert manifest.exists() == (code == 0)
