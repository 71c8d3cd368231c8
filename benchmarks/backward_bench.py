"""tfllm's hand-written backward passes against TensorFlow's own differentiation of the same
forward pass, side by side in one process.

    python -m benchmarks backward [--rounds 16] [--quick]

On CPU, training uses a hand-written backward pass for the attention core
(`tfllm.model.attention.attend_for_training`) and for the projections' weight gradients
(`tfllm.model.projections._trained_matmul`). Here both variants of `Steps.train_loop` are built and
traced in one process, from the same initial weights, then timed alternately (A B B A ...), so
that the machine's slow spells fall on both. Prints each variant's median tokens/s and the
median of the per-round ratios with its spread; the losses of the third step must agree (the
same gradients), and are recorded too. `--quick`: the tiny shape only.
"""

from __future__ import annotations

import contextlib

from benchmarks import shapes
from benchmarks.common import alternate, paired
from benchmarks.train_bench import run_tfllm

STEPS = {"tiny": 20, "small": 4}  # about 0.7 and 1.5 s a round here


@contextlib.contextmanager
def autodiff_only():
    """While the train step is traced inside this block, TensorFlow differentiates the forward
    pass itself: the attention core and the projections lose their hand-written gradients."""
    from tfllm.model import attention, layers, projections

    saved = attention.attend_for_training, layers.dense, projections.dense

    def plain_dense(x, kernel, training=False):
        return saved[2](x, kernel)

    attention.attend_for_training = attention.attend
    layers.dense = projections.dense = plain_dense
    try:
        yield
    finally:
        attention.attend_for_training, layers.dense, projections.dense = saved


def build(size: str, steps: int, hand_written: bool):
    """-> (the loss of the third step, which two updates shaped; a function running `steps`
    steps)."""
    with contextlib.nullcontext() if hand_written else autodiff_only():
        first, many = run_tfllm(shapes.gpt(size), steps)
        first()  # traces (and compiles) with the variant in place
    first()
    return first(), many


def compare(size: str, rounds: int) -> dict:
    steps = STEPS[size]
    tokens = steps * shapes.tokens_per_step(shapes.gpt(size))
    variants = {"hand-written": build(size, steps, True), "autodiff": build(size, steps, False)}
    rates = alternate({name: run for name, (_, run) in variants.items()}, rounds, tokens)
    return {
        "size": size,
        "third_step_losses": {name: v[0] for name, v in variants.items()},
        **paired(rates, "hand-written", "autodiff"),
    }


def case(rounds: int, quick: bool) -> dict:
    figures, notes = {}, []
    for size in ["tiny"] if quick else ["tiny", "small"]:
        result = compare(size, rounds)
        rates, losses = result["tokens_per_second"], result["third_step_losses"]
        figures[size] = {
            "hand-written tok/s": rates["hand-written"],
            "autodiff tok/s": rates["autodiff"],
            "paired ratio": {
                "median": result["ratio"],
                "min": result["ratio_min"],
                "max": result["ratio_max"],
            },
            "step-3 loss, hand-written": f"{losses['hand-written']:.6f}",
            "step-3 loss, autodiff": f"{losses['autodiff']:.6f}",
        }
    notes.append("paired ratio: hand-written / autodiff per round, median (min-max).")
    return {"figures": figures, "notes": notes}
