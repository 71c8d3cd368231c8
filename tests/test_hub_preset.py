"""keras-hub preset directories import as their family (`tfllm.convert --from_keras_hub`).

Each tiny random preset (tests/keras_hub_presets.py, saved by keras-hub's `save_to_preset`)
goes through the command; the workdir's model must give the backbone's float32 logits within
1e-4 on prompts of several lengths, with and without the KV cache.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from commands import run_main
from hub_fixtures import cached_logits
from keras_hub_presets import PRESETS, write_preset

from tfllm.hub import convert
from tfllm.runs.trained import load_trained

keras_hub = pytest.importorskip("keras_hub")


def _logits(backbone, ids):
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return np.asarray(backbone.token_embedding(hidden, reverse=True))


@pytest.mark.parametrize("variant", sorted(PRESETS))
def test_preset_logits_equal_keras_hub(variant, tmp_path):
    backbone = write_preset(str(tmp_path / "preset"), variant)
    convert.from_keras_hub(str(tmp_path / "preset"), str(tmp_path / "run"))
    model = load_trained(str(tmp_path / "run")).model
    rng = np.random.default_rng(1)
    for length in (1, 6, 11):
        ids = rng.integers(0, 128, (2, length)).astype("int32")
        expected = _logits(backbone, ids)
        np.testing.assert_allclose(np.asarray(model(ids)), expected, atol=1e-4, rtol=0)
        if length > 1:
            cached = cached_logits(model, ids, prefill=length // 2)
            np.testing.assert_allclose(cached, expected, atol=1e-4, rtol=0)


TEXTS = [
    "Hello world, it's 2024 and we're here.",
    "def f(x):\n    return x  +  1\n\n\tindented",
    "café naïve 日本語のテキスト 🙂👍🏽 emoji   end  ",
]


def test_preset_tokenizers_equal_their_families(tmp_path):
    """A BPE (Llama 3) and a SentencePiece (Gemma) preset tokenizer: the workdir's in-graph
    tokenizer gives the family's Hugging Face ids (the `tokenizers` file the preset's vocabulary
    and merges come from), Llama 3's BOS in front of a prompt and its two stop ids. keras-hub's
    own eager Llama3Tokenizer agrees on prose only: it hands its split pattern to
    `tokenizers.pre_tokenizers.Split` as a literal string, so it never splits and merges
    across whitespace runs."""
    from hf_tokenizer_files import write_tokenizer
    from keras_hub_presets import write_gemma_tokenizer, write_llama3_tokenizer
    from tokenizers import Tokenizer

    from tfllm.tokenizers.hf_tokenizer import load_hf_tokenizer

    source = write_tokenizer(tmp_path / "tok", "llama3")
    llama3 = tmp_path / "llama3"
    write_preset(str(llama3), "llama3", vocabulary_size=602)
    keras_tokenizer = write_llama3_tokenizer(str(llama3), source)
    workdir = tmp_path / "runs" / "llama3"
    argv = ["--from_keras_hub", str(llama3), "--workdir", str(workdir)]
    assert run_main("convert", argv) == 0
    tok = load_hf_tokenizer(load_trained(str(workdir)).tokenizer_path)
    reference = Tokenizer.from_file(str(source / "tokenizer.json"))
    ids = [reference.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert tok.tokenize(TEXTS).to_list() == ids and max(map(len, ids)) > 10
    assert ids[0] == list(np.asarray(keras_tokenizer(TEXTS[0])))
    assert tok.encode(TEXTS).to_list() == [reference.encode(t).ids for t in TEXTS]
    assert tok.encode(TEXTS[:1]).to_list()[0][0] == keras_tokenizer.start_token_id
    eot = keras_tokenizer.token_to_id("<|eot_id|>")
    assert tok.eos_ids == (keras_tokenizer.end_token_id, eot)
    decoded = tok.detokenize(tf.ragged.constant(ids, tf.int32)).numpy()
    assert [d.decode() for d in decoded] == TEXTS

    gemma = tmp_path / "gemma"
    write_preset(str(gemma), "gemma", vocabulary_size=500)
    expected = write_gemma_tokenizer(str(gemma))
    convert.from_keras_hub(str(gemma), str(tmp_path / "runs" / "gemma"))
    tok = load_hf_tokenizer(str(tmp_path / "runs" / "gemma" / "hf" / "tokenizer.model"))
    assert tok.tokenize(TEXTS).to_list() == [list(np.asarray(expected(t))) for t in TEXTS]
    assert (tok.bos_id, tok.eos_ids) == (2, (1,))


def _break(preset, case):
    config_path = preset / "config.json"
    spec = json.loads(config_path.read_text())
    if case == "no_config":
        config_path.unlink()
        return
    if case == "hf_dir":
        del spec["registered_name"]
    elif case == "class":
        spec["registered_name"] = "keras_hub>FalconBackbone"
    elif case == "no_weights":
        (preset / "model.weights.h5").unlink()
    elif case == "bad_weights":
        (preset / "model.weights.h5").write_bytes(b"not an h5 file")
    elif case == "unknown_key":
        spec["config"]["partial_rotary_factor"] = 0.5
    elif case == "non_neutral":
        spec["config"]["rope_position_scaling_factor"] = 2.0
    config_path.write_text(json.dumps(spec))


ERRORS = {
    "no_config": "no config.json (is it a keras-hub preset directory?)",
    "hf_dir": "no registered_name, not a keras-hub preset (a Hugging Face directory? use",
    "class": "registered_name 'keras_hub>FalconBackbone' is not supported; supported: keras_hub>",
    "no_weights": "no model.weights.h5 (Backbone.save_to_preset writes it)",
    "bad_weights": "keras-hub cannot load the backbone: ",
    "unknown_key": "key 'partial_rotary_factor' is not understood by tfllm's llama import",
    "non_neutral": "rope_position_scaling_factor=2.0 changes the architecture",
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_preset_gives_one_line_and_writes_nothing(case, tmp_path, capsys):
    preset = tmp_path / "preset"
    write_preset(str(preset), "llama3")
    _break(preset, case)
    workdir = tmp_path / "runs" / "imported"
    assert run_main("convert", ["--from_keras_hub", str(preset), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ERRORS[case] in err[0], err
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


def test_from_hf_points_a_preset_to_from_keras_hub(tmp_path, capsys):
    write_preset(str(tmp_path / "preset"), "gpt2")
    argv = ["--from_hf", str(tmp_path / "preset"), "--workdir", str(tmp_path / "run")]
    assert run_main("convert", argv) == 2
    assert "a keras-hub preset directory: use --from_keras_hub" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["llama3", "qwen3", "gemma2", "gpt2"])
def test_preset_to_tfllm_to_preset_keeps_the_logits(variant, tmp_path, capsys):
    """`--to_keras_hub` (through the HF files and keras-hub's own converter): the preset it
    writes loads in keras-hub and computes the original backbone's logits."""
    # keras-hub's GPT-2 converter reads no n_inner (4 x hidden)
    changes = {"intermediate_dim": 128} if variant == "gpt2" else {}
    backbone = write_preset(str(tmp_path / "preset"), variant, **changes)
    convert.from_keras_hub(str(tmp_path / "preset"), str(tmp_path / "run"))
    out = tmp_path / "back"
    assert (
        run_main("convert", ["--to_keras_hub", str(out), "--workdir", str(tmp_path / "run")]) == 0
    )
    assert f"-> keras-hub preset {out}" in capsys.readouterr().err
    again = keras_hub.models.Backbone.from_preset(str(out))
    ids = np.random.default_rng(2).integers(0, 128, (2, 9)).astype("int32")
    np.testing.assert_allclose(_logits(again, ids), _logits(backbone, ids), atol=1e-5, rtol=0)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".preset-")]
