"""Imported models compute what `transformers` computes: golden values, no PyTorch needed.

tests/golden/make_hf_golden.py ran `transformers` (eager attention, float32) on the tiny
directories of tests/hub_fixtures.py and kept each variant's logits of one prompt and its 10
greedy tokens. Here the same directories go through `tfllm.convert --from_hf` and the workdir's
model (as generate and export read it) must give those logits within 1e-4, and the same greedy
tokens from tfllm's cached decoding (a prefill, then one token per step).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from hub_fixtures import VARIANTS, write_hf_dir

from tfllm.hub import convert
from tfllm.runs.trained import load_trained

GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "hf_golden.json").read_text())


def _greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    cache = model.empty_cache(1, len(prompt) + new_tokens)
    logits, cache = model(np.array([prompt], "int32"), cache=cache, cache_index=0)
    tokens = []
    for i in range(new_tokens):
        tokens.append(int(np.argmax(logits[0, -1])))
        step = np.array([[tokens[-1]]], "int32")
        logits, cache = model(step, cache=cache, cache_index=len(prompt) + i)
    return tokens


def test_the_golden_file_covers_every_variant():
    assert sorted(GOLDEN["variants"]) == sorted(VARIANTS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_imported_model_equals_transformers(variant, tmp_path):
    expected = GOLDEN["variants"][variant]
    write_hf_dir(str(tmp_path / "hf"), variant, "float32")
    convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
    model = load_trained(str(tmp_path / "run")).model
    prompt = GOLDEN["prompt"]
    logits = np.asarray(model(np.array([prompt], "int32")))[0]
    np.testing.assert_allclose(logits, np.array(expected["logits"]), atol=1e-4, rtol=0)
    assert _greedy(model, prompt, len(expected["greedy"])) == expected["greedy"]
