"""Sample text from a trained workdir with the model's KV cache.

`tfllm generate`, or `python -m tfllm.generate`:

    tfllm generate --workdir DIR --prompt TEXT [--prompt TEXT ...] [--max_new_tokens N]
        [--temperature T] [--top_k K] [--top_p P] [--seed S] [--verbose]
    tfllm generate --workdir DIR --chat '[{"role": "user", "content": "Hi"}]' [...]

Reads the newest usable checkpoint of DIR (as training would restore it) and prints each prompt
followed by its completion. Decoding and the prompt rule: `tfllm.serve.generate`. `--chat`
takes a JSON list of messages, renders it with the chat template the workdir's data used
(`tfllm.serve.chat`) and prints the reply, cut at the template's end-of-turn marker.
"""

from __future__ import annotations

from tfllm import cli, logs


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0], config=False)
    parser.add_argument("--workdir", required=True, help="training workdir (config, checkpoints)")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--prompt", action="append", help="repeatable")
    given.add_argument("--chat", help='JSON messages: [{"role": "user", "content": "..."}]')
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default 64")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=0, help="0 = no top-k filter")
    parser.add_argument("--top_p", type=float, default=1.0, help="1 = no nucleus filter")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cli.start(args)
    from tfllm.runs.trained import load_trained
    from tfllm.serve import chat
    from tfllm.serve.generate import Generator

    trained = load_trained(args.workdir)
    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
    }
    if args.chat is not None:
        logs.output(chat.chat_completion(trained, chat.parse_messages(args.chat), **options))
        return 0
    generator = Generator(trained.model, trained.tokenizer_path)
    completions = generator.generate(args.prompt, **options)
    for prompt, completion in zip(args.prompt, completions, strict=True):
        logs.output(prompt + completion)
    return 0
