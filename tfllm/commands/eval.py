"""Score a trained workdir or an exported model on evaluation tasks.

`tfllm eval`, or `python -m tfllm.eval`:

    tfllm eval [--config FILE ...] [--set SECTION.KEY=VALUE ...]
        [--workdir DIR | --export PATH] [--tasks NAME[,NAME...]] [--step N]
        [--batch_size B] [--limit N] [--output_dir DIR] [--verbose]

Tasks are built-in names (stdlib, stdlib_bpb, english_bpb, next_line, code_completion) or
paths to lm-evaluation-harness-style task YAML files. Without --workdir/--export the config's
`runtime.workdir` is evaluated, without --tasks its `train.eval_tasks` (precedence: the config
files, then --set, then these flags; `tfllm.eval.run.resolve`). The stage is `tfllm.eval.run`.
"""

from __future__ import annotations

from tfllm import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workdir", help="training workdir (default: the config's runtime.workdir)")
    where.add_argument("--export", help="an exported SavedModel, or its base path (newest)")
    parser.add_argument(
        "--tasks", help="comma-separated names or YAML paths (default: train.eval_tasks)"
    )
    parser.add_argument("--step", type=int, default=None, help="evaluate ckpt-STEP")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per batch")
    parser.add_argument("--limit", type=int, default=None, help="first N documents per task")
    parser.add_argument("--output_dir", default=None, help="default: <workdir>/eval")
    args = parser.parse_args(argv)
    cli.start(args)
    from tfllm.eval import run

    target, tasks = run.resolve(args.workdir, args.export, args.tasks, args.config, args.overrides)
    run.run(
        target,
        tasks,
        step=args.step,
        batch_size=args.batch_size,
        limit=args.limit,
        output_dir=args.output_dir,
    )
    return 0
