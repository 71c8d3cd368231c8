"""The package's shape: imports flow one way between the sub-packages, with no cycles, and
nothing imports a command module (the `tfllm` dispatcher finds them in its table)."""

from __future__ import annotations

import ast
import pathlib

import tfllm
from tfllm.commands import COMMANDS

PACKAGE = pathlib.Path(tfllm.__file__).parent
# Modules at the top of the package that every sub-package may import; they import none.
SHARED = {"config", "errors", "cli", "validation", "files", "templates", "logs", "progress",
          "resources", "locks", "overlays"}  # fmt: skip
# What each sub-package may import besides itself and the shared modules: a package imports
# only packages above it in this table. `tokenizers` is a leaf; `data` is what training reads
# of a prepared dataset; `corpus` is the prepare pipeline that writes one, and nothing that
# trains, serves or evaluates imports it (the commands pass its `prepare` in).
ALLOWED = {
    "tokenizers": set(),
    "data": set(),
    "corpus": {"data", "tokenizers"},
    "model": set(),
    "observe": set(),
    "runs": {"data", "model"},
    "serve": {"data", "model", "runs", "tokenizers"},
    "server": {"model", "runs", "serve", "tokenizers"},
    "hub": {"data", "model", "observe", "runs", "tokenizers"},
    "eval": {"data", "model", "observe", "runs", "serve", "tokenizers"},
    # hub: distillation imports a Hugging Face or keras-hub teacher (tfllm.training.distill)
    "training": {"data", "model", "observe", "runs", "serve", "eval", "tokenizers", "hub"},
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """tfllm module -> the tfllm modules it imports (at any depth of its code)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tfllm"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists()
                    found.add(candidate if is_module else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("tfllm")}
        graph[_module_name(path)] = found - {"tfllm"}
    return graph


def _package(module: str) -> str:
    """`tfllm.data.reader` -> `data`; a top-level module is its own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tfllm"


def test_sub_packages_import_only_the_packages_their_row_allows():
    wrong = []
    for module, imported in _imports().items():
        package = _package(module)
        # A package's __main__ is its `python -m` entry point: a command, above every package.
        if package not in ALLOWED or module.endswith(".__main__"):
            continue
        for target in imported:
            other = _package(target)
            if other not in {package, *SHARED, *ALLOWED[package]}:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_shared_modules_import_no_package_and_nothing_imports_a_command():
    graph = _imports()
    for shared in SHARED & {m.split(".")[1] for m in graph if m.count(".") == 1}:
        assert {_package(t) for t in graph[f"tfllm.{shared}"]} <= SHARED, shared
    commands = set(COMMANDS.values())
    assert commands <= set(graph), commands - set(graph)
    importers = [m for m, targets in graph.items() for t in targets if t in commands]
    assert not importers, importers


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                raise AssertionError(" -> ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_importing_tfllm_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, tfllm; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
