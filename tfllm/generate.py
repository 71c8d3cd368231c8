"""`python -m tfllm.generate`: the `tfllm generate` command (`tfllm.commands.generate`)."""

from tfllm.commands import run_as_main

run_as_main(__name__, "generate")
