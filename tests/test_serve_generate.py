"""Cached decoding against uncached recomputation, bucketing, sampling and request limits."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tiny_run
from commands import run_main

from tfllm.serve import generate
from tfllm.tokenizers.tokenizer import EOS_ID

WIDTH = 28  # padded prompt width, at least the longest prompt (the corpus is tfllm's source)
PROMPTS = ["", "def", "import tensorflow as tf\n", "class Generator:\n    def __init__(self"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run"))


def _prompt_ids(run, prompts):
    return [list(ids) for ids in run.generator._prompt_ids(tf.constant(prompts)).numpy()]


def test_cached_logits_match_uncached(run):
    """Left-padded prefill and three cached steps give each row's uncached logits (1e-5)."""
    model = run.model
    rows = _prompt_ids(run, PROMPTS)
    assert sorted({len(r) for r in rows}) == sorted(len(r) for r in rows)  # several lengths
    padded, start = generate.left_pad(tf.ragged.constant(rows, tf.int32), tf.constant(WIDTH))
    positions = tf.maximum(tf.range(WIDTH)[None, :] - start[:, None], 0)
    cache = model.empty_cache(len(rows), tiny_run.SEQ)
    logits, cache = model(padded, positions=positions, cache=cache, cache_start=start)
    followers = np.array([[7, 300, 41]] * len(rows), np.int32)
    steps = [logits]
    for i in range(3):
        index = WIDTH + i
        step_logits, cache = model(
            followers[:, i : i + 1],
            positions=(index - start)[:, None],
            cache=cache,
            cache_index=index,
            cache_start=start,
        )
        steps.append(step_logits)
    worst = 0.0
    for b, ids in enumerate(rows):
        full = model(tf.constant([ids + list(followers[b])]))[0].numpy()  # (T + 3, V)
        cached = np.concatenate([steps[0][b, WIDTH - len(ids) :]] + [s[b] for s in steps[1:]])
        worst = max(worst, float(np.abs(full - cached).max()))
    print(f"cached vs uncached logits: max abs difference {worst:.2e}")
    assert worst < 1e-5


def test_greedy_tokens_match_uncached(run):
    tokens, lengths = run.generator.generate_ids(PROMPTS, max_new_tokens=10)
    for b, ids in enumerate(_prompt_ids(run, PROMPTS)):
        ids = ids[-(tiny_run.SEQ - 10) :]  # the documented rule: truncate from the left
        expected = []
        for _ in range(10):  # uncached: the whole sequence again for every token
            token = int(tf.argmax(run.model(tf.constant([ids]))[0, -1]))
            expected.append(token)
            ids.append(token)
            if token == EOS_ID:
                break
        assert list(tokens[b].numpy()[: len(expected)]) == expected
        assert int(lengths[b]) == len([t for t in expected if t != EOS_ID])


def test_decode_traces_once_per_bucket(run):
    generator = generate.Generator(run.model, run.tokenizer_path)
    for prompt in ["a", "def f", "import os\n", "x = 1 + 2"]:  # 2..8 ids: one bucket of 8
        assert len(_prompt_ids(run, [prompt])[0]) <= 8
        generator.generate([prompt, "b"], max_new_tokens=4, temperature=0.7, seed=len(prompt))
    generator.generate(["b", "c"], max_new_tokens=6, top_k=3)  # new knobs, same program
    assert generator.traces == 1


def test_sampling_is_seeded_and_filters(run):
    def sample(**options):
        return run.generator.generate_ids(PROMPTS, max_new_tokens=8, **options)[0].numpy()

    first = sample(temperature=1.0, seed=3)
    np.testing.assert_array_equal(first, sample(temperature=1.0, seed=3))
    assert not np.array_equal(first, sample(temperature=1.0, seed=4))
    greedy = sample()
    np.testing.assert_array_equal(greedy, sample(temperature=2.0, top_k=1, seed=5))
    np.testing.assert_array_equal(greedy, sample(temperature=1.0, top_p=1e-6, seed=6))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be in"),
        ({"max_new_tokens": 10**9}, "max_new_tokens must be in"),
        ({"top_k": -1}, "top_k must be in"),
        ({"top_p": 2.0}, "top_p must be in"),
        ({"temperature": -1.0}, "temperature must be in"),
    ],
)
def test_bad_requests_are_user_errors(run, options, message):
    with pytest.raises(generate.GenerationError, match=message):
        run.generator.generate(["def"], **options)


def test_long_prompt_is_truncated_from_the_left(run):
    tokens, _ = run.generator.generate_ids(["x" * 100_000], max_new_tokens=4)
    assert tokens.shape == (1, 4)


def test_command_line(run, capsys):
    argv = ["--workdir", run.workdir, "--prompt", "def", "--prompt", "", "--max_new_tokens", "3"]
    assert run_main("generate", argv) == 0
    expected = run.generator.generate(["def", ""], max_new_tokens=3)
    assert capsys.readouterr().out == f"def{expected[0]}\n{expected[1]}\n"
    assert run_main("generate", [*argv, "--top_p", "0"]) == 2
    assert "top_p must be in" in capsys.readouterr().err
