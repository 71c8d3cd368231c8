"""`python -m tfllm <command>`: the same as the `tfllm` console script."""

from tfllm.commands import main

if __name__ == "__main__":
    main()
