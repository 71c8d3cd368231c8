"""tfllm's console logging: the text and JSON formats, --quiet/--verbose levels, the progress
line redrawn on a terminal and throttled in a log file, and that no `log=` parameter is left."""

from __future__ import annotations

import io
import json
import logging
import pathlib
import re

import pytest
from commands import run_subprocess

from tfllm import logs
from tfllm.progress import Progress, format_count, format_duration

logger = logging.getLogger("tfllm.test")


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def stderr(capsys):
    """What the console wrote to stderr so far; afterwards no console handler is left."""
    yield lambda: capsys.readouterr().err
    _unconfigure()


def _unconfigure():
    root = logging.getLogger("tfllm")
    for handler in [h for h in root.handlers if isinstance(h, logs.ConsoleHandler)]:
        root.removeHandler(handler)
    root.setLevel(logging.NOTSET)
    root.propagate = True


def test_text_format_is_the_message_with_a_level_word_past_info(stderr):
    logs.configure("normal", "text")
    logger.debug("hidden")
    logger.info("prepare: 12 documents")
    logger.warning("skipping ckpt-20")
    assert stderr() == "prepare: 12 documents\nwarning: skipping ckpt-20\n"


def test_quiet_shows_warnings_only_and_verbose_shows_debug(stderr):
    logs.configure("quiet")
    logger.info("a note")
    logger.warning("a warning")
    logs.configure("verbose")
    logger.debug("a detail")
    assert stderr() == "warning: a warning\ndebug: a detail\n"


def test_json_lines_carry_time_level_logger_message_and_step(stderr):
    logs.configure("normal", "json")
    logger.info("step 10: validation loss 3.2000", extra={"step": 10})
    logger.warning("no step here")
    first, second = (json.loads(line) for line in stderr().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert first == {
        "time": first["time"],
        "level": "INFO",
        "logger": "tfllm.test",
        "message": "step 10: validation loss 3.2000",
        "step": 10,
    }
    assert second["level"] == "WARNING" and "step" not in second


def test_configure_twice_keeps_one_handler(stderr):
    logs.configure()
    logs.configure("normal", "json")
    logger.info("once")
    assert len(stderr().splitlines()) == 1


def test_progress_redraws_on_a_terminal_and_a_result_ends_the_line(monkeypatch, capsys):
    capsys.readouterr()
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    logs.configure()
    logger.info("step 1", extra={"progress": True})
    logger.info("step 2", extra={"progress": True})
    logger.info("validation loss 3.0")
    logger.info("step 3", extra={"progress": True})
    logs.output("| task | value |")
    assert terminal.getvalue() == (
        "\rstep 1\x1b[K\rstep 2\x1b[K\nvalidation loss 3.0\n\rstep 3\x1b[K\n"
    )
    assert capsys.readouterr().out == "| task | value |\n"
    assert logs.progress_interval() == logs.LIVE_SECONDS
    _unconfigure()


def test_progress_in_a_log_file_is_one_line_per_interval_plus_first_and_last(stderr):
    logs.configure("normal", "text", progress_seconds=3600)
    progress = Progress("eval stdlib", total=40, unit="ex", logger=logger)
    for _ in range(4):
        progress.advance(10)
    lines = stderr().splitlines()
    assert [line.split(" | ")[0] for line in lines] == ["eval stdlib 10/40", "eval stdlib 40/40"]
    assert lines[1].endswith("ex/s | eta 0m00s")

    logs.configure("normal", "text", progress_seconds=0)
    stderr()
    progress = Progress("prepare", unit="MB", count_unit="MB", logger=logger)
    for megabytes in (1.0, 2.5):
        progress.update(megabytes, fields=["12 documents"])
    lines = stderr().splitlines()
    assert [line.split(" | ")[:2] for line in lines] == [
        ["prepare 1.0 MB", "12 documents"],
        ["prepare 2.5 MB", "12 documents"],
    ]
    assert "eta" not in lines[0]  # no total, no ETA


def test_progress_line_fields_rate_and_eta(stderr):
    progress = Progress("step", total=2000, unit="tok", logger=logger)
    line = progress.line(120, ["loss 3.2100"], 14300.0, 130.0)
    assert line == "step 120/2000 | loss 3.2100 | 14.3k tok/s | eta 2m10s"
    assert progress.line(10, [], "compiling", float("inf")) == "step 10/2000 | compiling | eta ?"
    assert progress.line(5, [], 35.24, None) == "step 5/2000 | 35.2 tok/s"
    assert format_duration(3900) == "1h05m" and format_count(2.1e6) == "2.1M"


def test_progress_records_carry_their_step_in_json(stderr):
    logs.configure("normal", "json", progress_seconds=0)
    Progress("step", total=20, unit="tok", logger=logger).update(10, rate=100.0, step=10)
    entry = json.loads(stderr())
    assert entry["step"] == 10 and entry["progress"] is True
    assert entry["message"].startswith("step 10/20 | 100 tok/s")


def test_no_log_parameters_are_left():
    package = pathlib.Path(logs.__file__).parent
    found = [
        f"{path}:{number}: {line.strip()}"
        for path in package.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\blog=(print|log)\b|\blog: Callable|def \w+\(.*\blog\b", line)
    ]
    assert not found, found


@pytest.mark.slow  # prepare commands
def test_prepare_as_a_user_runs_it_json_quiet_and_verify(corpus_dir, tmp_path):
    """Log lines on stderr (JSON lines with --log_format json), results on stdout, nothing but
    the results with --quiet."""
    args = [
        "--set", f"data.source={corpus_dir}", "--set", f"data.root={tmp_path}",
        "--set", "data.name=logs", "--set", "model.vocabulary_size=512",
        "--set", "data.seq_len=32", "--set", "model.max_sequence_length=64",
        "--set", "data.tokenizer_sample_mb=1",
    ]  # fmt: skip
    done = run_subprocess("prepare", *args, "--log_format", "json", "--progress_seconds", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    assert {e["logger"] for e in entries} >= {"tfllm.corpus.prepare", "tfllm.corpus.progress"}
    progress = [e for e in entries if e.get("progress")]
    assert progress and all(e["message"].startswith("prepare ") for e in progress)
    assert entries[-1]["message"].startswith(f"prepared {tmp_path}/logs in ")

    quiet = run_subprocess("prepare", *args, "--force", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == quiet.stderr == "", quiet.stderr[-3000:]

    verified = run_subprocess("prepare", *args, "--verify")
    assert verified.returncode == 0 and verified.stderr == "", verified.stderr[-3000:]
    assert verified.stdout.splitlines()[-1].endswith("match the manifest")
    assert verified.stdout.count("ok  ") >= 2  # one line per shard


def test_the_python_api_shows_notes_unless_the_program_set_up_logging():
    import subprocess
    import sys

    code = (
        "import logging, sys\n"
        "from tfllm import logs\n"
        "if sys.argv[1] == 'own':\n"
        "    logging.basicConfig(level=logging.WARNING, format='own %(message)s')\n"
        "logs.show_by_default()\n"
        "logging.getLogger('tfllm.x').info('a note')\n"
        "logging.getLogger('tfllm.x').warning('a warning')\n"
    )
    shown = {
        mode: subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, check=True
        ).stderr
        for mode in ("default", "own")
    }
    assert shown["default"] == "a note\nwarning: a warning\n"
    assert shown["own"] == "own a warning\n"
