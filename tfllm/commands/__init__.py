"""The `tfllm` command line: `tfllm <command> [flags]`, the same as `python -m tfllm <command>`.

`COMMANDS` maps each subcommand to the module that runs it. Such a module only reads its
flags and calls its stage: it defines `main(argv) -> int`, imports TensorFlow inside `main`
(never at import: `tfllm --help` reads every command's summary, the first line of its
docstring) and may import anything of tfllm's; nothing but this table and the `python -m
tfllm.<command>` files (see `run_as_main`) imports it.
"""

from __future__ import annotations

import difflib
import importlib
import sys

import tfllm
from tfllm import cli

COMMANDS = {
    "prepare": "tfllm.commands.prepare",
    "train": "tfllm.commands.train",
    "generate": "tfllm.commands.generate",
    "export": "tfllm.commands.export",
    "eval": "tfllm.commands.eval",
    "convert": "tfllm.commands.convert",
    "serve": "tfllm.serve.__main__",
}


def usage() -> str:
    """`tfllm --help`: every command with the first line of its module's docstring."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: tfllm <command> [flags]    (or: python -m tfllm <command> [flags])",
        "",
        "Train decoder-only Transformer language models with TensorFlow and Keras 3.",
        "",
        "commands:",
    ]
    for name, module in COMMANDS.items():
        summary = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
        summary = summary.split("`: ", 1)[-1]  # "`python -m tfllm.x`: does y" -> "does y"
        lines.append(f"  {name:<{width}}  {summary}")
    lines += ["", "`tfllm <command> --help` lists a command's flags. `tfllm --version`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Runs `tfllm <command> ...`; exits with the command's exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"tfllm {tfllm.__version__}")
        sys.exit(0)
    name = argv[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean {close[0]}?" if close else f"commands: {', '.join(COMMANDS)}"
        print(f"error: unknown command {name!r}; {hint}", file=sys.stderr)
        sys.exit(2)
    command = importlib.import_module(COMMANDS[name])
    sys.argv[0] = f"tfllm {name}"  # argparse names the program after argv[0] in usage lines
    cli.run_command(command.main, argv[1:])


def run_as_main(module_name: str, command: str) -> None:
    """The body of `tfllm/<command>.py`, the `python -m tfllm.<command>` form of a command.

    Run with `python -m`, the file runs the command. Imported (`import tfllm.train`), it puts
    the Python API's function of that name in its place in `sys.modules`, so that the import
    system, which binds a submodule as an attribute of its package, binds `tfllm.train` to the
    function again: the documented API stays what it says after any import.
    """
    if module_name == "__main__":
        main([command, *sys.argv[1:]])
    elif module_name == f"tfllm.{command}" and command in tfllm.__all__:
        sys.modules[module_name] = getattr(tfllm, command)
