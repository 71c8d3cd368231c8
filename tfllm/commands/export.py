"""Write a TF Serving model version (or a LiteRT / ONNX model) from a workdir.

`tfllm export`, or `python -m tfllm.export`:

    tfllm export --workdir DIR --export_dir export/NAME [--version N] [--verbose]
        [--quantize none|int8] [--format saved_model|litert|onnx]
        [--batch 1] [--prefill_length 64] [--cache_length S]

Writes `export/NAME/<version>/` (the next integer by default). saved_model: saved_model.pb,
variables/, assets/ (config.yaml, tokenizer.model, with int8 quantization.json) and
assets.extra/ (tf_serving_warmup_requests, batching_parameters.pbtxt); stage
`tfllm.serve.export`, signatures `tfllm.serve.module` and `tfllm.serve.batching`. litert:
model.tflite, tokenizer.model, tokens.json (`tfllm.serve.litert`; --batch, --prefill_length
and --cache_length fix its shapes). onnx: logits.onnx, decode.onnx, tokenizer.model,
tokens.json (`tfllm.serve.onnx`, needs `pip install tfllm[onnx]`).
"""

from __future__ import annotations

from tfllm import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], config=False)
    parser.add_argument("--workdir", required=True, help="training workdir (config, checkpoints)")
    parser.add_argument("--export_dir", required=True, help="model base path, e.g. export/NAME")
    parser.add_argument("--version", type=int, default=None, help="default: the next integer")
    parser.add_argument(
        "--format", default="saved_model", choices=["saved_model", "litert", "onnx"]
    )
    parser.add_argument(
        "--quantize", default="none", choices=["none", "int8"], help="int8: weight-only int8"
    )
    parser.add_argument("--batch", type=int, default=1, help="litert: static batch size")
    parser.add_argument("--prefill_length", type=int, default=64, help="litert: prompt bucket")
    parser.add_argument(
        "--cache_length", type=int, default=None, help="litert/onnx: KV cache slots (default S)"
    )
    args = parser.parse_args(argv)
    cli.start(args)
    if args.format == "litert":
        from tfllm.serve import litert

        litert.export_litert(
            args.workdir,
            args.export_dir,
            args.version,
            batch=args.batch,
            prefill_length=args.prefill_length,
            cache_length=args.cache_length,
            quantize_weights=args.quantize,
        )
    elif args.format == "onnx":
        from tfllm.serve import onnx

        onnx.export_onnx(
            args.workdir, args.export_dir, args.version, cache_length=args.cache_length
        )
    else:
        from tfllm.serve import export

        export.export(args.workdir, args.export_dir, args.version, args.quantize)
    return 0
