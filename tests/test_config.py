"""Config parsing: overlay order, --set, strict keys and types, cross-field checks."""

import pytest
import yaml

from tfllm.config import load_config, save_config
from tfllm.errors import ConfigError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_and_shipped_configs():
    cfg = load_config([], [])
    assert cfg.train.steps == 2000 and cfg.data.source == "stdlib"
    tiny = load_config(["tiny"])
    assert tiny.data.name == "stdlib-2k"
    small = load_config(["configs/small.yaml"])
    assert small.model.num_layers == 6 and small.data.seq_len == 256
    gpt2 = load_config(["gpt2-124m"])
    assert (gpt2.model.num_layers, gpt2.model.hidden_dim, gpt2.model.num_heads) == (12, 768, 12)


def test_overlay_order_then_set(tmp_path):
    first = write(tmp_path, "a.yaml", "train: {steps: 10, seed: 1}\nmodel: {num_layers: 3}\n")
    second = write(tmp_path, "b.yaml", "train: {steps: 20}\n")
    cfg = load_config([first, second], ["train.seed=7", "data.name=123"])
    assert cfg.train.steps == 20  # the later file wins
    assert cfg.train.seed == 7  # --set wins over every file
    assert cfg.model.num_layers == 3  # untouched by the later file
    assert cfg.data.name == "123"  # a string field keeps the text as written
    assert cfg.train.learning_rate == 3e-3  # default kept


def test_numbers_for_float_fields():
    assert load_config([], ["train.learning_rate=1"]).train.learning_rate == 1.0
    assert load_config([], ["train.learning_rate=1e-3"]).train.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="train.learning_rate must be float, got str 'fast'"):
        load_config([], ["train.learning_rate=fast"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.num_layer=3"], "unknown key model.num_layer; did you mean num_layers?"),
        (["trian.steps=3"], "unknown section trian; did you mean train?"),
        (["train.steps=many"], "train.steps must be int, got str 'many'"),
        (["train.steps=true"], "train.steps must be int, got bool True"),
        (["train.jit_compile=3"], "train.jit_compile must be bool, got int 3"),
        (["data.seq_len=512"], "data.seq_len (512) is larger than model.max_sequence_length"),
        (["model.num_heads=3"], "must split into model.num_heads (3)"),
        (["train.steps=0"], "train.steps must be at least 1"),
        (["train.keep_checkpoints=1"], "train.keep_checkpoints must be at least 2"),
        (["steps=3"], "expected section.key=value"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config([], overrides)
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config(["nope.yaml"])
    broken = write(tmp_path, "broken.yaml", "train: {steps: [1\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config([broken])
    typo = write(tmp_path, "typo.yaml", "model:\n  hiden_dim: 64\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown key model.hiden_dim; did you mean"):
        load_config([typo])
    flat = write(tmp_path, "flat.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config([flat])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(["small"], ["train.seed=5"])
    path = tmp_path / "config.yaml"
    save_config(cfg, str(path))
    written = yaml.safe_load(path.read_text())
    assert written["train"]["seed"] == 5 and written["model"]["hidden_dim"] == 512
    assert load_config([str(path)]) == cfg


def test_fingerprint_tracks_model_shape():
    a = load_config([], [])
    assert a.fingerprint() == load_config([], ["train.seed=3"]).fingerprint()
    assert a.fingerprint() != load_config([], ["model.num_layers=3"]).fingerprint()
