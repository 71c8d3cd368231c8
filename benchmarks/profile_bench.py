"""Where each contender's training step spends its time: a `tf.profiler` trace of a few steps
of tfllm and of keras-hub `fit`, in one process, read op by op.

    python -m benchmarks step-profile [--rounds 3] [--quick]

Both train the GPT small shape (tiny with --quick) from in-memory batches. Each is warmed up,
then traced for `STEPS` steps, `rounds` times, alternately. Every trace event's self time (its
duration less the events nested inside it on the same thread) is summed by kind: XLA's dots
(`MatMul*`, `dot*`, `ynn_fusion*` library dots), each kind of XLA fusion (its name without the
number), and TensorFlow ops run outside XLA (tfllm's fused AdamW and clipping), per step.
Summed over threads, so the figures are CPU milliseconds per step; the wall milliseconds per
step are the traced call's. The machine's load inflates all of them alike.
"""

from __future__ import annotations

import collections
import glob
import re
import statistics
import tempfile
import time

from benchmarks import shapes
from benchmarks.common import Seconds
from benchmarks.train_bench import CONTENDERS

STEPS = 5
# Frames that only contain other events: their self time is scheduling and waiting.
CONTAINERS = re.compile(
    r"^(ThunkExecutor::|ExecutorState::|CpuExecutable::|BlockUntilReady|Eager|TFE_|"
    r"KernelAndDeviceFunc|_train_loop_fn|ThreadpoolListener|Iterator::|FunctionRun|"
    r"InstantiatedCapturedFunction|ParallelMap|Prefetch|IteratorGetNext|MakeIterator|"
    r"ExecutorDoneCallback|tf\.|__inference|TraceMe|EagerKernelExecute|train_function|"
    r"one_step_on|multi_step_on)"
)
DOT = re.compile(r"^(MatMul|dot|ynn_fusion|einsum|Einsum|BatchMatMul|convolution)")


def kind(name: str) -> str:
    """An event's kind: dot, an XLA fusion kind, a TF op type (after the last '/'), or other."""
    if DOT.match(name):
        return "dots (XLA)"
    if "/" in name or re.match(r"^[\w.]+:[A-Z]\w*$", name):  # a TF op: scope/name or name:Type
        return "TF op " + re.sub(r"[_\d]+$", "", name.split(":")[-1].split("/")[-1])
    return re.sub(r"[.\d]+$", "", name.split(":")[0])


def self_times(path: str) -> collections.Counter:
    """{kind: milliseconds of self time} over every thread of an xplane.pb trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            events = sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps))
            stack: list[list] = []  # [end, name, self]
            for e in events:
                while stack and stack[-1][0] <= e.offset_ps:
                    _, name, own = stack.pop()
                    totals[name] += own
                if stack:
                    stack[-1][2] -= e.duration_ps
                stack.append(
                    [e.offset_ps + e.duration_ps, names.get(e.metadata_id, "?"), e.duration_ps]
                )
            for _, name, own in stack:
                totals[name] += own
    out: collections.Counter = collections.Counter()
    for name, ps in totals.items():
        if not CONTAINERS.match(name):
            out[kind(name)] += ps / 1e9
    return out


def trace(many, directory: str) -> tuple[float, collections.Counter]:
    import tensorflow as tf

    tf.profiler.experimental.start(directory)
    started = time.perf_counter()
    result = many()
    seconds = result if isinstance(result, Seconds) else time.perf_counter() - started
    tf.profiler.experimental.stop()
    path = sorted(glob.glob(f"{directory}/plugins/profile/*/*.xplane.pb"))[-1]
    return seconds, self_times(path)


def case(rounds: int, quick: bool) -> dict:
    size = "tiny" if quick else "small"
    shape = shapes.gpt(size)
    runs = {name: CONTENDERS[name](shape, STEPS) for name in ("tfllm", "keras-hub-fit")}
    for first, _ in runs.values():
        first(), first()
    found = {name: [] for name in runs}
    with tempfile.TemporaryDirectory(prefix="profile_bench_") as root:
        for r in range(rounds):
            for name in list(runs) if r % 2 == 0 else list(reversed(runs)):
                found[name].append(trace(runs[name][1], f"{root}/{name}-{r}"))
    figures = {}
    for name, traces in found.items():
        kinds = collections.Counter()
        for _, counter in traces:
            kinds.update(counter)
        row = {"wall ms/step": statistics.median(s for s, _ in traces) * 1000 / STEPS}
        row["CPU ms/step, all"] = sum(kinds.values()) / len(traces) / STEPS
        for k, ms in kinds.most_common(14):
            row[k] = ms / len(traces) / STEPS
        figures[f"{size} {name}"] = row
    notes = [
        f"{STEPS} steps a trace, {rounds} traces each, alternating; CPU ms summed over threads "
        "(self time of each event); the busier the machine, the more waiting."
    ]
    return {"figures": figures, "notes": notes}
