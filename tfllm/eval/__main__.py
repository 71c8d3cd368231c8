"""`python -m tfllm.eval`: the `tfllm eval` command (`tfllm.commands.eval`)."""

from tfllm.commands import run_as_main

run_as_main(__name__, "eval")
