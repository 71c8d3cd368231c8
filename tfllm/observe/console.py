"""The console progress line: rewritten in place on a terminal, plain lines in a log file."""

from __future__ import annotations

import math
import sys


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_count(value: float) -> str:
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"


class Console:
    """One live progress line per host-loop call; other lines (evaluation, summary) stay.

    On a terminal the progress line is redrawn with a carriage return, so a long run fills
    one line instead of the scrollback; when the stream is not a terminal (a log file, a CI
    job, a notebook capture) every progress line is printed as a plain line.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.pending = False  # a progress line is on screen without its newline

    def progress(self, line: str) -> None:
        if self.live:
            # \x1b[K clears what a longer previous line left to the right.
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()
            self.pending = True
        else:
            self.print(line)

    def print(self, line: str) -> None:
        self.end_live_line()
        print(line, file=self.stream, flush=True)

    def end_live_line(self) -> None:
        if self.pending:
            self.stream.write("\n")
            self.stream.flush()
            self.pending = False


def progress_line(
    step: int, total: int, loss: float, tokens_per_second: float | None, mfu: float | None, eta
) -> str:
    """`step 120/2000 | loss 3.2101 | 14.3k tok/s | MFU 41.2% | eta 2m10s`."""
    speed = "compiling" if tokens_per_second is None else f"{format_count(tokens_per_second)} tok/s"
    parts = [f"step {step}/{total}", f"loss {loss:.4f}", speed]
    if mfu is not None:
        parts.append(f"MFU {100 * mfu:.1f}%")
    parts.append(f"eta {format_duration(eta)}")
    return " | ".join(parts)
