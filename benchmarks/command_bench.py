"""Training speed through the user's command: `python -m tfllm.train` on prepared shards against
keras-hub `fit` and PyTorch, at three setups.

    python -m benchmarks train-command [--rounds 3] [--quick]

    gpt-small   L4 D256 H4 V4096 T128 B16, GELU MLP of 4D, tied head (`shapes.gpt("small")`);
                peers: keras-hub `GPT2Backbone` + `fit`, the nanoGPT-style PyTorch loop
    llama       `shapes.LLAMA` (GQA, SwiGLU, untied head); peers: keras-hub `LlamaBackbone` +
                `fit`, `transformers.LlamaForCausalLM` (when installed)
    llama-lora  LoRA rank 8 on q, v of the Llama shape, from a base workdir (`train.init_from`);
                peer: keras-hub `enable_lora` + `fit`

tfllm trains through the command a user types, reading the built-in corpus's shards
(prepared once under ~/.cache/tfllm/bench-data), and its speed is what the run itself reports:
the `perf/tokens_per_second` scalar of each host-loop call in its TensorBoard events (the first
call, which compiles, reports none), median over the calls; and, as a check, the wall-clock
rate between the first and last timed calls' events (what happens between calls included).
The peers train from in-memory token batches in their own fresh processes (`train_bench`,
`lora_bench` workers), keras-hub's `fit` timed per step. One fresh process per contender and
round, contenders alternating; the ratio to the fastest peer is taken round by round.
"""

from __future__ import annotations

import glob
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import llama_bench, shapes
from benchmarks.common import emit, has_torch, keras_hub_fit, run_worker, summarize
from benchmarks.train_bench import measure

CACHE = pathlib.Path.home() / ".cache" / "tfllm" / "bench-data"
STEPS, LOOP = 60, 10  # per tfllm run: 5 timed host-loop calls of 10 steps after the first
QUICK_STEPS, QUICK_LOOP = 4, 2
PEER_STEPS, CHUNKS = 10, 3


def tfllm_settings(shape: dict, workdir: str, steps: int, loop: int) -> list[str]:
    """The command's --set overrides: the shape, the stdlib shards, no evaluation in between."""
    return [
        *shapes.overrides(shape),
        "data.source=stdlib",
        f"data.root={CACHE}",
        f"data.name=stdlib-v{shape['vocabulary_size']}-t{shape['seq_len']}",
        "data.tokenizer_sample_mb=2",
        f"runtime.workdir={workdir}",
        f"train.steps={steps}",
        f"train.steps_per_loop={loop}",
        f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}",
        "train.eval_batches=1",
    ]


def run_command(settings: list[str]) -> None:
    command = [sys.executable, "-m", "tfllm.train"]
    for setting in settings:
        command += ["--set", setting]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"tfllm.train exit {done.returncode}: {done.stderr.strip()[-400:]}")


