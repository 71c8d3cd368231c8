"""The server's counters and latency histograms, as Prometheus' text format at /metrics.

Written out by hand (the format is a few lines of text) rather than with prometheus_client,
so the server needs nothing beyond the ASGI stack. Counters are cumulative since start-up;
the queue depth and running sequences are read at scrape time.
"""

from __future__ import annotations

import bisect
import collections
import threading

PREFIX = "tfllm_"
# Seconds: decode steps of a small model on a CPU take milliseconds, a queued request seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HELP = {
    "requests_total": "HTTP requests to the API, by endpoint and status code",
    "prompt_tokens_total": "prompt tokens admitted (start ids included)",
    "generation_tokens_total": "tokens generated (a final stop id included)",
    "queue_depth": "sequences waiting for a slot",
    "running_sequences": "sequences in a slot",
    "time_to_first_token_seconds": "from a sequence's arrival to its first generated token",
    "inter_token_latency_seconds": "between two generated tokens of one sequence",
}


class Metrics:
    """Thread-safe counters and histograms; `render` gives the /metrics page."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple], float] = collections.defaultdict(float)
        self._histograms: dict[str, list] = {}

    def add(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[(name, tuple(sorted(labels.items())))] += value

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            counts, total = self._histograms.setdefault(
                name, [[0] * (len(LATENCY_BUCKETS) + 1), 0.0]
            )
            counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self._histograms[name][1] = total + seconds

    def render(self, waiting: int, running: int) -> str:
        lines = []

        def head(name: str, kind: str) -> None:
            lines.append(f"# HELP {PREFIX}{name} {HELP[name]}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")

        with self._lock:
            counters = dict(self._counters)
            histograms = {k: (list(c), t) for k, (c, t) in self._histograms.items()}
        for name in ("requests_total", "prompt_tokens_total", "generation_tokens_total"):
            head(name, "counter")
            found = [(labels, v) for (n, labels), v in sorted(counters.items()) if n == name]
            for labels, value in found or [((), 0.0)]:
                lines.append(f"{PREFIX}{name}{_labels(labels)} {value:g}")
        for name, value in (("queue_depth", waiting), ("running_sequences", running)):
            head(name, "gauge")
            lines.append(f"{PREFIX}{name} {value}")
        for name in ("time_to_first_token_seconds", "inter_token_latency_seconds"):
            head(name, "histogram")
            counts, total = histograms.get(name, ([0] * (len(LATENCY_BUCKETS) + 1), 0.0))
            cumulative = 0
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                cumulative += count
                edge = "+Inf" if bound == float("inf") else f"{bound:g}"
                lines.append(f'{PREFIX}{name}_bucket{{le="{edge}"}} {cumulative}')
            lines.append(f"{PREFIX}{name}_sum {total:.6f}")
            lines.append(f"{PREFIX}{name}_count {cumulative}")
        return "\n".join(lines) + "\n"


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{value}"' for key, value in labels) + "}"
