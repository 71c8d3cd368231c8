"""Imported open-weight models compute what keras-hub computes from the same HF directory.

Each family's tiny random directory (tests/hub_fixtures.py: 4 query / 2 key-value heads,
head_dim != hidden / heads where keras-hub supports it, tied and untied heads, Llama 3.1 rope
scaling, rope_scaling and rope_parameters configs) goes through `tfllm.convert --from_hf`; the
workdir's model (read by `load_trained`, as generate and export read it) must give keras-hub's
float32 logits within 1e-4 on prompts of several lengths, with and without the KV cache.
"""

from __future__ import annotations

import numpy as np
import pytest
from hub_fixtures import VARIANTS, cached_logits, write_hf_dir

from tfllm.hub import convert
from tfllm.runs.trained import load_trained

keras_hub = pytest.importorskip("keras_hub")


def _keras_hub_logits(directory, ids):
    backbone = keras_hub.models.Backbone.from_preset(directory)
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return np.asarray(backbone.token_embedding(hidden, reverse=True))  # Gemma 2 caps here


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_imported_logits_equal_keras_hub(variant, tmp_path):
    # keras-hub's mistral converter rounds tensors to float16: the file holds float16 values.
    dtype = "float16" if variant == "mistral" else "float32"
    write_hf_dir(str(tmp_path / "hf"), variant, dtype)
    convert.from_hf(str(tmp_path / "hf"), str(tmp_path / "run"))
    model = load_trained(str(tmp_path / "run")).model
    rng = np.random.default_rng(1)
    for length in (1, 6, 11):
        ids = rng.integers(0, 128, (2, length)).astype("int32")
        expected = _keras_hub_logits(str(tmp_path / "hf"), ids)
        np.testing.assert_allclose(np.asarray(model(ids)), expected, atol=1e-4, rtol=0)
        if length > 1:
            cached = cached_logits(model, ids, prefill=length // 2)
            np.testing.assert_allclose(cached, expected, atol=1e-4, rtol=0)
