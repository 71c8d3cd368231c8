"""`python -m tfllm.export`: the `tfllm export` command (`tfllm.commands.export`)."""

from tfllm.commands import run_as_main

run_as_main(__name__, "export")
