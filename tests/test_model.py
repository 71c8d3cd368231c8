"""The model: shapes, causality, tied embeddings, and one call path for cached decoding."""

import dataclasses

import numpy as np
import pytest
from conftest import shape_overrides

from tfllm.config import load_config
from tfllm.model.lm import build_model

# conftest's shape, smaller (the model tests build it many times), over 97 token ids.
SMALL = [
    *shape_overrides(
        vocabulary_size=97, hidden_dim=16, intermediate_dim=24, max_sequence_length=32
    ),
    "data.seq_len=16",
]


@pytest.fixture(scope="module", params=["swiglu", "gelu"])
def model(request):
    return build_model(load_config([], [*SMALL, f"model.activation={request.param}"]).model)


def tokens(batch=2, length=12, seed=0):
    return np.random.default_rng(seed).integers(0, 97, (batch, length)).astype("int32")


def test_output_shape_and_dtype(model):
    logits = model(tokens(3, 12))
    assert tuple(logits.shape) == (3, 12, 97)
    assert logits.dtype == "float32"


def test_changing_token_t_never_changes_logits_before_t(model):
    x = tokens()
    base = np.asarray(model(x))
    for t in (0, 5, 11):
        changed = x.copy()
        changed[:, t] = (changed[:, t] + 1) % 97
        out = np.asarray(model(changed))
        assert np.array_equal(out[:, :t], base[:, :t]), f"logits before {t} changed"
        assert not np.allclose(out[:, t:], base[:, t:]), f"token {t} had no effect"


def test_tied_embeddings():
    model = build_model(load_config([], SMALL).model)
    names = [v.path for v in model.trainable_variables]
    assert sum("embedding" in n for n in names) == 1  # input and output share one matrix
    embedding_params = 97 * 16
    blocks = 2 * (16 * 3 * 16 + 16 * 16 + 16 * 2 * 24 + 24 * 16 + 2 * 16)
    assert model.count_params() == embedding_params + blocks + 16


def test_cached_prefill_and_steps_equal_full_forward(model):
    x = tokens(2, 12)
    full = np.asarray(model(x))
    cache = model.empty_cache(2, 12)
    prefill, cache = model(x[:, :7], cache=cache, cache_index=0)
    steps = [np.asarray(prefill)]
    for t in range(7, 12):
        logits, cache = model(x[:, t : t + 1], cache=cache, cache_index=t)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_a_prefill_asked_for_the_last_logits_only_gives_the_full_forwards_last_row(model):
    x = tokens(2, 12)
    full = np.asarray(model(x))
    last, _ = model(x, cache=model.empty_cache(2, 12), cache_index=0, last_only=True)
    assert last.shape == (2, 1, full.shape[-1])
    np.testing.assert_allclose(np.asarray(last), full[:, -1:], atol=1e-5)


def test_segment_ids_block_attention_across_documents(model):
    x = tokens(1, 10)
    segments = np.array([[0] * 4 + [1] * 6], "int32")
    positions = np.array([list(range(4)) + list(range(6))], "int32")
    packed = np.asarray(model(x, positions=positions, segment_ids=segments))
    alone = np.asarray(model(x[:, 4:]))  # the second document on its own
    np.testing.assert_allclose(packed[:, 4:], alone, atol=1e-5)


def test_a_model_built_to_be_read_has_the_same_variables_and_no_random_draws():
    drawn = build_model(load_config([], SMALL).model)
    to_read = build_model(load_config([], SMALL).model, initialize=False)
    assert [(v.path, v.shape) for v in to_read.weights] == [
        (v.path, v.shape) for v in drawn.weights
    ]
    kernels = [v for v in to_read.weights if "kernel" in v.path]
    assert kernels and all(not np.any(v.numpy()) for v in kernels)
    assert all(np.std(v.numpy()) > 1e-3 for v in drawn.weights if "kernel" in v.path)
    # The switch is scoped to that one build.
    again = build_model(load_config([], SMALL).model)
    assert all(np.any(v.numpy()) for v in again.weights if "kernel" in v.path)


def test_keras_serialization_goes_through_the_model_config(model):
    """get_config is the ModelConfig's fields (plus the parent's keys); from_config rebuilds
    the same dataclass, and a rebuilt model given the weights computes the same logits."""
    config = model.get_config()
    assert config["config"] == dataclasses.asdict(model.config)
    assert config["name"] == model.name
    rebuilt = type(model).from_config(config)
    assert rebuilt.config == model.config and rebuilt.name == model.name
    rebuilt(tokens(1, 2))
    rebuilt.set_weights(model.get_weights())
    np.testing.assert_array_equal(np.asarray(rebuilt(tokens())), np.asarray(model(tokens())))
    for layer in (model.blocks[0], model.blocks[0].attention, model.blocks[0].mlp):
        assert type(layer).from_config(layer.get_config()).config == model.config
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.num_heads = 4  # the model's settings cannot change under it
