"""Bad input on the command line: one clear line on stderr, exit code 2, no traceback."""

import subprocess
import sys

import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "missing.yaml"], "error: config file not found: missing.yaml"),
        (["--set", "model.num_layer=4"], "unknown key model.num_layer; did you mean num_layers?"),
        (["--set", "train.steps=ten"], "train.steps must be int, got str 'ten'"),
        (["--set", "data.seq_len=1024"], "data.seq_len (1024) is larger than"),
    ],
)
def test_config_mistakes(args, message):
    result = run("tfllm.train", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  num_layers: [2\n")
    result = run("tfllm.prepare", "--config", str(broken))
    assert result.returncode == 2 and "YAML syntax error" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a training command that prepares first
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_corpus(tmp_path, kind):
    source = tmp_path / "corpus"
    if kind == "empty":
        source.mkdir()
        (source / "a.txt").write_text("")
        (source / "b.txt").write_text("   \n\n")
    result = run(
        "tfllm.train",
        "--set",
        f"data.source={source}",
        "--set",
        f"data.root={tmp_path / 'records'}",
        "--set",
        f"runtime.workdir={tmp_path / 'run'}",
    )
    assert result.returncode == 2, result.stderr
    expected = "matches no file" if kind == "missing" else "gave 0 usable document(s)"
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
