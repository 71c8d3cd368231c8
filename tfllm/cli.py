"""What every command shares: --config/--set parsing and one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from tfllm.config import Config, load_config
from tfllm.errors import TfllmError

DEFAULT_CONFIG = "tiny"


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML overlay (repeatable, applied in order); a path or a name in configs/. "
        f"Default: {DEFAULT_CONFIG}",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable, applied after the files)",
    )
    return parser


def add_strategy_flags(parser: argparse.ArgumentParser) -> None:
    """--strategy and --tpu: shorthands for --set runtime.strategy=... / runtime.tpu=..., for
    every command that runs the model."""
    parser.add_argument(
        "--strategy",
        help="auto | cpu | gpu | mirrored | multiworker | tpu (default: the config's "
        "runtime.strategy, auto)",
    )
    parser.add_argument(
        "--tpu",
        help="TPU name, grpc://HOST:PORT, or 'local' on a TPU VM (default: $TPU_NAME)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    # The flags win over --set: they are the more specific spelling.
    for key in ("strategy", "tpu"):
        if getattr(args, key, None) is not None:
            overrides.append(f"runtime.{key}={getattr(args, key)}")
    return load_config(args.config or [DEFAULT_CONFIG], overrides)


def run_command(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Runs a command's main; a TfllmError becomes one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except TfllmError as err:
        print(f"error: {err}", file=sys.stderr)
        code = getattr(err, "exit_code", 2)  # e.g. 3 for a non-finite loss (tfllm.faults)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
