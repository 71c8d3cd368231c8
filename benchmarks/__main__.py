"""The benchmark harness: every benchmark is a named case in the table below.

    python -m benchmarks                              # lists the cases
    python -m benchmarks CASE [--rounds N] [--quick]  # runs one, writes results/<date>-CASE.json
    python -m benchmarks render                       # docs/benchmark-results.md from results/

A case is a function `(rounds, quick) -> dict` with "figures" (rows by columns, see
`benchmarks.records`) and optional "notes"; the harness adds the command, machine, load
average before and after, versions and git commit, writes the record and prints its table.
`--quick` is a smaller version of the same measurement (the tests run it). Contenders inside
a case alternate (`common.alternate`, or one fresh process per contender and round).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pathlib
import sys


@dataclasses.dataclass(frozen=True)
class Case:
    module: str  # benchmarks.<module>, imported only when the case runs
    function: str
    rounds: int  # the default of --rounds
    description: str


CASES = {
    "peak": Case(
        "peak_bench",
        "case",
        5,
        "float32 (1024, 1024) matmul GFLOP/s, XLA and plain graph: the peak MFU is taken against.",
    ),
    "train": Case(
        "train_bench",
        "case",
        3,
        "Training tokens/s, MFU, first-step seconds and peak RSS at the GPT shapes (tiny, "
        "small): tfllm `Steps.train_loop` (XLA, no XLA, MirroredStrategy over 2 logical CPUs) "
        "vs keras-hub `GPT2Backbone` + `fit(jit_compile=True)` timed per step vs a "
        "nanoGPT-style PyTorch loop; one fresh process per contender and round.",
    ),
    "train-paired": Case(
        "train_bench",
        "paired_case",
        6,
        "tfllm, keras-hub `fit` (timed per step) and PyTorch eager in one process at the GPT "
        "small shape, timed alternately chunk by chunk; tfllm over the fastest, per round.",
    ),
    "train-command": Case(
        "command_bench",
        "case",
        3,
        "Training through the user's command, `python -m tfllm.train` on prepared shards "
        "(tokens/s from its own TensorBoard scalars), against keras-hub `fit` and PyTorch in "
        "fresh processes, at the GPT small shape, the Llama shape and LoRA on the Llama "
        "shape.",
    ),
    "step-hlo": Case(
        "hlo_bench",
        "case",
        1,
        "Op counts of the optimized XLA HLO of tfllm's and keras-hub's training steps at the "
        "GPT small shape (fusions, dots, transposes, copies, reductions). Not timed.",
    ),
    "step-profile": Case(
        "profile_bench",
        "case",
        3,
        "A tf.profiler trace of tfllm's and keras-hub's training steps at the GPT small shape, "
        "one process: CPU ms per step by kind (dots, each XLA fusion kind, TF ops outside XLA).",
    ),
    "backward": Case(
        "backward_bench",
        "case",
        16,
        "tfllm's hand-written backward passes vs TensorFlow's own differentiation of the same "
        "forward pass, in one process, alternating.",
    ),
    "marked-steps": Case(
        "marked_steps_bench",
        "case",
        10,
        "`Steps.marked_steps` (a profiler step marker per step) vs `Steps.train_loop`, in one "
        "process, alternating.",
    ),
    "data": Case(
        "data_bench",
        "case",
        3,
        "Prepare MB/s, resume seconds, the tf.data reader alone, and the training step fed "
        "from shards vs from memory.",
    ),
    "generate": Case(
        "generate_bench",
        "peer_case",
        5,
        "Decoding ms/token at 128 new tokens, batch 1, greedy, GPT small shape: tfllm cached "
        "(graph, XLA), uncached, keras-hub `GPT2CausalLM.generate`.",
    ),
    "serving": Case(
        "generate_bench",
        "case",
        5,
        "Decoding on configs/small.yaml shapes: cached vs uncached, the exported SavedModel "
        "vs in-process generate.",
    ),
    "deploy": Case(
        "deploy_bench",
        "case",
        3,
        "Deployment formats (SavedModel float32/int8, LiteRT, ONNX): size, load seconds, "
        "ms/token, bits per byte.",
    ),
    "eval": Case(
        "eval_bench",
        "case",
        5,
        "`tfllm.eval` scored tokens/s against the training forward pass; multiple choice with "
        "and without a shared prefix.",
    ),
    "tokenizer": Case(
        "tokenizer_bench",
        "case",
        5,
        "Byte-level BPE in the graph (tf.function, tf.data) vs the `tokenizers` library.",
    ),
    "prepare": Case(
        "prepare_bench",
        "case",
        3,
        "Prepare's streaming pass on 1 and 2 workers vs a Megatron-style `preprocess_data.py` "
        "peer.",
    ),
    "prepare-memory": Case(
        "prepare_memory_bench",
        "case",
        1,
        "Prepare's peak memory (whole process tree) against corpus size, through `python -m "
        "tfllm.prepare`.",
    ),
    "convert": Case(
        "convert_bench",
        "case",
        3,
        "Importing a 501M-parameter bfloat16 Llama-shaped checkpoint through `python -m "
        "tfllm.convert --from_hf`: seconds and peak RSS.",
    ),
    "llama-train": Case(
        "llama_bench",
        "train_case",
        3,
        "An imported Llama shape (GQA, SwiGLU, untied head): training tokens/s of tfllm vs "
        "keras-hub `Llama3Backbone` + `fit` vs `transformers.LlamaForCausalLM`, one fresh "
        "process per contender and round.",
    ),
    "llama-paired": Case(
        "llama_bench",
        "paired_case",
        6,
        "The same three contenders in one process, timed alternately chunk by chunk.",
    ),
    "llama-generate": Case(
        "llama_bench",
        "generate_case",
        5,
        "Cached greedy decoding ms/token on the imported Llama shape vs keras-hub "
        "`Llama3CausalLM.generate`.",
    ),
    "lora-paired": Case(
        "lora_bench",
        "paired_case",
        6,
        "The three LoRA contenders in one process, timed alternately chunk by chunk.",
    ),
    "quality": Case(
        "quality_bench",
        "case",
        1,
        "The main job's model quality: `python -m tfllm.train` (configs/tiny.yaml, the built-in "
        "corpus, 2,000 steps; 300 with --quick) then `python -m tfllm.eval --tasks "
        "stdlib_bpb,english_bpb`: validation loss at each evaluation, bits per byte, seconds "
        "(docs/quality.md).",
    ),
    "dpo": Case(
        "dpo_bench",
        "case",
        2,
        "DPO step tokens/s, LoRA and full, tfllm's compiled step against TRL's `DPOTrainer` on "
        "the same tiny Llama, pairs and batch; one fresh process per contender and round.",
    ),
    "serve": Case(
        "serve_bench",
        "case",
        3,
        "Serving under 1, 4 and 16 concurrent streaming clients: `tfllm serve` (continuous "
        "batching) vs the export's `serving_default` one request at a time vs `transformers "
        "serve --continuous-batching` on the `--to_hf` copy; output tok/s, TTFT and ITL p50/p99.",
    ),
    "lora": Case(
        "lora_bench",
        "case",
        3,
        "LoRA (rank 8 on q, v) on the Llama shape: tfllm LoRA vs tfllm full fine-tuning vs "
        "keras-hub `enable_lora` + `fit`, one fresh process per contender and round.",
    ),
}


def run(
    name: str, rounds: int | None, quick: bool, results: pathlib.Path, command: str
) -> pathlib.Path:
    """Runs case `name`, writes its record; returns the record's path."""
    from benchmarks import records

    case = CASES[name]
    rounds = rounds or (1 if quick else case.rounds)
    record = records.start(name, command, {"rounds": rounds, "quick": quick})
    function = getattr(importlib.import_module(f"benchmarks.{case.module}"), case.function)
    path = records.finish(record, function(rounds, quick), results)
    record["file"] = path.name
    print(records.markdown(record))
    print(f"\nrecord: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    from benchmarks import records

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("case", nargs="?", choices=[*CASES, "render"])
    parser.add_argument("--rounds", type=int, help="alternating rounds (default: the case's)")
    parser.add_argument("--quick", action="store_true", help="a small version, for tests")
    parser.add_argument("--results", type=pathlib.Path, default=records.RESULTS)
    parser.add_argument("--page", type=pathlib.Path, default=records.PAGE, help="render's output")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.case is None:
        for name, case in CASES.items():
            print(f"{name:15s} {case.description}")
        return 0
    if args.case == "render":
        descriptions = {name: case.description for name, case in CASES.items()}
        args.page.parent.mkdir(parents=True, exist_ok=True)
        args.page.write_text(records.render(records.load(args.results), descriptions))
        print(f"wrote {args.page}")
        return 0
    if args.rounds is not None and args.rounds < 1:
        print(f"error: --rounds must be at least 1, got {args.rounds}", file=sys.stderr)
        return 2
    run(args.case, args.rounds, args.quick, args.results, " ".join(["python -m benchmarks", *argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
