"""Build a dataset: text -> cleaning -> SentencePiece tokenizer -> packed TFRecord shards.

`tfllm prepare`, or `python -m tfllm.prepare`:

    tfllm prepare --config configs/tiny.yaml [--force | --verify] [--verbose]
        [--runner beam [--beam_options "--runner=DataflowRunner --project=P ..."]]

Writes `<data.root>/<data.name>/{train,val}-*.tfrecord`, `tokenizer.model` and
`manifest.json` (shards with record and token counts, sizes and sha256, the tokenizer and its
checksum, cleaning counts). `--verify` checks every shard and the tokenizer against the manifest.
The stage itself is `tfllm.corpus.prepare` (`tfllm.corpus.beam` with `--runner beam`).
"""

from __future__ import annotations

import functools

from tfllm import cli, logs


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--force", action="store_true", help="rebuild even if prepared")
    action.add_argument(
        "--verify", action="store_true", help="check every shard against the manifest"
    )
    parser.add_argument(
        "--runner",
        choices=("local", "beam"),
        default="local",
        help="local: data.workers processes here; beam: an Apache Beam pipeline (same output)",
    )
    parser.add_argument(
        "--beam_options", default="", help="Beam pipeline flags, e.g. --runner=DataflowRunner"
    )
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    from tfllm.corpus import prepare
    from tfllm.data import verify

    build = prepare.prepare
    if args.runner == "beam":
        from tfllm.corpus import beam

        build = functools.partial(beam.prepare_beam, options=args.beam_options)
    if args.verify:
        for line in verify.verify_dataset(prepare.data_dir(cfg)):
            logs.output(line)
    elif args.force:
        build(cfg)
    else:
        prepare.ensure_prepared(cfg, build=build)
    return 0
