"""`python -m tfllm.serve`: an OpenAI-compatible HTTP server with continuous batching.

    python -m tfllm.serve --workdir DIR | --export PATH [--host 127.0.0.1] [--port 8000]
        [--slots 16] [--cache_len N] [--prefill_chunk 256] [--max_queue 64] [--name NAME]
        [--shutdown_timeout 30] [--xla] [--verbose | --quiet] [--log_format json]

Serves the newest usable checkpoint of a workdir (a LoRA run merged) or an export (a version
directory, or a base path: its newest version): /v1/completions, /v1/chat/completions,
/v1/models, vLLM's /tokenize, /detokenize and /tokenizer_info, /health, /metrics, and a chat
page at /. Needs `pip install tfllm[serve]`. The server: `tfllm.server`; docs/server.md.
"""

from __future__ import annotations

from tfllm import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], config=False)
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--workdir", help="training workdir (config, checkpoints)")
    given.add_argument("--export", help="an exported SavedModel, or its base path (newest)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--slots", type=int, default=16, help="sequences decoded together")
    parser.add_argument("--cache_len", type=int, default=0, help="default max_sequence_length")
    parser.add_argument(
        "--prefill_chunk",
        type=int,
        default=256,
        help="prompt tokens prefilled between two decode steps (0: every admitted prompt)",
    )
    parser.add_argument("--max_queue", type=int, default=64, help="waiting sequences, then 429")
    parser.add_argument("--name", default="", help="model id (default: the directory's name)")
    parser.add_argument("--shutdown_timeout", type=float, default=30.0, help="seconds")
    parser.add_argument("--xla", action="store_true", help="compile the decode step with XLA")
    args = parser.parse_args(argv)
    cli.start(args)
    try:
        from tfllm.server.run import ServerOptions, serve
    except ImportError as err:
        raise cli.TfllmError(f"{err.name} is missing: pip install tfllm[serve]") from None
    options = ServerOptions(
        host=args.host,
        port=args.port,
        slots=args.slots,
        cache_len=args.cache_len,
        prefill_chunk=args.prefill_chunk,
        max_queue=args.max_queue,
        name=args.name,
        shutdown_timeout=args.shutdown_timeout,
        xla=args.xla,
    )
    return serve(args.workdir, args.export, options)


if __name__ == "__main__":
    cli.run_command(main)
