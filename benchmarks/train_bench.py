"""Training tokens/s at the GPT shapes: tfllm against keras-hub `fit` and PyTorch.

`python -m benchmarks train` starts one fresh process per contender and round (clean peak
RSS, no cross-talk), contenders alternating; each process times `CHUNKS` chunks of steps after
two single warm-up steps. All contenders train the same shapes (`shapes.GPT`: GELU MLP of 4D,
tied head) on the same random token batches with AdamW (lr 1e-3, betas 0.9/0.95, decay 0.1),
global-norm clip 1.0, float32. keras-hub's `fit` is timed per step (`common.keras_hub_fit`);
`keras-hub-fit-wall` is the cross-check: the wall time of one long `fit` with no callback.
"""

from __future__ import annotations

import os
import resource
import sys
import time

from benchmarks import shapes
from benchmarks.common import (
    Seconds,
    emit,
    fit_wall_seconds,
    gpt2_backbone,
    has_torch,
    keras_hub_fit,
    paired_training,
    run_worker,
    summarize,
)

# Steps per timed chunk: a few seconds of steady state at each size on 2 cores.
STEPS = {"tiny": 60, "small": 10}
QUICK_STEPS = {"tiny": 10, "small": 3}
CHUNKS = 3
WALL_STEPS = {"tiny": 600, "small": 120}  # the unsynced `fit`: long enough that 10 s is small
PEERS = ["keras-hub-fit", "torch-eager", "torch-compile"]


def run_tfllm(shape: dict, steps: int, jit_compile: bool = True, replicas: int = 1):
    """tfllm's own host loop (`Steps.train_loop`) fed from memory, as the peers are."""
    import tensorflow as tf

    if replicas > 1:  # logical CPU devices must exist before TF initializes its runtime
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
        )
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    else:
        strategy = tf.distribute.get_strategy()
    from tfllm.config import load_config
    from tfllm.model.lm import build_model
    from tfllm.training.optim import make_optimizer
    from tfllm.training.steps import Steps

    cfg = load_config([], shapes.overrides(shape, jit_compile))
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model(cfg.model)
        optimizer = make_optimizer(cfg.train, model.trainable_variables)
    steps_fn = Steps(cfg, strategy, model, optimizer)
    windows = tf.constant(shapes.token_batches(shape))
    per_replica = shape["batch"] // replicas

    def dataset(ctx):
        ds = tf.data.Dataset.from_tensor_slices(windows).repeat()
        ds = ds.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(2)
        return ds.map(lambda x, y: (x[:per_replica], y[:per_replica]))

    iterator = iter(strategy.distribute_datasets_from_function(dataset))
    return (
        lambda: float(steps_fn.train_loop(iterator, tf.constant(1))["loss"]),
        lambda: float(steps_fn.train_loop(iterator, tf.constant(steps))["loss"]),
    )


def run_keras_hub(shape: dict, steps: int, wall: bool = False):
    """keras-hub GPT2Backbone + tied head, trained with `model.fit(jit_compile=True)`."""
    import keras

    keras.utils.set_random_seed(0)
    fit_steps = keras_hub_fit(gpt2_backbone(shape, shape["seq_len"]), shapes.token_batches(shape))
    if wall:
        return lambda: fit_steps(1), lambda: Seconds(fit_wall_seconds(fit_steps, steps))
    return lambda: fit_steps(1), lambda: fit_steps(steps)


def run_torch(shape: dict, steps: int, compiled: bool):
    import torch

    from benchmarks.torch_gpt import make_step

    torch.set_num_threads(os.cpu_count() or 1)
    step = make_step(shape, compiled)
    windows = torch.from_numpy(shapes.token_batches(shape)).long()

    def steps_from(count: int):
        for i in range(count):
            w = windows[i % shapes.BATCHES]
            loss = step(w[:, :-1], w[:, 1:])
        return float(loss)

    return lambda: steps_from(1), lambda: steps_from(steps)


CONTENDERS = {
    "tfllm": lambda shape, steps: run_tfllm(shape, steps),
    "tfllm-no-xla": lambda shape, steps: run_tfllm(shape, steps, jit_compile=False),
    "tfllm-mirrored-2": lambda shape, steps: run_tfllm(shape, steps, replicas=2),
    "keras-hub-fit": run_keras_hub,
    "keras-hub-fit-wall": lambda shape, steps: run_keras_hub(shape, steps, wall=True),
    "torch-eager": lambda shape, steps: run_torch(shape, steps, False),
    "torch-compile": lambda shape, steps: run_torch(shape, steps, True),
}


