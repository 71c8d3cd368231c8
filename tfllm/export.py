"""`python -m tfllm.export`: write a TF Serving model version from a training workdir.

    python -m tfllm.export --workdir DIR --export_dir export/NAME [--version N] [--verbose]

Writes `export/NAME/<version>/` (the next integer by default): saved_model.pb, variables/,
assets/ (the resolved config.yaml and tokenizer.model) and
assets.extra/tf_serving_warmup_requests. The stage is `tfllm.serve.export`; signatures and
request limits: `tfllm.serve.module`.
"""

from __future__ import annotations

from tfllm import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], config=False)
    parser.add_argument("--workdir", required=True, help="training workdir (config, checkpoints)")
    parser.add_argument("--export_dir", required=True, help="model base path, e.g. export/NAME")
    parser.add_argument("--version", type=int, default=None, help="default: the next integer")
    args = parser.parse_args(argv)
    cli.quiet_unless(args.verbose)
    from tfllm.serve import export

    export.export(args.workdir, args.export_dir, args.version)
    return 0


if __name__ == "__main__":
    cli.run_command(main)
