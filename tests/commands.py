"""Running tfllm's commands from tests: in-process (through the `tfllm` dispatcher) or as a
subprocess, as a user types `python -m tfllm.<command>`; collecting what tfllm logs while a
block runs."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys

import pytest

from tfllm import commands


def run_main(command: str, argv: list[str]) -> int:
    """Runs `tfllm <command> argv...` in this process; returns its exit code."""
    saved = list(sys.argv), os.environ.get("TFLLM_VERBOSE")
    # Quiet mode reroutes this process's stderr, which pytest is capturing: keep it off here
    # (the journey test checks quiet mode in real subprocesses).
    os.environ["TFLLM_VERBOSE"] = "1"
    try:
        with pytest.raises(SystemExit) as exit_info:
            commands.main([command, *argv])
    finally:
        sys.argv = saved[0]
        if saved[1] is None:
            del os.environ["TFLLM_VERBOSE"]
        else:
            os.environ["TFLLM_VERBOSE"] = saved[1]
    return exit_info.value.code


def run_subprocess(command: str, *argv: str, cwd=None, env=None, timeout=900):
    """`python -m tfllm.<command> argv...` as a user types it; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", f"tfllm.{command}", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def logged():
    """Yields a list that receives the messages (INFO and above) tfllm logs inside the block."""
    lines: list[str] = []
    root = logging.getLogger("tfllm")
    handler, level = _Lines(lines), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def one_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The one `error:` line of a refused command (exit code 2, no traceback), which must
    hold every one of `fragments`."""
    assert result.returncode == 2, (result.returncode, result.stdout[-800:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
