"""tfllm as an installed package: the `tfllm` command and its table, `python -m` forms, the
Python API unshadowed by the command modules, and a wheel that carries the named configs."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

import tfllm
from tfllm.commands import COMMANDS

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_help_lists_every_command_and_imports_no_tensorflow():
    done = _python("-m", "tfllm", "--help")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS)
    code = "import sys, tfllm.commands as c; c.usage(); print('tensorflow' in sys.modules)"
    assert _python("-c", code).stdout.strip() == "False"


def test_version_is_the_package_version_and_the_only_one():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    done = _python("-m", "tfllm", "--version")
    assert done.stdout.strip() == f"tfllm {tfllm.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tfllm.__version__"}
    assert project["project"]["scripts"] == {"tfllm": "tfllm.commands:main"}


def test_unknown_command_is_one_line_and_exit_2():
    done = _python("-m", "tfllm", "trian")
    assert done.returncode == 2
    assert done.stderr == "error: unknown command 'trian'; did you mean train?\n"
    assert _python("-m", "tfllm").returncode == 2  # no command: the usage, on stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_python_m_forms_run_the_same_command(command):
    """`python -m tfllm.<command>` (the card's form) and `python -m tfllm <command>` are one
    implementation: the same parser, so the same help."""
    module = COMMANDS[command]
    # A command that lives in its package's __main__ runs as `python -m <package>`.
    form = module.removesuffix(".__main__") if module.endswith(".__main__") else f"tfllm.{command}"
    dotted = _python("-m", form, "--help")
    spaced = _python("-m", "tfllm", command, "--help")
    assert dotted.returncode == spaced.returncode == 0, dotted.stderr + spaced.stderr
    # The flags are the same; a package's __main__ run directly names itself in its usage line.
    assert dotted.stdout.split("options:")[1] == spaced.stdout.split("options:")[1]
    assert spaced.stdout.startswith(f"usage: tfllm {command} ")


def test_importing_the_command_modules_keeps_the_python_api():
    shims = ["tfllm.prepare", "tfllm.train", "tfllm.generate", "tfllm.export", "tfllm.convert"]
    modules = [*shims, "tfllm.eval.__main__", "tfllm.__main__"]
    code = "\n".join(
        [
            "import importlib, inspect, tfllm",
            *[f"importlib.import_module({m!r})" for m in [*modules, *COMMANDS.values()]],
            "import tfllm.train, tfllm.prepare, tfllm.generate, tfllm.export",
            "from tfllm.train import __name__ as name",  # a function's __name__, not a module's
            "api = [tfllm.train, tfllm.prepare, tfllm.generate, tfllm.export]",
            "assert all(inspect.isfunction(f) and f.__module__ == 'tfllm' for f in api), api",
            "print(name)",
        ]
    )
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "train"


def test_the_wheel_carries_the_configs_and_the_command(tmp_path):
    """Built from a copy of the sources, installed apart from them, run from another
    directory: the named configs are the top-level configs/ files, byte for byte."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "configs", source / "configs")
    shutil.copytree(ROOT / "tfllm", source / "tfllm", symlinks=True, ignore=ignore)
    built = _python(
        "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", "dist", ".",
        cwd=source,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (source / "dist").glob("tfllm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n: archive.read(n) for n in archive.namelist() if "/configs/" in n}
    expected = {f"tfllm/configs/{p.name}": p.read_bytes() for p in (ROOT / "configs").glob("*")}
    assert shipped == expected

    site = tmp_path / "site"
    installed = _python(
        "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    away = tmp_path / "elsewhere"
    away.mkdir()
    (away / "mine.yaml").write_text("model:\n  num_layers: 3\n")
    env = {"PYTHONPATH": str(site)}
    code = (
        "import tfllm; print(tfllm.__file__); load = tfllm.load_config; "
        "print(load('tiny').data.name, load('mine.yaml').model.num_layers)"
    )
    done = _python("-c", code, cwd=away, env=env)
    assert done.returncode == 0, done.stderr
    where, names = done.stdout.splitlines()
    assert where.startswith(str(site)) and names == "stdlib-2k 3"
    listed = subprocess.run(
        [site / "bin" / "tfllm", "--help"], capture_output=True, text=True, cwd=away, env=env
    )
    assert listed.returncode == 0 and "  train " in listed.stdout, listed.stderr
