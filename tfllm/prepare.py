"""`python -m tfllm.prepare`: the `tfllm prepare` command (`tfllm.commands.prepare`)."""

from tfllm.commands import run_as_main

run_as_main(__name__, "prepare")
