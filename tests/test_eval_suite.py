"""The built-in suite separates a tiny trained model from a random one on every task kind
(bits per byte, multiple choice, generate_until); `train.eval_tasks`
puts the metrics in TensorBoard next to the validation loss."""

from __future__ import annotations

import math
import pathlib

import pytest
import tensorflow as tf

from tfllm.eval import engine, run
from tfllm.model.lm import build_model

pytestmark = pytest.mark.slow  # trains 300 steps


def val_scalars(workdir) -> dict[str, float]:
    values = {}
    for path in (workdir / "val").glob("events*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values[value.tag] = float(tf.make_ndarray(value.tensor))
    return values


def test_trained_tiny_model_beats_a_random_one_on_the_builtin_suite(trained_workdir):
    cfg = trained_workdir  # trained with train.eval_tasks=stdlib
    trained = val_scalars(pathlib.Path(cfg.runtime.workdir))
    assert "loss/cross_entropy" in trained and "next_line/acc" in trained

    tf.keras.utils.set_random_seed(0)
    fresh = build_model(cfg.model)
    tokenizer = f"{cfg.data.root}/{cfg.data.name}/tokenizer.model"
    # The first 64 documents of each task: a random model is at chance on any of them.
    tasks = run.load_tasks("stdlib")
    rows = run.evaluate(engine.model_engine(fresh, tokenizer), tasks, limit=64)
    random = {f"{r['task']}/{r['metric']}": r["value"] for r in rows}
    print("trained:", {k: round(v, 4) for k, v in trained.items() if "/" in k})
    print("random: ", {k: round(v, 4) for k, v in random.items()})
    # A random model spreads probability evenly: about log2(V) bits per token.
    assert random["stdlib_bpb/bits_per_byte"] > 0.9 * math.log2(cfg.model.vocabulary_size) / 4
    for task in ("stdlib_bpb", "english_bpb"):
        assert trained[f"{task}/bits_per_byte"] < 0.8 * random[f"{task}/bits_per_byte"]
    # Multiple choice against reordered words: chance is 0.25.
    assert random["next_line/acc"] < 0.35 and trained["next_line/acc"] > 0.45
    # Indentation of the next line: a third each at 4, 8, 12 spaces.
    assert random["next_indent/exact_match"] < 0.05 and trained["next_indent/exact_match"] > 0.25
    # The rest of a line needs a larger model: both score (about) 0.
    assert random["code_completion/exact_match"] < 0.05
