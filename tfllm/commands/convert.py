"""Convert a Hugging Face or keras-hub model directory to a tfllm workdir and back.

`tfllm convert`, or `python -m tfllm.convert`:

    tfllm convert --from_hf DIR --workdir runs/NAME [--verbose]
    tfllm convert --from_keras_hub DIR --workdir runs/NAME [--verbose]
    tfllm convert --to_hf OUT --workdir runs/NAME [--shard_gb G] [--verbose]
    tfllm convert --to_keras_hub OUT --workdir runs/NAME [--verbose]

--from_hf writes a new workdir: config.yaml, a step-0 checkpoint (`tfllm.train` resumes from
it, `tfllm.generate` and `tfllm.export` read it) and hf/ (the source's config and tokenizer).
--from_keras_hub does the same from a keras-hub preset directory (`save_to_preset`), and
--to_keras_hub writes one (through the --to_hf files and keras-hub's own converter).
--to_hf writes config.json, model.safetensors (sharded past --shard_gb, with the index),
generation_config.json and the tokenizer files. Families and mapping: `tfllm.hub`.
"""

from __future__ import annotations

from tfllm import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], config=False)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from_hf", help="a local Hugging Face model directory to import")
    direction.add_argument(
        "--from_keras_hub", help="a local keras-hub preset directory (save_to_preset) to import"
    )
    direction.add_argument("--to_keras_hub", help="a new keras-hub preset directory to write")
    direction.add_argument("--to_hf", help="a new directory to write the workdir's model to")
    parser.add_argument("--workdir", required=True, help="the tfllm workdir (new for --from_hf)")
    parser.add_argument("--shard_gb", type=float, default=5.0, help="--to_hf shard size limit")
    parser.add_argument(
        "--adapter", action="store_true", help="--to_hf of a LoRA run: the adapters alone (PEFT)"
    )
    args = parser.parse_args(argv)
    cli.start(args)
    from tfllm.hub import convert

    if args.from_hf:
        convert.from_hf(args.from_hf, args.workdir)
    elif args.from_keras_hub:
        convert.from_keras_hub(args.from_keras_hub, args.workdir)
    elif args.to_keras_hub:
        convert.to_keras_hub(args.workdir, args.to_keras_hub)
    else:
        convert.to_hf(
            args.workdir, args.to_hf, int(args.shard_gb * (1 << 30)), adapter=args.adapter
        )
    return 0
