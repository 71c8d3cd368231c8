"""What every command shares: --config/--set parsing, the logging flags (--verbose, --quiet,
--log_format, --progress_seconds; `tfllm.logs`), quiet native logging, and one-line errors for
user mistakes.

Nothing here imports TensorFlow: a command parses its flags and calls `start` (or
`config_from_args`, which calls it) before its stage (and TensorFlow) is imported, because
TensorFlow reads its log level once, at import.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable

from tfllm import logs, resources
from tfllm.config import Config, load_config
from tfllm.errors import ConfigError, TfllmError

DEFAULT_CONFIG = "tiny"
# Native lines a healthy CPU run prints: absl-format logs of any level (`I0000 ...`, the
# `E0000 ... failed call to cuInit` of a host without a GPU, oneDNN notes), absl's pre-init
# banner, and SentencePiece's `normalizer.cc(51) LOG(INFO)` notes. Anything else still shows.
_NATIVE_NOISE = re.compile(
    rb"^([IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |WARNING: All log messages before absl::InitializeLog"
    rb"|\S+\.cc\(\d+\) LOG\((INFO|WARNING)\) )"
)
_quiet = False


def make_parser(description: str, config: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    if config:
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
    add_logging_flags(parser)
    return parser


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """--verbose, --quiet, --log_format, --progress_seconds: how every command logs
    (`tfllm.logs`); `start` applies them."""
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "--verbose",
        action="store_true",
        help="debug lines, and TensorFlow's own log lines too (also: TFLLM_VERBOSE=1)",
    )
    loudness.add_argument(
        "--quiet", action="store_true", help="warnings and errors only; results still print"
    )
    parser.add_argument(
        "--log_format",
        choices=logs.FORMATS,
        default=os.environ.get("TFLLM_LOG_FORMAT") or "text",
        help="text (default), or json: one object per line for a log agent "
        "(also: TFLLM_LOG_FORMAT=json)",
    )
    parser.add_argument(
        "--progress_seconds",
        type=float,
        default=logs.PROGRESS_SECONDS,
        metavar="N",
        help="when stderr is not a terminal, one progress line per N seconds "
        f"(default {logs.PROGRESS_SECONDS:g})",
    )


def start(args: argparse.Namespace) -> None:
    """Applies the logging flags: before the command's stage (and TensorFlow) is imported."""
    verbose = getattr(args, "verbose", False)
    level = "verbose" if verbose else "quiet" if getattr(args, "quiet", False) else "normal"
    fmt = getattr(args, "log_format", "text")
    seconds = getattr(args, "progress_seconds", logs.PROGRESS_SECONDS)
    if fmt not in logs.FORMATS:  # from TFLLM_LOG_FORMAT: argparse checks only what is typed
        raise ConfigError(f"log format {fmt!r}: expected one of {', '.join(logs.FORMATS)}")
    if not seconds >= 0:
        raise ConfigError(f"--progress_seconds {seconds}: must be 0 or more")
    logs.configure(level, fmt, seconds)
    quiet_unless(verbose)


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
    start(args)
    overrides = list(args.overrides)
    # The flags win over --set: they are the more specific spelling.
    for key in ("strategy", "tpu"):
        if getattr(args, key, None) is not None:
            overrides.append(f"runtime.{key}={getattr(args, key)}")
    return load_config(args.config or [DEFAULT_CONFIG], overrides)


def quiet_unless(verbose: bool) -> None:
    """Keeps a healthy run to tfllm's own lines, unless `verbose` or TFLLM_VERBOSE=1.

    TensorFlow's C++ log level is raised (a user's own TF_CPP_MIN_LOG_LEVEL wins), the lines
    that native code writes before that level is read are filtered out of file descriptor 2,
    and TensorFlow's and absl's Python loggers show errors only. Python's own stderr (tfllm's
    errors, tracebacks of real bugs) bypasses the filter.
    """
    global _quiet
    if verbose or os.environ.get("TFLLM_VERBOSE", "") not in ("", "0") or _quiet:
        return
    _quiet = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Keras' "Skipping variable loading for optimizer" and friends on a model-only read.
    warnings.filterwarnings("ignore", module=r"keras\..*")
    _filter_native_stderr()


def _filter_native_stderr() -> None:
    """Points fd 2 at a pipe drained by a thread that drops `_NATIVE_NOISE` lines; Python's
    sys.stderr keeps writing to the real stderr directly, so its lines are never delayed."""
    try:
        real = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no usable fd 2 (a detached process): nothing to filter
        return
    sys.stderr.flush()
    sys.stderr = open(real, "w", buffering=1, closefd=False, errors="backslashreplace")
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with open(read_end, "rb") as pipe:
            for line in pipe:
                if not _NATIVE_NOISE.match(line):
                    os.write(real, line)

    thread = threading.Thread(target=forward, name="tfllm-native-stderr", daemon=True)
    thread.start()

    def drain() -> None:  # at exit: close the pipe's write end, let the thread finish
        os.dup2(real, 2)
        thread.join(timeout=2)

    atexit.register(drain)


def check_utf8(argv: list[str]) -> None:
    """Refuses an argument that is not UTF-8 (Python keeps its bytes as surrogates, which fail
    much later, wherever the text is first encoded)."""
    for index, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as err:
            shown = os.fsencode(arg).decode("utf-8", "backslashreplace")  # the bytes as given
            raise TfllmError(
                f"argument {index} ({shown[:60]}) is not valid UTF-8 (byte {err.start}); "
                "pass text in UTF-8"
            ) from None


def run_command(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Runs a command's main; a TfllmError becomes one line on stderr and exit code 2, and so
    does a full disk or exhausted memory that no stage named more precisely."""
    try:
        check_utf8(sys.argv[1:] if argv is None else argv)
        code = main(argv)
    except TfllmError as err:
        logs.end_line()
        print(f"error: {err}", file=sys.stderr)
        code = getattr(err, "exit_code", 2)  # e.g. 3 for a non-finite loss (tfllm.training.faults)
    except Exception as err:
        if not (resources.out_of_space(err) or resources.out_of_memory(err)):
            raise
        logs.end_line()
        cause = "out of disk space" if resources.out_of_space(err) else "out of memory"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(f"error: {cause}: {first}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        logs.end_line()
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
