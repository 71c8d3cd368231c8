"""`tfllm.convert` both ways: exact round trips, a from-scratch model out and back, clear errors
that leave nothing behind, and an imported workdir that `tfllm.train` resumes from."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tiny_run
from commands import run_main
from hub_fixtures import VARIANTS, write_hf_dir
from safetensors.numpy import load_file, save_file

from tfllm.hub import convert, hf_config
from tfllm.runs.trained import load_trained
from tfllm.tokenizers.tokenizer import train_tokenizer


def _tensors(directory) -> dict:
    names = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
    out = {}
    for name in names:
        out.update(load_file(os.path.join(directory, name)))
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_hf_to_tfllm_to_hf_is_byte_identical(variant, tmp_path):
    source, out = tmp_path / "hf", tmp_path / "out"
    # bfloat16, in shards of about 8 KB: the index and shard names are exercised too
    write_hf_dir(str(source), variant, "bfloat16", shard_bytes=8 << 10)
    assert (source / "model.safetensors.index.json").exists()
    convert.from_hf(str(source), str(tmp_path / "run"))
    assert (
        run_main(
            "convert",
            [
                "--to_hf",
                str(out),
                "--workdir",
                str(tmp_path / "run"),
                "--shard_gb",
                str(8 / (1 << 20)),
            ],
        )
        == 0
    )
    before, after = _tensors(source), _tensors(out)
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and after[name].tobytes() == tensor.tobytes()
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (source / "config.json").read_text()
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(before)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 3]


@pytest.mark.slow  # an export and an import of a whole workdir
def test_scratch_workdir_exports_as_llama_and_comes_back(tmp_path):
    run = tiny_run.build(str(tmp_path / "tiny"))
    out, back = tmp_path / "hf", tmp_path / "back"
    convert.to_hf(run.workdir, str(out))
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert (out / "tokenizer.model").read_bytes() == open(run.tokenizer_path, "rb").read()
    convert.from_hf(str(out), str(back))
    imported = load_trained(str(back))
    ids = np.random.default_rng(0).integers(0, tiny_run.VOCAB, (2, 12)).astype("int32")
    np.testing.assert_array_equal(np.asarray(imported.model(ids)), np.asarray(run.model(ids)))
    assert imported.tokenizer_path == str(back / "hf" / "tokenizer.model")


def test_rope_parameters_and_rope_scaling_read_alike():
    base = {
        "model_type": "llama",
        "vocab_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    scaling = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    v4 = {**base, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", **scaling}}
    v5 = {**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, **scaling}}
    family, model = hf_config.to_model_config(v4)
    assert (family, model) == hf_config.to_model_config(v5)
    assert model["rope_scaling"] == "llama3" and model["rope_max_wavelength"] == 500000.0
    assert model["rope_original_max_positions"] == 16 and model["num_key_value_heads"] == 2


def _break(directory, case):
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    if case == "model_type":
        config["model_type"] = "falcon"
    elif case == "unknown_key":
        config["partial_rotary_factor"] = 0.5
    elif case == "non_neutral":
        config["attention_bias"] = True
    elif case == "rope_type":
        config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
    elif case == "bin_only":
        os.remove(directory / "model.safetensors")
        (directory / "pytorch_model.bin").write_bytes(b"\0")
    elif case == "truncated":  # a download that stopped half way
        data = (directory / "model.safetensors").read_bytes()
        (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif case in ("missing", "shape"):
        tensors = load_file(directory / "model.safetensors")
        name = "model.layers.1.self_attn.k_proj.weight"
        if case == "missing":
            del tensors[name]
        else:
            tensors[name] = np.zeros((8, 32), np.float32)
        save_file(tensors, directory / "model.safetensors", {"format": "pt"})
    config_path.write_text(json.dumps(config))


ERRORS = {
    "model_type": "model_type 'falcon' is not supported; supported: llama, mistral, qwen2",
    "unknown_key": "key 'partial_rotary_factor' (= 0.5) is not understood",
    "non_neutral": "attention_bias=True changes the architecture",
    "rope_type": "rope type 'yarn' is not supported",
    "bin_only": "only pytorch_model*.bin weights; tfllm reads safetensors",
    "missing": "tensor model.layers.1.self_attn.k_proj.weight is missing",
    "truncated": "model.safetensors: truncated",
    "shape": "tensor model.layers.1.self_attn.k_proj.weight has shape (8, 32), the config says "
    "(16, 32)",
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_gives_one_line_and_writes_nothing(case, tmp_path, capsys):
    source = tmp_path / "hf"
    write_hf_dir(str(source), "llama")
    _break(source, case)
    workdir = tmp_path / "runs" / "imported"
    assert run_main("convert", ["--from_hf", str(source), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ERRORS[case] in err[0], err
    assert not workdir.exists()
    assert not (tmp_path / "runs").exists() or not os.listdir(tmp_path / "runs")


@pytest.mark.slow  # trains
def test_converted_workdir_trains_from_step_0(tmp_path, corpus_dir, capsys):
    source = tmp_path / "hf"
    write_hf_dir(str(source), "qwen2", vocabulary_size=512)
    texts = [p.read_text() for p in sorted(corpus_dir.rglob("*.py"))[:20]]
    (source / "tokenizer.model").write_bytes(train_tokenizer(texts, 512, sample_mb=1))
    workdir = tmp_path / "run"
    assert run_main("convert", ["--from_hf", str(source), "--workdir", str(workdir)]) == 0
    before = load_trained(str(workdir))
    argv = [
        "--config",
        str(workdir / "config.yaml"),
        "--set",
        f"data.source={corpus_dir}",
        "--set",
        f"data.root={tmp_path / 'data'}",
        "--set",
        "data.seq_len=16",
        "--set",
        "data.val_fraction=0.1",
        "--set",
        "data.tokenizer_sample_mb=1",
        "--set",
        "train.steps=2",
        "--set",
        "train.steps_per_loop=1",
        "--set",
        "train.global_batch_size=2",
        "--set",
        "train.eval_batches=1",
        "--set",
        "train.sample_tokens=4",
        "--set",
        "train.warmup_steps=1",
        "--set",
        "train.jit_compile=false",
    ]
    assert run_main("train", argv) == 0
    assert f"resumed from {workdir}/checkpoints/ckpt-0 at step 0" in capsys.readouterr().err
    after = load_trained(str(workdir))
    assert after.step == 2 and after.tokenizer_path == str(workdir / "hf" / "tokenizer.model")
    moved = [
        not np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(before.model.weights, after.model.weights, strict=True)
    ]
    assert all(moved)
    # generate reads the trained workdir with the imported tokenizer (data.tokenizer)
    prompt = ["--workdir", str(workdir), "--prompt", "def ", "--max_new_tokens", "3"]
    assert run_main("generate", prompt) == 0
    shutil.rmtree(tmp_path / "data")
