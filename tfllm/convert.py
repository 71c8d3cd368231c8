"""`python -m tfllm.convert`: the `tfllm convert` command (`tfllm.commands.convert`)."""

from tfllm.commands import run_as_main

run_as_main(__name__, "convert")
