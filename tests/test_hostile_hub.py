"""Imported Hugging Face directories are validated before anything is allocated from them, and
the config.json that the current transformers release writes for each family imports.

The commands run as a user types them: `python -m tfllm.convert --from_hf DIR --workdir W`.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest
from commands import one_error, run_subprocess
from hub_fixtures import write_hf_dir

from tfllm.hub import hf_config
from tfllm.hub.families import FAMILIES

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "hf_configs.json").read_text())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("hf") / "qwen2"
    write_hf_dir(str(directory), "qwen2")
    return directory


def broken_copy(source: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    target = tmp_path / "hf"
    shutil.copytree(source, target)
    return target


def convert(directory: pathlib.Path, tmp_path: pathlib.Path):
    return run_subprocess("convert", "--from_hf", str(directory), "--workdir",
                          str(tmp_path / "w"))  # fmt: skip


def edit_config(directory: pathlib.Path, change) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps(change(config)))


def set_key(key, value):
    def change(config):
        config[key] = value
        return config

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: [c], "config.json: expected a JSON object, got list"),
        (set_key("num_attention_heads", 0), "num_attention_heads must be at least 1, got 0"),
        (set_key("num_attention_heads", 2.5), "num_attention_heads must be an integer, got 2.5"),
        (set_key("num_key_value_heads", "2"), "num_key_value_heads must be an integer, got '2'"),
        (set_key("rms_norm_eps", -1), "rms_norm_eps must be greater than 0, got -1"),
        (set_key("rope_scaling", [1]), "rope_scaling must be an object or null"),
        (set_key("vocab_size", 10**12), "describes at least"),
        (set_key("vocab_size", 2**80), "describes at least"),
        (set_key("some_new_feature", 0.5), "key 'some_new_feature' (= 0.5) is not understood"),
    ],
)
@pytest.mark.slow  # a convert command each
def test_config_values_are_checked_before_use(source, tmp_path, change, message):
    directory = broken_copy(source, tmp_path)
    edit_config(directory, change)
    one_error(convert(directory, tmp_path), message)
    assert not (tmp_path / "w").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".convert-")]


def rewrite_header(path: pathlib.Path, change) -> None:
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = change(json.loads(data[8 : 8 + length]))
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data[8 + length :])


def huge_shape(header):
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [2**40, 2**40]
    return header


@pytest.mark.slow  # a subprocess
def test_a_header_length_of_2_to_the_62_is_refused(source, tmp_path):
    directory = broken_copy(source, tmp_path)
    path = directory / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes((2**62).to_bytes(8, "little") + data[8:])
    one_error(convert(directory, tmp_path), f"a header of {2**62} bytes in a file of")


@pytest.mark.slow  # a subprocess
def test_a_shape_larger_than_its_bytes_is_refused(source, tmp_path):
    directory = broken_copy(source, tmp_path)
    rewrite_header(directory / "model.safetensors", huge_shape)
    one_error(convert(directory, tmp_path), "of shape [1099511627776, 1099511627776] needs")


@pytest.mark.parametrize("where", ["../outside.safetensors", "/etc/passwd", "link"])
@pytest.mark.slow  # a convert command each
def test_index_paths_stay_inside_the_model_directory(source, tmp_path, where):
    directory = broken_copy(source, tmp_path)
    (tmp_path / "outside.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    if where == "link":
        (directory / "link").symlink_to(tmp_path / "outside.safetensors")
    from safetensors import safe_open

    with safe_open(directory / "model.safetensors", "np") as f:
        names = list(f.keys())
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, where)}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    (directory / "model.safetensors").unlink()
    one_error(convert(directory, tmp_path), f"weight file {where!r}", "outside the model directory")


@pytest.mark.slow  # a subprocess
def test_a_gemma2_directory_with_transformers_5_null_keys_imports(tmp_path):
    directory = tmp_path / "gemma2"
    write_hf_dir(str(directory), "gemma2")
    edit_config(directory, set_key("use_bidirectional_attention", None))
    result = convert(directory, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "set to null or false: use_bidirectional_attention" in result.stderr
    assert (tmp_path / "w" / "config.yaml").exists()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_config_json_of_the_current_transformers_imports(family):
    config = GOLDEN["configs"][family]
    ignored = []
    got, model = hf_config.to_model_config(config, f"{family} config.json", ignored)
    assert got == family
    assert model["num_layers"] == config.get("num_hidden_layers", config.get("n_layer"))
    assert model["vocabulary_size"] == 256
    assert all(config[key] in (None, False) for key in ignored)
