"""Post-training learns what it should, on the synthetic task of tests/preference_task.py.

DPO: a base trained on "pick y x = y|n" lines (the answer at random) prefers neither answer.
Trained with DPO on pairs that prefer the rule's answer (y when x is among a..e), for letter
pairs that leave out a held-out set of 20 (of 90 ordered) combinations, it must follow the rule
on the held-out combinations: preference accuracy (the policy's log-probability of the chosen
answer above the rejected one's) from at most 0.65 before (a base with no preference: about
0.5) to at least 0.8 after (measured 0.55 -> 0.85 at 100 steps). The greedy answer's agreement
with the rule is measured and printed, not asserted: on this 2-layer, 32-wide base DPO lowers
the rejected answer faster than it raises the chosen one and the freed probability goes to a
third token, so greedy decoding leaves the format (measured 0.55 -> 0.0 at learning rate 1e-2,
0.55 -> 0.45 at 3e-3 with beta 0.5).

Distillation has no learning test yet: on this task (answers drawn at random) the 300-step
base is no better a teacher than a 60-step student is alone (measured: distilled 1.068, alone
0.855, teacher 0.903 held-out bits per byte), so a fair test needs a task where the teacher
knows more than the data shows. Its loss is checked against NumPy in test_training_dpo_golden.
"""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import tensorflow as tf
from preference_task import LETTERS, pair_of, prompt, rule, trained_base

import tfllm
from tfllm.runs.trained import load_trained
from tfllm.tokenizers.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow
COMBOS = list(itertools.permutations(LETTERS, 2))
HELD_OUT = set(random.Random(5).sample(COMBOS, 20))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("learning")
    return root, trained_base(root)


def test_answers_are_tokenized_alike(base):
    """The task's precondition: both answers are one token after the prompt's last one."""
    trained = load_trained(base[1])
    tokenizer = load_tokenizer(trained.tokenizer_path)
    lengths = {len(tokenizer.tokenize(prompt("b", "g") + a).numpy()) for a in ("y", "n")}
    assert lengths == {len(tokenizer.tokenize(prompt("b", "g")).numpy()) + 1}


def preference_accuracy(trained) -> float:
    """Share of held-out combinations where log p(chosen) > log p(rejected), with the prompt as
    DPO's text pairs give it (tfllm's EOS in front)."""
    tokenizer = load_tokenizer(trained.tokenizer_path)
    wins = []
    for x, y in sorted(HELD_OUT):
        ids = [2, *tokenizer.tokenize(prompt(x, y)).numpy().tolist()]
        scores = []
        pair = pair_of(x, y)
        for answer in (pair["chosen"], pair["rejected"]):
            tokens = ids + tokenizer.tokenize(answer).numpy().tolist() + [2]
            logits = trained.model(tf.constant([tokens[:-1]]))[0]
            logp = tf.nn.log_softmax(logits, -1).numpy()
            scores.append(sum(logp[i, tokens[i + 1]] for i in range(len(ids) - 1, len(tokens) - 1)))
        wins.append(scores[0] > scores[1])
    return float(np.mean(wins))


def greedy_agreement(trained) -> float:
    prompts = [prompt(x, y) for x, y in sorted(HELD_OUT)]
    answers = tfllm.generate(trained, prompts, max_new_tokens=2)
    expected = [rule(x) for x, _ in sorted(HELD_OUT)]
    agree = [a.split()[:1] == [e] for a, e in zip(answers, expected, strict=True)]
    return float(np.mean(agree))


def test_dpo_learns_the_preference(base):
    root, workdir = base
    rng = random.Random(7)
    train = [c for c in COMBOS if c not in HELD_OUT]
    with open(root / "train_pairs.jsonl", "w") as f:
        for _ in range(400):
            f.write(json.dumps(pair_of(*rng.choice(train))) + "\n")
    before = load_trained(workdir)
    accuracy_before, greedy_before = preference_accuracy(before), greedy_agreement(before)
    run = tfllm.dpo(
        workdir,
        data=str(root / "train_pairs.jsonl"),
        workdir=str(root / "dpo"),
        lora_rank=8,
        lora_targets="q,k,v,o,gate,up,down",
        steps=100,
        learning_rate=1e-2,
        beta=0.5,
        global_batch_size=16,
        seq_len=16,
        steps_per_loop=20,
        eval_every=60,
        eval_batches=1,
        sample_tokens=2,
        strategy="cpu",
    )
    after = run.trained
    accuracy_after, greedy_after = preference_accuracy(after), greedy_agreement(after)
    print(
        f"held-out preference accuracy {accuracy_before:.2f} -> {accuracy_after:.2f}, "
        f"greedy agreement {greedy_before:.2f} -> {greedy_after:.2f}"
    )
    assert accuracy_before <= 0.65
    assert accuracy_after >= 0.8
