"""What marking every step costs: `Steps.marked_steps` (one `train_step` call per step inside
a profiler step marker, as a run with `runtime.profiler_port` trains) against
`Steps.train_loop` (the graph host loop), in one process on the same model.

    python -m benchmarks marked-steps [--rounds 10] [--quick]

Both run `train.steps_per_loop` (50) steps per call, alternately (A B B A ...), with no
profiler session recording: the price of being ready for a capture. Records each variant's
median tokens/s and the median of the per-round ratios with its spread. `--quick`: tiny only,
5 steps a call.
"""

from __future__ import annotations

from benchmarks import shapes
from benchmarks.common import alternate, paired

STEPS = 50  # train.steps_per_loop's default


def build(size: str, steps: int = STEPS):
    """-> {variant: a function running STEPS steps}, both traced and compiled."""
    import tensorflow as tf

    from tfllm.config import load_config
    from tfllm.model.lm import build_model
    from tfllm.training.optim import make_optimizer
    from tfllm.training.steps import Steps

    shape = shapes.gpt(size)
    cfg = load_config([], shapes.overrides(shape))
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg.model)
    train = Steps(
        cfg,
        tf.distribute.get_strategy(),
        model,
        make_optimizer(cfg.train, model.trainable_variables),
    )
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(shapes.token_batches(shape))).repeat()
    iterator = iter(ds.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(2))
    variants = {
        "train_loop": lambda: int(train.train_loop(iterator, tf.constant(steps))["steps"]),
        "marked_steps": lambda: train.marked_steps(iterator, steps, 1)["steps"],
    }
    for run in variants.values():
        run()  # traces and compiles
    return variants, steps * shapes.tokens_per_step(shape)


def compare(size: str, rounds: int, steps: int = STEPS) -> dict:
    variants, tokens = build(size, steps)
    return paired(alternate(variants, rounds, tokens), "marked_steps", "train_loop")


def case(rounds: int, quick: bool) -> dict:
    figures = {}
    for size in ["tiny"] if quick else ["tiny", "small"]:
        result = compare(size, rounds, 5 if quick else STEPS)
        rates = result["tokens_per_second"]
        figures[size] = {
            "train_loop tok/s": rates["train_loop"],
            "marked_steps tok/s": rates["marked_steps"],
            "paired ratio": {
                "median": result["ratio"],
                "min": result["ratio_min"],
                "max": result["ratio_max"],
            },
        }
    return {"figures": figures, "notes": ["paired ratio: marked_steps / train_loop per round."]}
