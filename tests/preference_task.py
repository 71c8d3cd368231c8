"""A synthetic preference task and the tiny base models the post-training tests start from,
made by tfllm's own prepare, trainer and checkpointer.

The task: "pick y x =" with two different letters of a..j; the preferred answer is " y" (yes)
when the last letter x is among a..e, else " n" (no); y does not matter. The base corpus holds
the same lines with either answer picked at random, so a base that learned the format answers
y or n and prefers neither. (One letter each, so both answers are tokenized alike: with the
words yes and no, the tiny tokenizer makes one piece of " no" and four of " yes", and DPO can
then win by lowering the later pieces of " yes" alone.)
"""

from __future__ import annotations

import json
import pathlib
import random

import numpy as np

from tfllm.config import load_config, save_config
from tfllm.corpus import prepare
from tfllm.model.lm import build_model
from tfllm.training.optim import make_optimizer
from tfllm.training.session import make_checkpointer, new_counters

LETTERS = "abcdefghij"
SEQ = 16
MODEL = [
    "model.num_layers=2",
    "model.hidden_dim=32",
    "model.num_heads=2",
    "model.intermediate_dim=64",
    "model.vocabulary_size=276",  # byte fallback's 256 and 20 pieces: " y", " n" split alike
    "model.max_sequence_length=32",
]


def rule(x: str) -> str:
    """The preferred answer to "pick y x =": y for x in a..e, n for f..j."""
    return "y" if x < "f" else "n"


def prompt(x: str, y: str) -> str:
    return f"pick {y} {x} ="


def pair_of(x: str, y: str) -> dict:
    preferred = rule(x)
    other = "n" if preferred == "y" else "y"
    return {"prompt": prompt(x, y), "chosen": preferred, "rejected": other}


def pair(rng: random.Random) -> dict:
    return pair_of(*rng.sample(LETTERS, 2))


def write_pairs(path: pathlib.Path, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    pairs = [pair(rng) for _ in range(count)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return pairs


def base_config(root: pathlib.Path, name: str, *overrides: str):
    corpus = root / "corpus"
    if not corpus.exists():  # one JSON Lines record per line: EOS around each, as in DPO pairs
        corpus.mkdir(parents=True)
        rng = random.Random(0)
        for k in range(3):
            with open(corpus / f"{k}.jsonl", "w") as f:
                for _ in range(1000):
                    p = pair(rng)
                    text = p["prompt"] + rng.choice([p["chosen"], p["rejected"]])
                    f.write(json.dumps({"text": text}) + "\n")
    return load_config(
        overrides=[
            *MODEL,
            "data.seq_len=32",
            f"data.root={root / 'data'}",
            f"data.source={corpus}",
            "data.name=base",
            "data.tokenizer_sample_mb=1",
            "data.workers=1",
            f"runtime.workdir={root / name}",
            "runtime.strategy=cpu",
            "train.eval_batches=1",
            "train.sample_tokens=4",
            "train.steps_per_loop=50",
            *overrides,
        ]
    )


def random_base(root: pathlib.Path, name: str = "base", seed: int = 0) -> str:
    """A base workdir with random weights at step 0 (no training): quick, for the invariant
    and parity tests."""
    cfg = base_config(root, name)
    prepare.ensure_prepared(cfg)
    workdir = pathlib.Path(cfg.runtime.workdir)
    workdir.mkdir(parents=True)
    save_config(cfg, str(workdir / "config.yaml"))
    model = build_model(cfg.model)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, 0.2, variable.shape).astype("float32"))
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    make_checkpointer(cfg, model, optimizer, new_counters()).save(0)
    return str(workdir)


def random_task(root: pathlib.Path) -> tuple[pathlib.Path, str]:
    """(root, base): a random base model and 120 preference pairs in `root/pairs.jsonl`, the
    shared starting point of the DPO tests."""
    base = random_base(root)
    write_pairs(root / "pairs.jsonl", 120, seed=1)
    return root, base


def trained_base(root: pathlib.Path, name: str = "trained", steps: int = 300) -> str:
    """A base trained on the corpus: it writes the format, with no preference between the
    two letters."""
    from tfllm.training import loop

    cfg = base_config(
        root, name, f"train.steps={steps}", "train.learning_rate=0.01", "train.warmup_steps=10"
    )
    loop.train(cfg, build_data=prepare.prepare)
    return cfg.runtime.workdir


def dpo_options(root: pathlib.Path, **changes) -> dict:
    """tfllm.dpo keywords for a short run on the task's pairs."""
    return {
        "seq_len": SEQ,
        "global_batch_size": 8,
        "steps_per_loop": 1,
        "eval_batches": 1,
        "eval_every": 1000,
        "checkpoint_every": 1000,
        "sample_tokens": 2,
        "strategy": "cpu",
        "val_fraction": 0.1,
        **changes,
    }
