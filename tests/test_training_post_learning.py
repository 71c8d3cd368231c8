"""Post-training learns what it should, on synthetic tasks where the answer is known.

DPO (tests/preference_task.py): a base trained on "pick y x = y|n" lines (the answer at random)
prefers neither answer. Trained with DPO on pairs that prefer the rule's answer (y when x is
among a..e), for letter pairs that leave out a held-out set of 20 (of 90 ordered) combinations,
it must follow the rule on the held-out combinations: preference accuracy (the policy's
log-probability of the chosen answer above the rejected one's) from at most 0.65 before (a base
with no preference: about 0.5) to at least 0.8 after, and the greedy answer must agree with the
rule on at least 0.8 of them and 0.3 more than before (measured 0.45 -> 1.00 for both).

The run adds the SFT term (`dpo_sft_weight` 1, RPO). Without it DPO alone reached accuracy 1.0
while greedy agreement fell to 0.0, at every setting tried (sigmoid with beta 0.1 to 5 and
learning rates 1e-3 to 1e-2, ipo with beta 0.25): the probability of both answers fell and the
greedy token became " " or "=" (likelihood displacement, Razin et al. 2024). This task is its
worst case by construction: the base learned "y" and "n" as interchangeable, so their output
embeddings are nearly equal (cosine 0.97 in the base), and separating them moves the last hidden
state (of fixed norm after the final RMSNorm) away from the direction both answers share. The
SFT term keeps the chosen answer's likelihood up while DPO separates the pair.

Distillation (tests/distill_task.py): a teacher trained 300 steps by `tfllm.train` on 6,000
lines of a 52-letter Markov chain; two 1-layer students trained 200 steps with the same seed
and data, 50 other lines of the chain (about 30 successors of each letter): one with the teacher
(alpha 0.9, T 1), one on the data alone. Held-out bits per byte, by tfllm's eval on 200 other
lines: the distilled student must beat the one alone by at least 0.3 (10 runs, medians: distilled
5.14, alone 6.21, teacher 4.77, the chain's entropy rate 4.24; the margin 0.50 to 1.80). The
student alone memorizes its 50 lines (training loss below the chain's entropy rate) and gets
worse on new ones; the teacher's distribution at every token tells the distilled one what the
lines do not.
"""

from __future__ import annotations

import itertools
import json
import random

import distill_task
import numpy as np
import pytest
import tensorflow as tf
from preference_task import LETTERS, pair_of, prompt, rule, trained_base

import tfllm
from tfllm.config import load_config
from tfllm.eval.engine import model_engine
from tfllm.eval.run import evaluate, load_tasks
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
        dpo_sft_weight=1.0,
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
    assert greedy_after >= 0.8 and greedy_after >= greedy_before + 0.3


def held_out_bits_per_byte(workdir: str, task: str) -> float:
    trained = load_trained(workdir)
    rows = evaluate(model_engine(trained.model, trained.tokenizer_path), load_tasks(task))
    return next(row["value"] for row in rows if row["metric"] == "bits_per_byte")


def test_distilled_student_beats_the_same_student_on_data_alone(tmp_path):
    task = distill_task.write_task(tmp_path)
    teacher = distill_task.teacher_config(tmp_path, steps=300)
    tfllm.train(teacher)
    lines = distill_task.lines(distill_task.STUDENT_LINES, seed=2)
    data = distill_task.write_jsonl(tmp_path / "student.jsonl", lines)
    distilled = tfllm.distill(
        teacher.runtime.workdir,
        distill_task.student_config(),
        data=data,
        workdir=str(tmp_path / "distilled"),
        alpha=0.9,
        temperature=1.0,
        **distill_task.STUDENT_RUN,
    )
    # The same run without the teacher: same config, seed, data and steps.
    alone = load_config(
        [f"{distilled.workdir}/config.yaml"],
        ["train.distill_from=", f"runtime.workdir={tmp_path / 'alone'}"],
    )
    tfllm.train(alone)
    bpb = {
        name: held_out_bits_per_byte(workdir, task)
        for name, workdir in [
            ("teacher", teacher.runtime.workdir),
            ("distilled", distilled.workdir),
            ("alone", alone.runtime.workdir),
        ]
    }
    print(
        "held-out bits per byte: "
        + ", ".join(f"{name} {value:.3f}" for name, value in bpb.items())
        + f"; the chain's entropy rate {distill_task.entropy_bits_per_byte():.3f}"
    )
    assert bpb["teacher"] < bpb["alone"]  # the precondition: the teacher knows more
    assert bpb["distilled"] <= bpb["alone"] - 0.3
