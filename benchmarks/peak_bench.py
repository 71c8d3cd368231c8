"""The float32 matmul peak that MFU is taken against: (1024, 1024) matmul GFLOP/s, XLA and
plain graph, alternating (`tfllm.observe.flops.matmul_probe`)."""

from __future__ import annotations

from benchmarks.common import emit, summarize


def measure(rounds: int, quick: bool) -> dict:
    """{"xla_gflops": summary, "no_xla_gflops": summary}."""
    from tfllm.observe import flops

    repeats = 3 if quick else 10
    runs = {"xla": [], "no_xla": []}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(reversed(runs)):
            gflops = flops.matmul_probe(repeats=repeats, jit_compile=name == "xla") / 1e9
            runs[name].append(gflops)
    return {f"{name}_gflops": summarize(values) for name, values in runs.items()}


def case(rounds: int, quick: bool) -> dict:
    peak = measure(rounds, quick)
    return {
        "figures": {
            "XLA": {"GFLOP/s": peak["xla_gflops"]},
            "plain graph": {"GFLOP/s": peak["no_xla_gflops"]},
        },
        "notes": [
            "MFU elsewhere is taken against the best XLA round: a busy moment only ever "
            "lowers a probe."
        ],
        "peak": peak,
    }


if __name__ == "__main__":  # a worker: `python -m benchmarks.peak_bench ROUNDS`
    import sys

    emit(measure(int(sys.argv[1]), False))
