"""`python -m tfllm.train`: the `tfllm train` command (`tfllm.commands.train`)."""

from tfllm.commands import run_as_main

run_as_main(__name__, "train")