def reported_rates(workdir: str, tokens_per_step: int) -> tuple[list[float], float | None]:
    """The run's own tokens/s, one per timed host-loop call, from its TensorBoard events; and
    the wall-clock rate from the first timed call's end to the last one's (everything between
    the calls included: the loss read, norms, summaries)."""
    import tensorflow as tf

    rates, ends = [], []
    for path in sorted(glob.glob(os.path.join(workdir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "perf/tokens_per_second":
                    rates.append(float(tf.make_ndarray(value.tensor)))
                    ends.append((event.step, event.wall_time))
    if len(ends) < 2:
        return rates, None
    (first_step, first_time), (last_step, last_time) = ends[0], ends[-1]
    return rates, tokens_per_step * (last_step - first_step) / (last_time - first_time)


def tfllm_round(shape: dict, root: str, name: str, steps: int, loop: int, extra=()) -> dict:
    workdir = os.path.join(root, name)
    started = time.perf_counter()
    try:
        run_command([*tfllm_settings(shape, workdir, steps, loop), *extra])
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return {"error": str(error)}
    finally:
        seconds = time.perf_counter() - started
    rates, wall = reported_rates(workdir, shapes.tokens_per_step(shape))
    if not rates:
        return {"error": "no perf/tokens_per_second in the run's events"}
    return {
        "tokens_per_second": statistics.median(rates),
        "calls": rates,
        "wall_tokens_per_second": wall,
        "seconds": seconds,
    }


def run_keras_hub_llama(steps: int):
    """keras-hub LlamaBackbone at the Llama shape (random weights) + `fit`, timed per step."""
    backbone = shapes.keras_hub_llama()
    fit_steps = keras_hub_fit(backbone, shapes.token_batches(shapes.LLAMA))
    return lambda: fit_steps(1), lambda: fit_steps(steps)


def run_torch_llama(steps: int):
    """`transformers.LlamaForCausalLM` at the Llama shape (sdpa, eager), a plain loop."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    s = shapes.LLAMA
    config = transformers.LlamaConfig(
        vocab_size=s["vocabulary_size"],
        hidden_size=s["hidden_dim"],
        intermediate_size=s["intermediate_dim"],
        num_hidden_layers=s["num_layers"],
        num_attention_heads=s["num_heads"],
        num_key_value_heads=s["num_key_value_heads"],
        max_position_embeddings=s["max_sequence_length"],
        tie_word_embeddings=s["tie_embeddings"],
        attn_implementation="sdpa",
    )
    model = transformers.LlamaForCausalLM(config)
    return llama_bench.torch_steps(model, shapes.token_batches(s), steps)


WORKERS = {"keras-hub-fit": run_keras_hub_llama, "transformers": run_torch_llama}


def worker(contender: str, steps: int, chunks: int) -> dict:
    started = time.perf_counter()
    first, many = WORKERS[contender](steps)
    tokens = shapes.tokens_per_step(shapes.LLAMA)
    return {"contender": contender, **measure(first, many, tokens, steps, chunks, started)}


def has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return has_torch()


def peers(setup: str, steps: int) -> dict[str, tuple[str, list[str]]]:
    """{peer: (worker module, argv)} of a setup."""
    chunks = str(CHUNKS)
    if setup == "gpt-small":
        found = {"keras-hub-fit": ("benchmarks.train_bench", ["keras-hub-fit", "small"])}
        if has_torch():
            found["torch-eager"] = ("benchmarks.train_bench", ["torch-eager", "small"])
        return {k: (m, [*a, str(steps), chunks]) for k, (m, a) in found.items()}
    if setup == "llama":
        found = {"keras-hub-fit": ("benchmarks.command_bench", ["keras-hub-fit"])}
        if has_transformers():
            found["transformers"] = ("benchmarks.command_bench", ["transformers"])
        return {k: (m, [*a, str(steps), chunks]) for k, (m, a) in found.items()}
    return {"keras-hub-lora": ("benchmarks.lora_bench", ["keras-hub-lora", str(steps), chunks])}


def case(rounds: int, quick: bool) -> dict:
    from tfllm.config import load_config
    from tfllm.corpus import prepare
    from tfllm.runs import finetune

    steps, loop = (QUICK_STEPS, QUICK_LOOP) if quick else (STEPS, LOOP)
    peer_steps = 2 if quick else PEER_STEPS
    setups = {"gpt-small": shapes.gpt("small"), "llama": shapes.LLAMA, "llama-lora": shapes.LLAMA}
    figures, notes, runs = {}, [], {}
    with tempfile.TemporaryDirectory(prefix="command_bench_") as root:
        for setup, shape in setups.items():
            prepare.ensure_prepared(load_config([], tfllm_settings(shape, root, steps, loop)))
            extra = []
            if setup == "llama-lora":  # the base model LoRA starts from: one step of training
                run_command(tfllm_settings(shape, os.path.join(root, "base"), 1, 1))
                lora = ["train.lora_rank=8", "train.lora_targets=q,v"]
                # A fine-tuning run tokenizes with its base's tokenizer file (data.tokenizer),
                # which the dataset's fingerprint records: it gets its own dataset, prepared
                # here so that no round times the preparation.
                name = f"stdlib-v{shape['vocabulary_size']}-t{shape['seq_len']}-lora"
                base = f"train.init_from={os.path.join(root, 'base')}"
                extra = [base, *lora, f"data.name={name}"]
                settings = [*tfllm_settings(shape, root, steps, loop), *extra]
                prepare.ensure_prepared(finetune.resolve(load_config([], settings)))
            contenders = {"tfllm (python -m tfllm.train)": None, **peers(setup, peer_steps)}
            results = {name: [] for name in contenders}
            for r in range(rounds):
                for name in contenders if r % 2 == 0 else reversed(list(contenders)):
                    if contenders[name] is None:
                        result = tfllm_round(shape, root, f"{setup}-{r}", steps, loop, extra)
                    else:
                        result = run_worker(*contenders[name], timeout=1800)
                    rate = result.get("tokens_per_second", result)
                    print(f"{setup} round {r + 1} {name}: {rate}", file=sys.stderr, flush=True)
                    results[name].append(result)
            runs[setup] = results
            figures.update(rows(setup, results))
            notes.append(f"{setup}: tfllm / fastest peer per round: {ratios(results)}")
    return {"figures": figures, "notes": notes, "runs": runs}


def rows(setup: str, results: dict) -> dict:
    out = {}
    for name, found in results.items():
        ok = [r for r in found if "error" not in r]
        walls = [r["wall_tokens_per_second"] for r in ok if r.get("wall_tokens_per_second")]
        out[f"{setup} {name}"] = {
            "tokens/s": summarize([r["tokens_per_second"] for r in ok]),
            "tokens/s, wall between loop calls": summarize(walls) if walls else None,
            "errors": "; ".join(r["error"] for r in found if "error" in r)[:120] or None,
        }
    return out


def ratios(results: dict) -> str:
    names = list(results)
    ours, peer_names = results[names[0]], names[1:]
    out = []
    for i, mine in enumerate(ours):
        theirs = [results[p][i].get("tokens_per_second") for p in peer_names]
        theirs = [t for t in theirs if t]
        if mine.get("tokens_per_second") and theirs:
            out.append(mine["tokens_per_second"] / max(theirs))
    if not out:
        return "-"
    return f"{statistics.median(out):.3f} (" + ", ".join(f"{x:.2f}" for x in out) + ")"


if __name__ == "__main__":  # a worker: python -m benchmarks.command_bench CONTENDER STEPS CHUNKS
    emit(worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
