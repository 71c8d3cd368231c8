"""Train (or resume) a decoder-only LM under a tf.distribute strategy.

`tfllm train`, or `python -m tfllm.train`:

    tfllm train [--config FILE ...] [--set section.key=value ...]
                          [--strategy auto|cpu|gpu|mirrored|multiworker|tpu] [--tpu NAME]
                          [--verbose]

With no arguments it trains `configs/tiny.yaml` on the built-in corpus (the running Python's
standard library), preparing the shards first when they are missing. Running it again on the
same workdir resumes from the latest checkpoint. The loop is `tfllm.training.loop`; exit codes
are listed in `tfllm/training/faults.py` and the README.
"""

from __future__ import annotations

import math
import time

from tfllm import cli, logs


def main(argv: list[str] | None = None) -> int:
    parser = cli.make_parser(__doc__.splitlines()[0])
    cli.add_strategy_flags(parser)
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    from tfllm.corpus.prepare import prepare  # after the flags: --verbose decides TF's logging
    from tfllm.training import faults, loop

    started = time.time()
    result = loop.train(cfg, build_data=prepare)
    if result.get("preempted"):
        code = faults.exit_code_for(result["preempted"])
        logs.output(
            f"stopped by signal {result['preempted']} at step {result['step']}: exit {code}"
        )
        return code
    logs.output(
        f"done: step {result['step']}, validation loss {result['val_loss']:.4f} "
        f"(ln V = {math.log(result['vocabulary_size']):.2f}) in {time.time() - started:.0f}s"
    )
    return 0
