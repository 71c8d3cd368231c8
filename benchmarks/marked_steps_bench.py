"""What marking every step costs: `Steps.marked_steps` (one `train_step` call per step inside
a profiler step marker, as a run with `runtime.profiler_port` trains) against
`Steps.train_loop` (the graph host loop), in one process on the same model.

    PYTHONPATH=. python -m benchmarks.marked_steps_bench [--sizes tiny,small] [--rounds 10]

Both run `train.steps_per_loop` (50) steps per call, alternately (A B B A ...), with no
profiler session recording: the price of being ready for a capture. Prints each variant's
median tokens/s and the median of the per-round ratios with its spread.
"""

from __future__ import annotations

import argparse

from benchmarks.common import alternate, paired
from benchmarks.train_bench import shape_of, tfllm_overrides, token_batches

STEPS = 50  # train.steps_per_loop's default


def build(size: str):
    """-> {variant: a function running STEPS steps}, both traced and compiled."""
    import tensorflow as tf

    from tfllm.config import load_config
    from tfllm.model.lm import build_model
    from tfllm.training.optim import make_optimizer
    from tfllm.training.steps import Steps

    shape = shape_of(size)
    cfg = load_config([], tfllm_overrides(shape, jit_compile=True))
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    steps = Steps(
        cfg,
        tf.distribute.get_strategy(),
        model,
        make_optimizer(cfg.train, model.trainable_variables),
    )
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(token_batches(shape))).repeat()
    iterator = iter(ds.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(2))
    variants = {
        "train_loop": lambda: int(steps.train_loop(iterator, tf.constant(STEPS))["steps"]),
        "marked_steps": lambda: steps.marked_steps(iterator, STEPS, 1)["steps"],
    }
    for run in variants.values():
        run()  # traces and compiles
    return variants, STEPS * shape["batch"] * shape["seq_len"]


def compare(size: str, rounds: int) -> dict:
    variants, tokens = build(size)
    return paired(alternate(variants, rounds, tokens), "marked_steps", "train_loop")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    print("| size | train_loop tok/s | marked_steps tok/s | paired ratio (min-max) |")
    print("|---|---|---|---|")
    for size in args.sizes.split(","):
        result = compare(size, args.rounds)
        rates = result["tokens_per_second"]
        print(
            f"| {size} | {rates['train_loop']:,.0f} | {rates['marked_steps']:,.0f} | "
            f"{result['ratio']:.3f} ({result['ratio_min']:.3f}-{result['ratio_max']:.3f}) |"
        )


if __name__ == "__main__":
    main()
