"""`python -m benchmarks.run [--quick]`: tfllm against its peers, side by side, as ratios.

    B0 peak        float32 matmul GFLOP/s, XLA and not (the MFU denominator on CPU)
    B1 training    tfllm vs keras-hub GPT2 + fit vs PyTorch (eager, torch.compile), two sizes
    B2 XLA         tfllm's step with train.jit_compile on and off
    B3 pipeline    the tf.data reader alone vs what the step consumes; shards vs memory
    B4 generation  tfllm cached vs uncached vs keras-hub GPT2CausalLM.generate
    B5 mirrored    MirroredStrategy over 2 logical CPU devices vs one device

Each training repetition is a fresh process (clean peak RSS, no cross-talk) and contenders
alternate A B C A B C ...; medians, spread (min-max) and outliers are reported. Results go to
benchmarks/results/<date>-<host>.json and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys

from benchmarks import report
from benchmarks.common import has_torch, machine, run_worker, summarize, versions
from benchmarks.train_bench import SIZES, shape_of

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TF_CONTENDERS = ["tfllm", "tfllm-no-xla", "tfllm-mirrored-2", "keras-hub-fit"]
TORCH_CONTENDERS = ["torch-eager", "torch-compile"]
# Steps per timed chunk (3 chunks per process): a few seconds of steady state at each size.
STEPS = {"tiny": 60, "small": 6}
QUICK_STEPS = {"tiny": 30, "small": 3}
CHUNKS = 3


def contenders(quick: bool, torch: bool) -> list[str]:
    names = list(TF_CONTENDERS)
    if torch:  # torch.compile costs about 30s of compilation per process: full runs only
        names += TORCH_CONTENDERS if not quick else TORCH_CONTENDERS[:1]
    return names


def training(quick: bool, repetitions: int, log) -> dict:
    """B1, B2 and B5: every contender once per round, alternating, on both sizes."""
    torch = has_torch()
    names = contenders(quick, torch)
    steps = QUICK_STEPS if quick else STEPS
    out = {}
    for size in SIZES:
        runs: dict[str, list[dict]] = {name: [] for name in names}
        for round_ in range(repetitions):
            for name in names:
                args = [name, size, str(steps[size]), str(CHUNKS)]
                result = run_worker("benchmarks.train_bench", args)
                log(
                    f"  {size} round {round_ + 1} {name}: {result.get('tokens_per_second', result)}"
                )
                runs[name].append(result)
        out[size] = {"shape": shape_of(size), "contenders": {}}
        for name, results in runs.items():
            good = [r for r in results if "error" not in r]
            # One process is one repetition; with a single round, its chunks give the spread.
            rates = [r["tokens_per_second"] for r in good]
            if len(good) == 1:
                rates = good[0]["chunks_tokens_per_second"]
            out[size]["contenders"][name] = {
                "tokens_per_second": summarize(rates),
                "first_step_seconds": summarize([r["first_step_seconds"] for r in good]),
                "peak_rss_mb": summarize([r["peak_rss_mb"] for r in good]),
                "errors": [r["error"] for r in results if "error" in r],
            }
        if not torch:
            for name in TORCH_CONTENDERS:
                out[size]["contenders"][name] = {"errors": ["not installed"]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    parser.add_argument("--repetitions", type=int, default=None)
    parser.add_argument("--out", default=None, help="results JSON (default: results/DATE-HOST)")
    args = parser.parse_args(argv)
    repetitions = args.repetitions or (1 if args.quick else 3)
    quick = ["--quick"] if args.quick else []

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = {
        "command": "python -m benchmarks.run "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "repetitions": repetitions,
    }
    log("B0 peak")
    results["peak"] = run_worker("benchmarks.sections", ["peak", *quick])
    log("B1/B2/B5 training")
    results["training"] = training(args.quick, repetitions, log)
    log("B3 pipeline")
    results["pipeline"] = run_worker("benchmarks.sections", ["pipeline", *quick])
    log("B4 generation")
    results["generation"] = run_worker("benchmarks.sections", ["generation", *quick])
    results["machine"]["load_average_after"] = list(os.getloadavg())
    results["summary"] = report.summary(results)
    RESULTS.mkdir(exist_ok=True)
    name = f"{datetime.date.today().isoformat()}-{results['machine']['host']}.json"
    path = pathlib.Path(args.out) if args.out else RESULTS / name
    path.write_text(json.dumps(results, indent=1))
    print(report.markdown(results))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
