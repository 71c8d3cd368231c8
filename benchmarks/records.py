"""Benchmark records: one JSON file per run in `benchmarks/results/`, and the Markdown page
rendered from them (`python -m benchmarks render` -> docs/benchmark-results.md).

A record holds the command, the date, the machine (with its load average before and after),
library versions, the git commit, the case's parameters, and its figures: a table of rows
(contenders or sizes) by columns (measures), where a cell is a number, a string, or a summary
from `common.summarize` (median, min, max, every run). Notes are sentences worth keeping with
the figures (ratios, targets, what a number means).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess

from benchmarks.common import machine, versions

ROOT = pathlib.Path(__file__).resolve().parent
RESULTS = ROOT / "results"
PAGE = ROOT.parent / "docs" / "benchmark-results.md"


def git_commit() -> str:
    """The checkout's commit, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def start(case: str, command: str, parameters: dict) -> dict:
    """The record's header, taken before the case runs (the load it started under)."""
    return {
        "case": case,
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "commit": git_commit(),
        "parameters": parameters,
    }


def finish(record: dict, result: dict, results: pathlib.Path = RESULTS) -> pathlib.Path:
    """Adds the case's figures and the load after it; writes results/<date>-<case>.json."""
    record["machine"]["load_average_after"] = list(os.getloadavg())
    record.update(result)
    results.mkdir(parents=True, exist_ok=True)
    stamp = record["date"][:19].replace(":", "")
    quick = "-quick" if record["parameters"].get("quick") else ""
    path = results / f"{stamp}-{record['case']}{quick}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load(results: pathlib.Path = RESULTS) -> list[dict]:
    """Every harness record in `results` (older files without a "case" are skipped), oldest
    first."""
    found = []
    for path in sorted(results.glob("*.json")):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "case" in record and "figures" in record:
            record["file"] = path.name
            found.append(record)
    return sorted(found, key=lambda r: r["date"])


def cell(value, digits: int | None = None) -> str:
    """A number with thousands separators, a summary as "median (min-max)", or text."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        if value.get("median") is None:
            return "-"
        if digits is None:  # the median's precision for the spread too
            median = abs(value["median"])
            digits = 0 if median >= 100 else 2 if median >= 1 else 3
        low, high = cell(value["min"], digits), cell(value["max"], digits)
        return f"{cell(value['median'], digits)} ({low}-{high})"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if digits is None:
        digits = 0 if abs(value) >= 100 else 2 if abs(value) >= 1 else 3
    return f"{value:,.{digits}f}"


def table(figures: dict) -> list[str]:
    """Rows by columns, the columns in the order they first appear."""
    columns: list[str] = []
    for row in figures.values():  # a column with nothing in it (no errors, say) is left out
        columns += [c for c, v in row.items() if c not in columns and v is not None]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in figures.items():
        lines.append(f"| {name} | " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    return lines


def markdown(record: dict) -> str:
    """One record as a Markdown section: how it was taken, its table, its notes."""
    m = record["machine"]
    load = f"load average {m['load_average'][0]:.1f} before"
    if "load_average_after" in m:
        load += f", {m['load_average_after'][0]:.1f} after"
    lines = [
        f"`{record['command']}` ({record['date'][:16].replace('T', ' ')} UTC, commit "
        f"`{record['commit'][:12]}`{'+dirty' if record['commit'].endswith('dirty') else ''}; "
        f"{m['cpu']}, {m['cores']} cores, {load}; "
        + ", ".join(f"{k} {v}" for k, v in record["versions"].items())
        + f"; `results/{record.get('file', '')}`)",
        "",
        *table(record["figures"]),
    ]
    if record.get("notes"):
        lines += ["", *[f"- {note}" for note in record["notes"]]]
    return "\n".join(lines)


def render(records: list[dict], descriptions: dict[str, str]) -> str:
    """The results page: per case, its newest full run (a quick run only when no full one
    exists), in the order of the harness's table of cases."""
    newest: dict[str, dict] = {}
    for record in records:  # oldest first: later ones replace earlier ones
        case = record["case"]
        quick = record["parameters"].get("quick")
        if not quick or case not in newest or newest[case]["parameters"].get("quick"):
            newest[case] = record
    lines = [
        "# Benchmark results",
        "",
        "Rendered by `python -m benchmarks render` from the newest record of each case in",
        "`benchmarks/results/`; do not edit by hand. How each case measures, and what the figures",
        "mean, is in `benchmarks/README.md`. The machine is a shared 2-core VM: figures are",
        "medians of alternating rounds with their spread (min-max), and the load average says",
        "how busy it was. keras-hub's `fit` is timed per step, by a callback that reads the loss",
        "at the end of every step, from the first step's start to the last step's end: the wall",
        "time of a short unsynced `fit` call includes a wait of up to about 10 s for tf.data's",
        "autotuning thread when the call ends.",
    ]
    for case in [c for c in descriptions if c in newest]:
        lines += ["", f"## {case}", "", descriptions[case], "", markdown(newest[case])]
    return "\n".join(lines) + "\n"
