"""The one progress line of prepare, evaluation and training: counts, rate and ETA.

    step 120/2000 | loss 3.2101 | 14.3k tok/s | eta 2m10s
    eval stdlib 120/400 | 35.2 ex/s | eta 0m08s
    prepare 12.1/40.0 MB | 1234 documents | 5678 tokens in 2 shards | 1.21 MB/s | eta 0m23s

A line is an INFO record marked `progress` (and with its `step` when it has one), so it goes
where every log line goes (`tfllm.logs`). On a terminal the console redraws it in place, a few
times a second; in a log file (stderr not a terminal, or JSON lines) one line is written per
`--progress_seconds`. The first line and the one that reaches the total are always written.
"""

from __future__ import annotations

import logging
import math
import time

from tfllm import logs


def format_duration(seconds: float) -> str:
    """`2m10s`, `1h05m`; `?` when unknown (infinite or NaN)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_count(value: float) -> str:
    """`950`, `14.3k`, `2.1M`."""
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    return f"{value / 1e3:.1f}k" if value >= 1e3 else f"{value:.0f}"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:.1f}"


class Progress:
    """A progress line for `total` things (None when unknown), with a rate in `unit` per second.

    `label` starts the line (`step`, `eval stdlib`); `count_unit` follows the count (`MB`).
    Lines are records of `level` (INFO) on `logger`.
    `update` takes the new count and may override the rate (a number, or a text such as
    `compiling`) and the ETA in seconds; by default both come from the time since the line was
    made. `fields` are shown between the count and the rate.
    """

    def __init__(
        self,
        label: str,
        total: float | None = None,
        unit: str = "",
        count_unit: str = "",
        logger: logging.Logger | None = None,
        level: int = logging.INFO,
    ):
        self.label, self.total, self.unit, self.count_unit = label, total, unit, count_unit
        self.logger, self.level = logger or logging.getLogger(__name__), level
        self.started = time.monotonic()
        self.shown: float | None = None
        self.done: float = 0

    def advance(self, count: float = 1, **options) -> None:
        self.update(self.done + count, **options)

    def update(
        self,
        done: float,
        fields: tuple[str, ...] | list[str] = (),
        rate: float | str | None = None,
        eta: float | None = None,
        step: int | None = None,
    ) -> None:
        """Writes the line if it is due: the first, the last (done reaches total), or one
        interval after the previous one."""
        self.done = done
        if not self.logger.isEnabledFor(self.level):
            return
        now = time.monotonic()
        finished = self.total is not None and done >= self.total
        if self.shown is not None and not finished and now - self.shown < logs.progress_interval():
            return
        self.shown = now
        elapsed = now - self.started
        if rate is None:
            rate = done / elapsed if elapsed > 0 else math.nan
        if eta is None and self.total is not None:
            eta = (self.total - done) / rate if isinstance(rate, float) and rate > 0 else math.inf
        extra = {"progress": True, "step": step}
        self.logger.log(self.level, self.line(done, fields, rate, eta), extra=extra)

    def line(self, done: float, fields, rate: float | str, eta: float | None) -> str:
        count = f"{self.label} {_number(done)}"
        if self.total is not None:
            count += f"/{_number(self.total)}"
        if self.count_unit:
            count += f" {self.count_unit}"
        parts = [count, *fields]
        if isinstance(rate, str):
            parts.append(rate)
        elif self.unit and math.isfinite(rate):
            shown = f"{rate:.3g}" if rate < 999.5 else format_count(rate)
            parts.append(f"{shown} {self.unit}/s")
        if eta is not None:
            parts.append(f"eta {format_duration(eta)}")
        return " | ".join(parts)
