"""A task where a teacher knows more than a student's data shows, by construction, and the
teacher made by tfllm's own prepare and trainer.

The text: lines of the 52 ASCII letters drawn from a Markov chain (each letter's
distribution depends on the one before it) whose 52 rows of probabilities are drawn once from a
Dirichlet(0.3) (a few likely successors per letter, fixed by SEED). The teacher trains on many
lines; the student sees a small slice of other lines, about 30 successors of each letter: from
that slice alone it can estimate the 2,652 free probabilities only roughly (and it overfits
them), while the teacher's distribution at every predicted token hands it close estimates of
the true ones.
"""

from __future__ import annotations

import json
import pathlib
import string

import numpy as np

from tfllm.config import load_config

LETTERS = string.ascii_letters
SEED = 3
LINE = 32  # letters per line
TEACHER_LINES = 6000
STUDENT_LINES = 50
HELD_OUT_LINES = 200
MODEL = [
    "model.num_layers=2",
    "model.hidden_dim=32",
    "model.num_heads=2",
    "model.intermediate_dim=64",
    "model.vocabulary_size=312",  # 256 bytes, 4 specials, 52 letters: a token per letter
    "model.max_sequence_length=64",
]


def chain() -> np.ndarray:
    """(52, 52): row i is the distribution of the letter after letter i."""
    rng = np.random.default_rng(SEED)
    return rng.dirichlet([0.3] * len(LETTERS), size=len(LETTERS))


def lines(count: int, seed: int) -> list[str]:
    probabilities, rng = chain(), np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ids = [rng.integers(0, len(LETTERS))]
        while len(ids) < LINE:
            ids.append(rng.choice(len(LETTERS), p=probabilities[ids[-1]]))
        out.append("".join(LETTERS[i] for i in ids))
    return out


def entropy_bits_per_byte() -> float:
    """The floor: the chain's entropy rate in bits per letter (a byte each), each letter's row
    weighted by its share in long lines (the chain's stationary distribution)."""
    probabilities = chain()
    state = np.full(len(LETTERS), 1.0 / len(LETTERS))
    for _ in range(500):
        state = state @ probabilities
    entropy = -np.sum(probabilities * np.log2(np.maximum(probabilities, 1e-30)), axis=1)
    return float(state @ entropy)


def write_jsonl(path: pathlib.Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def write_task(root: pathlib.Path) -> str:
    """An lm-evaluation-harness task file: bits per byte on held-out lines of the chain."""
    data = write_jsonl(root / "held_out.jsonl", lines(HELD_OUT_LINES, seed=99))
    task = root / "held_out.yaml"
    task.write_text(
        "task: chain_bpb\n"
        f"dataset_path: {data}\n"
        "output_type: loglikelihood_rolling\n"
        "doc_to_target: text\n"
    )
    return str(task)


def teacher_config(root: pathlib.Path, steps: int, *overrides: str):
    source = write_jsonl(root / "teacher.jsonl", lines(TEACHER_LINES, seed=1))
    return load_config(
        overrides=[
            *MODEL,
            "data.seq_len=64",
            f"data.root={root / 'data'}",
            f"data.source={source}",
            "data.name=chain",
            "data.tokenizer_sample_mb=1",
            "data.workers=1",
            f"runtime.workdir={root / 'teacher'}",
            "runtime.strategy=cpu",
            f"train.steps={steps}",
            "train.learning_rate=0.01",
            "train.warmup_steps=20",
            f"train.steps_per_loop={steps}",
            f"train.eval_every={steps}",
            "train.eval_batches=1",
            "train.sample_tokens=4",
            *overrides,
        ]
    )


def student_config():
    """The student: the teacher's shape with one layer instead of two."""
    return load_config(overrides=[*MODEL, "model.num_layers=1", "data.seq_len=64"])


# tfllm.distill keywords of both students' runs (the one on the data alone reuses its config)
STUDENT_RUN = {
    "steps": 200,
    "learning_rate": 0.01,
    "warmup_steps": 10,
    "steps_per_loop": 100,
    "eval_every": 200,
    "eval_batches": 1,
    "sample_tokens": 4,
    "strategy": "cpu",
    "seq_len": 64,
    "val_fraction": 0.1,
    "workers": 1,
}
