"""Where tfllm's log lines go: one console handler on the `tfllm` logger, set up once by a
command's flags (`--verbose`, `--quiet`, `--log_format`, `--progress_seconds`).

Every module logs through `logging.getLogger(__name__)`; this module decides the level and
the format. Lines go to stderr, so that a command's results (generated text, an evaluation
table) are alone on stdout and can be piped. Two formats:

    text   the message as it is (`warning: ...` for warnings); progress lines are redrawn in
           place on a terminal
    json   one object per line: {"time", "level", "logger", "message"} and "step" when the
           record has one (`logger.info(..., extra={"step": n})`), for a cluster's log agent

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

FORMATS = ("text", "json")
LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}
PROGRESS_SECONDS = 10.0  # a log file gets one progress line per this many seconds
LIVE_SECONDS = 0.5  # a terminal's progress line is redrawn at most this often
_root = logging.getLogger("tfllm")


class ConsoleHandler(logging.Handler):
    """Writes records to `sys.stderr` as it is at each record (quiet mode and pytest replace
    it after start-up). In text format on a terminal, a record marked `progress` replaces the
    previous progress line instead of adding one."""

    def __init__(self, fmt: str = "text", progress_seconds: float = PROGRESS_SECONDS):
        super().__init__()
        self.json = fmt == "json"
        self.progress_seconds = progress_seconds
        self.pending = False  # a progress line is on the terminal without its newline

    def live(self) -> bool:
        """Whether progress lines are redrawn (text on a terminal) rather than appended."""
        return not self.json and bool(getattr(sys.stderr, "isatty", lambda: False)())

    def format(self, record: logging.LogRecord) -> str:
        if self.json:
            return json_line(record)
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        if record.levelno == logging.INFO:
            return message
        return f"{record.levelname.lower()}: {message}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stderr
            if getattr(record, "progress", False) and self.live():
                # \x1b[K clears what a longer previous line left to the right.
                stream.write(f"\r{line}\x1b[K")
                self.pending = True
            else:
                self.end_line()
                stream.write(line + "\n")
            stream.flush()
        except Exception:  # logging's contract: a broken stream never breaks the caller
            self.handleError(record)

    def end_line(self) -> None:
        if self.pending:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.pending = False

    def close(self) -> None:
        self.end_line()
        super().close()


def json_line(record: logging.LogRecord) -> str:
    """One JSON object: time (UTC, ISO 8601), level, logger, message, and step when given."""
    created = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
    entry = {
        "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
    }
    if getattr(record, "step", None) is not None:
        entry["step"] = int(record.step)
    if getattr(record, "progress", False):
        entry["progress"] = True
    if record.exc_info:
        entry["exception"] = logging.Formatter().formatException(record.exc_info)
    return json.dumps(entry, ensure_ascii=False)


def configure(
    level: str = "normal", fmt: str = "text", progress_seconds: float = PROGRESS_SECONDS
) -> ConsoleHandler:
    """Sends the `tfllm.*` loggers' records of `level` (quiet, normal, verbose) and above to
    stderr in `fmt`, and only there: not also to a handler that a library put on the root
    logger (some call `logging.basicConfig` on import). Called again, it replaces its own
    handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    for old in [h for h in _root.handlers if isinstance(h, ConsoleHandler)]:
        _root.removeHandler(old)
        old.close()
    handler = ConsoleHandler(fmt, progress_seconds)
    _root.addHandler(handler)
    _root.setLevel(LEVELS[level])
    _root.propagate = False
    return handler


def show_by_default() -> None:
    """For the Python API: progress and notes show as they do for a command, unless the
    program has set up logging itself (a handler on the root or the `tfllm` logger)."""
    if not _root.handlers and not logging.getLogger().handlers:
        configure()


def console() -> ConsoleHandler | None:
    for handler in _root.handlers:
        if isinstance(handler, ConsoleHandler):
            return handler
    return None


def progress_interval() -> float:
    """Seconds between two progress lines: redraws on a terminal, else one line per interval."""
    handler = console()
    if handler is None:
        return PROGRESS_SECONDS
    return LIVE_SECONDS if handler.live() else handler.progress_seconds


def end_line() -> None:
    """Ends a progress line left on the terminal, before something else writes there."""
    handler = console()
    if handler is not None:
        handler.end_line()


def output(text: str) -> None:
    """Prints a command's result on stdout (a terminal's progress line ended first)."""
    end_line()
    print(text, flush=True)
