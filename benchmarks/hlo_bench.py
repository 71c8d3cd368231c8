"""What XLA makes of each contender's training step: op counts of the optimized HLO.

    python -m benchmarks step-hlo [--quick]

Runs the `train` case's workers for tfllm and keras-hub `fit` at the GPT small shape (2 steps,
untimed) with `XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text`, takes each one's largest
module after optimizations (tfllm: the per-replica gradient step, with AdamW and clipping
outside it as fused TF kernels; keras-hub: the whole `train_step`, AdamW included), and
counts, outside fused computations, the kernels the step runs (fusions by kind, dots, custom
calls, copies) and, inside fusions, the instructions that move data (transpose, copy, pad,
concatenate, slice) or reduce. `--quick` uses the tiny shape.
"""

from __future__ import annotations

import collections
import os
import pathlib
import re
import subprocess
import sys
import tempfile

INSTRUCTION = re.compile(r"\s+(?:ROOT\s+)?%?([\w.\-]+) = (?:\([^=]*?\)|\S+) ([a-z][a-z0-9\-]*)\(")
MOVES = ("transpose", "copy", "pad", "concatenate", "slice", "dynamic-slice", "gather", "scatter")
REDUCES = ("reduce", "reduce-window")
MOVED = ("transpose", "wrapped_transpose", "copy", "wrapped_copy")
TRIVIAL = ("parameter", "constant", "bitcast", "get-tuple-element", "tuple")


def computations(text: str) -> dict[str, list[tuple[str, str, str]]]:
    """{computation: [(instruction, opcode, line)]} of an HLO module's text."""
    found: dict[str, list] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.rstrip().endswith("{"):
            words = line.split()
            current = (words[1] if words[0] == "ENTRY" else words[0]).lstrip("%")
            found[current] = []
            continue
        match = INSTRUCTION.match(line)
        if match and current:
            found[current].append((match.group(1), match.group(2), line))
    return found


def count(text: str) -> dict[str, int]:
    """Kernels of the step (outside fusions) and data-moving instructions inside fusions."""
    comps = computations(text)
    fused, applied = set(), set()
    for ops in comps.values():
        for _, op, line in ops:
            if op == "fusion":
                fused.update(re.findall(r"calls=%?([\w.\-]+)", line))
            applied.update(re.findall(r"to_apply=%?([\w.\-]+)", line))
    outside, inside, fusions = (collections.Counter() for _ in range(3))
    for name, ops in comps.items():
        if name in applied:  # a reduction's body (add, max): not a kernel
            continue
        counter = inside if name in fused else outside
        for instruction, op, line in ops:
            counter[op] += 1
            if op == "fusion" and name not in fused:
                kind = re.search(r"kind=(\w+)", line)
                fusions[kind.group(1) if kind else "?"] += 1
                if instruction.startswith(
                    ("transpose", "wrapped_transpose", "copy", "wrapped_copy")
                ):
                    fusions["transpose or copy"] += 1
    row = {
        "kernels (fusions + unfused ops)": sum(n for op, n in outside.items() if op not in TRIVIAL),
        "fusions": outside["fusion"],
        "loop fusions": fusions["kLoop"],
        "custom fusions (library dots)": fusions["kCustom"],
        "unfused dots": outside["dot"],
        "unfused copies and transposes": outside["copy"] + outside["transpose"],
        "fusions named for a transpose or copy": fusions["transpose or copy"],
        "custom calls": outside["custom-call"],
        "while loops": outside["while"],
    }
    for op in (*MOVES, *REDUCES):
        row[f"{op} in fusions"] = inside[op]
    row["instructions in fusions"] = sum(inside.values())
    return row


def dump(contender: str, size: str, directory: str) -> str:
    """Runs one contender's worker for 2 untimed steps with the HLO dumped; the largest
    optimized module's text."""
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "XLA_FLAGS": f"--xla_dump_to={directory} --xla_dump_hlo_as_text",
    }
    command = [sys.executable, "-m", "benchmarks.train_bench", contender, size, "2", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{contender}: exit {done.returncode}: {done.stderr[-400:]}")
    modules = pathlib.Path(directory).glob("*.cpu_after_optimizations.txt")
    return max(modules, key=lambda p: p.stat().st_size).read_text()


def case(rounds: int, quick: bool) -> dict:
    size = "tiny" if quick else "small"
    figures = {}
    with tempfile.TemporaryDirectory(prefix="hlo_bench_") as root:
        for contender in ("tfllm", "keras-hub-fit"):
            directory = os.path.join(root, contender)
            figures[f"{size} {contender}"] = count(dump(contender, size, directory))
    notes = [
        "Counted in the largest optimized module: tfllm's gradient step (AdamW and clipping run "
        "after it as fused TF kernels), keras-hub's whole train_step (AdamW inside XLA)."
    ]
    return {"figures": figures, "notes": notes}