def measure(first, many, tokens_per_step: int, steps: int, chunks: int, started: float) -> dict:
    """Seconds from `started` (before the model was built) to the end of the first step, then
    `chunks` timed runs of `steps` steps (the spread inside one process); a contender returning
    `Seconds` is timed by them rather than the wall."""
    first()  # traces and compiles: what a user waits for before the first step
    first_step = time.perf_counter() - started
    first()  # a second single step finishes any lazy compilation
    rates = []
    for _ in range(chunks):
        started = time.perf_counter()
        result = many()
        seconds = result if isinstance(result, Seconds) else time.perf_counter() - started
        rates.append(steps * tokens_per_step / seconds)
    return {
        "tokens_per_second": sorted(rates)[len(rates) // 2],
        "chunks_tokens_per_second": rates,
        "first_step_seconds": first_step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def worker(contender: str, size: str, steps: int, chunks: int) -> dict:
    shape = shapes.gpt(size)
    started = time.perf_counter()
    first, many = CONTENDERS[contender](shape, steps)
    result = measure(first, many, shapes.tokens_per_step(shape), steps, chunks, started)
    return {"contender": contender, "size": size, "steps": steps, **result}


def contenders(quick: bool) -> list[str]:
    names = ["tfllm", "tfllm-no-xla", "tfllm-mirrored-2", "keras-hub-fit"]
    if not quick:
        names.append("keras-hub-fit-wall")
    if has_torch():  # torch.compile costs about 30s of compilation per process: full runs only
        names += ["torch-eager"] if quick else ["torch-eager", "torch-compile"]
    return names


def flops_per_token(shape: dict) -> float:
    """PaLM-style training FLOPs per token of a shape (the same for every contender)."""
    from tfllm.config import ModelConfig
    from tfllm.observe import flops

    model = ModelConfig(**shapes.model_keys(shape))
    return flops.flops_per_token(model, shape["seq_len"])["palm"]


def case(rounds: int, quick: bool) -> dict:
    names = contenders(quick)
    steps = QUICK_STEPS if quick else STEPS
    peak = run_worker("benchmarks.peak_bench", [str(2 if quick else 3)])
    best = (peak.get("xla_gflops") or {}).get("max")
    figures, notes, runs = {}, [], {}
    for size in shapes.GPT:
        results: dict[str, list[dict]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                n = WALL_STEPS[size] if name == "keras-hub-fit-wall" and not quick else steps[size]
                chunks = 1 if name == "keras-hub-fit-wall" else CHUNKS
                result = run_worker("benchmarks.train_bench", [name, size, str(n), str(chunks)])
                print(f"{size} round {r + 1} {name}: {result.get('tokens_per_second', result)}",
                      file=sys.stderr, flush=True)  # fmt: skip
                results[name].append(result)
        runs[size] = results
        per_token = flops_per_token(shapes.gpt(size))
        medians = {}
        for name, found in results.items():
            good = [r for r in found if "error" not in r]
            rates = [r["tokens_per_second"] for r in good]
            if len(good) == 1:  # one round: its chunks give the spread
                rates = good[0]["chunks_tokens_per_second"]
            rate = summarize(rates)
            medians[name] = rate["median"]
            figures[f"{size} {name}"] = {
                "tokens/s": rate,
                "MFU %": 100 * rate["median"] * per_token / (best * 1e9)
                if rate["median"] and best
                else None,
                "first step s": summarize([r["first_step_seconds"] for r in good])["median"],
                "peak RSS MB": summarize([r["peak_rss_mb"] for r in good])["median"],
                "errors": "; ".join(r["error"] for r in found if "error" in r)[:120] or None,
            }
        peers = {p: medians[p] for p in PEERS if medians.get(p)}
        if medians.get("tfllm") and peers:
            fastest = max(peers, key=peers.get)
            per_round = per_round_ratio(results, list(peers))
            notes.append(
                f"{size}: tfllm / fastest peer ({fastest}) {medians['tfllm'] / peers[fastest]:.3f}"
                f" (medians); per round {', '.join(f'{x:.2f}' for x in per_round)}"
            )
        if medians.get("tfllm") and medians.get("tfllm-no-xla"):
            notes.append(f"{size}: XLA / no XLA {medians['tfllm'] / medians['tfllm-no-xla']:.3f}")
    if best:
        notes.append(f"MFU against the best XLA matmul round, {best:.1f} GFLOP/s (PaLM FLOPs).")
    return {"figures": figures, "notes": notes, "peak": peak, "runs": runs}


def paired_case(rounds: int, quick: bool) -> dict:
    """tfllm, keras-hub `fit` (timed per step) and PyTorch eager in one process at the GPT
    small shape (tiny with --quick), timed alternately chunk by chunk; MFU of each against the
    best XLA round of the matmul probe, run in its own process just before."""
    size = "tiny" if quick else "small"
    shape, steps = shapes.gpt(size), (QUICK_STEPS if quick else STEPS)[size]
    peak = run_worker("benchmarks.peak_bench", [str(2 if quick else 3)])
    best = (peak.get("xla_gflops") or {}).get("max")
    names = ["tfllm", "keras-hub-fit"] + (["torch-eager"] if has_torch() else [])
    builders = {name: lambda name=name: CONTENDERS[name](shape, steps) for name in names}
    figures = paired_training(builders, "tfllm", rounds, steps, shapes.tokens_per_step(shape))
    per_token = flops_per_token(shape)
    for name in names:
        rate = figures[name]["tokens/s"]["median"]
        figures[name]["MFU %"] = 100 * rate * per_token / (best * 1e9) if rate and best else None
    notes = []
    if best:
        notes.append(f"MFU against the best XLA matmul round, {best:.1f} GFLOP/s (PaLM FLOPs).")
    return {
        "figures": {f"{size} {name}": row for name, row in figures.items()},
        "notes": notes,
        "peak": peak,
    }


def per_round_ratio(results: dict, peers: list[str]) -> list[float]:
    """tfllm's rate over the fastest peer's, round by round (the same load in each pair)."""
    out = []
    for i, ours in enumerate(results["tfllm"]):
        theirs = [results[p][i].get("tokens_per_second") for p in peers if i < len(results[p])]
        theirs = [t for t in theirs if t]
        if "tokens_per_second" in ours and theirs:
            out.append(ours["tokens_per_second"] / max(theirs))
    return out


if __name__ == "__main__":  # a worker: python -m benchmarks.train_bench CONTENDER SIZE STEPS CHUNKS
    emit(worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
