"""Fine-tuning end to end, from a base tfllm pretrained briefly: LoRA learns a task the base
cannot do (the next letter after "<phrase> <letter>"; greedy accuracy on held-out pairs), its
checkpoints hold adapters only and refuse a changed base, the adapters export in PEFT's names
and shapes and merge as PEFT merges them, the docs' example runs as written,
`generate --chat` answers, and a run too large for the device memory is refused before it
compiles."""

from __future__ import annotations

import json
import pathlib
import random
import re
import sysconfig

import numpy as np
import pytest
import tensorflow as tf
from commands import run_main

import tfllm
from tfllm.config import load_config
from tfllm.errors import ConfigError, TfllmError

pytestmark = pytest.mark.slow  # trains a base and fine-tunes it

ROOT = pathlib.Path(__file__).resolve().parent.parent
LETTERS = "abcdefghij"
SMALL = {"strategy": "cpu", "eval_batches": 1, "sample_tokens": 4, "val_fraction": 0.05}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A 2-layer model pretrained 150 steps on Python text and runs of letters: it knows the
    letters and their order, not the task."""
    root = tmp_path_factory.mktemp("finetune")
    corpus = root / "corpus"
    corpus.mkdir()
    # Fixed text (not the README, which changes with every feature): the stdlib's json package.
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"]) / "json"
    for i, path in enumerate(sorted(stdlib.glob("*.py"))):
        (corpus / f"{i}.txt").write_text(path.read_text())
    # Runs of consecutive letters: the base learns their order, so the task's rule (the next
    # letter, whatever the phrase) is one LoRA can find. Lines of random letters taught no order
    # and held-out accuracy after LoRA then depended on the seed: 0.75, 0.08, 0 for seeds 0-2.
    rng = random.Random(1)
    for i in range(30):
        starts = (rng.randrange(len(LETTERS) - 7) for _ in range(40))
        lines = (" ".join(LETTERS[start : start + 8]) for start in starts)
        (corpus / f"letters{i}.txt").write_text("\n".join(lines))
    cfg = load_config(
        overrides=[
            "model.num_layers=2",
            "model.hidden_dim=64",
            "model.num_heads=4",
            "model.intermediate_dim=128",
            "model.vocabulary_size=512",
            "model.max_sequence_length=64",
            "data.seq_len=64",
            f"data.root={root / 'data'}",
            f"data.source={corpus}",
            "data.name=base",
            "data.workers=1",
            "data.tokenizer_sample_mb=1",
            f"runtime.workdir={root / 'base'}",
            "runtime.strategy=cpu",
            "train.steps=150",
            "train.learning_rate=0.01",
            "train.warmup_steps=5",
            "train.eval_batches=1",
            "train.sample_tokens=4",
        ]
    )
    from tfllm.corpus.prepare import prepare
    from tfllm.training import loop

    loop.train(cfg, build_data=prepare)
    return str(root / "base")


PREFIXES = [
    "after",
    "next after",
    "the letter after",
    "what comes after",
    "successor of",
    "one past",
]


def _task_data(path: pathlib.Path) -> list[tuple[str, str]]:
    """Writes "<prefix> <letter>" -> the next letter for 42 of the 54 (prefix, letter) pairs,
    8 times each; returns the 12 held-out pairs (never trained on)."""
    pairs = [(p, c) for p in PREFIXES for c in LETTERS[:-1]]
    random.Random(0).shuffle(pairs)
    with open(path, "w") as f:
        for _ in range(8):
            for prefix, c in pairs[12:]:
                example = {"prompt": f"{prefix} {c}", "completion": chr(ord(c) + 1)}
                f.write(json.dumps(example) + "\n")
    return pairs[:12]


def _accuracy(model, pairs) -> float:
    outputs = tfllm.generate(model, [f"{p} {c}" for p, c in pairs], max_new_tokens=4)
    right = [o == chr(ord(c) + 1) for o, (_, c) in zip(outputs, pairs, strict=True)]
    return sum(right) / len(pairs)


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    held_out = _task_data(root / "task.jsonl")
    untuned = _accuracy(tfllm.load(base), held_out)
    run = tfllm.finetune(
        tfllm.load(base),
        data=str(root / "task.jsonl"),
        format="prompt_completion",
        workdir=str(root / "run"),
        lora_rank=16,
        lora_targets="q,k,v,o,gate,up,down",
        steps=300,
        learning_rate=0.02,
        weight_decay=0.0,
        global_batch_size=16,
        **SMALL,
    )
    return run, held_out, untuned


def test_lora_learns_a_task_that_the_base_cannot(lora_run):
    run, held_out, untuned = lora_run
    tuned = _accuracy(run.trained, held_out)
    print(f"held-out greedy accuracy: untuned {untuned:.0%}, LoRA r=16 300 steps {tuned:.0%}")
    # Measured 1.0 for seeds 0, 1 and 2 (0.92 each at half the learning rate): 0.75 is 3 misses.
    assert untuned <= 0.1 and tuned >= 0.75
    # The written config is the run: the command line rebuilds the same Config.
    assert load_config([f"{run.workdir}/config.yaml"]) == run.cfg


def test_lora_checkpoints_hold_adapters_only_and_refuse_a_changed_base(lora_run, base):
    run, _, _ = lora_run
    saved = tf.train.list_variables(f"{run.workdir}/checkpoints/ckpt-300")
    tensors = [shape for _, shape in saved if shape]  # scalars: step, counters
    # 28 adapters (2 layers x 7 targets x A, B) and AdamW's two slots each; no base weight.
    assert len(tensors) == 3 * 2 * 2 * 7 and all(16 in shape for shape in tensors)
    marker = json.loads(pathlib.Path(f"{run.workdir}/checkpoints/ckpt-300.done.json").read_text())
    assert marker["base"]["checkpoint"] == "ckpt-150" and len(marker["base"]["sha256"]) >= 2

    from tfllm.runs.checkpoint import Checkpointer

    changed = tfllm.load(base)  # the base moves on: a newer checkpoint with other weights
    variable = changed.model.weights[0]
    variable.assign(variable + 1e-3)
    model_config = changed.cfg.to_dict()["model"]
    Checkpointer(base, changed.model, keep=2, model_config=model_config).save(
        151, weights_only=True
    )
    try:
        with pytest.raises(TfllmError, match="adapters trained on the base ckpt-150"):
            tfllm.load(run.workdir)
    finally:
        for path in pathlib.Path(base, "checkpoints").glob("ckpt-151*"):
            path.unlink()


def test_adapters_export_in_peft_layout_and_merge_as_peft(lora_run, base, tmp_path):
    from safetensors.numpy import load_file

    from tfllm.hub import convert

    run, _, _ = lora_run
    convert.to_hf(run.workdir, str(tmp_path / "adapter"), adapter=True)
    convert.to_hf(run.workdir, str(tmp_path / "merged"))
    convert.to_hf(base, str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 16.0 and config["peft_type"] == "LORA"
    modules = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert config["target_modules"] == modules
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    original = load_file(str(tmp_path / "base" / "model.safetensors"))
    assert len(adapter) == 2 * 2 * 7
    for name, a in adapter.items():
        if ".lora_A." not in name:
            continue
        module = re.sub(r"^base_model\.model\.|\.lora_A\.weight$", "", name)
        b = adapter[name.replace("lora_A", "lora_B")]
        weight = original[f"{module}.weight"]  # HF [out, in]
        assert a.shape == (16, weight.shape[1]) and b.shape == (weight.shape[0], 16)
        expected = weight + (16.0 / 16) * b @ a  # PEFT's merge: W + alpha / r * B A
        np.testing.assert_allclose(merged[f"{module}.weight"], expected, atol=1e-5)


def test_generate_chat_answers_from_a_lora_workdir(lora_run, capsys):
    run, _, _ = lora_run
    messages = json.dumps([{"role": "user", "content": "after c"}])
    assert run_main("generate", ["--workdir", run.workdir, "--chat", messages]) == 0
    # The command prints what the Python API's chat returns for the same merged weights (the
    # reply's text itself is the model's: a 300-step LoRA run may end its turn at once).
    assert capsys.readouterr().out == run.chat(json.loads(messages)) + "\n"
    assert run_main("generate", ["--workdir", run.workdir, "--chat", "[1]"]) != 0


def test_docs_example_runs_as_written(base, tmp_path, monkeypatch):
    """docs/fine-tuning.md's first lines, with `steps=500` shortened: the rest runs as printed."""
    page = (ROOT / "docs" / "fine-tuning.md").read_text()
    code = re.search(
        r"<!-- run by tests/test_training_finetune.py -->\n```python\n(.*?)```", page, re.S
    ).group(1)
    assert "steps=500" in code
    code = code.replace("steps=500", "steps=3")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "qwen2-0.5b").symlink_to(base)
    chats = [
        [{"role": "user", "content": f"say {c}"}, {"role": "assistant", "content": c}]
        for c in LETTERS
    ]
    (tmp_path / "chats.jsonl").write_text(
        "".join(json.dumps({"messages": m}) + "\n" for m in chats)
    )
    exec(compile(code, "docs/fine-tuning.md", "exec"), {})
    assert (tmp_path / "export" / "qwen-chat").is_dir()
    cfg = load_config(["runs/qwen-chat/config.yaml"])
    assert cfg.train.lora_rank == 16 and cfg.train.init_from == "runs/qwen2-0.5b"


def test_a_run_too_large_for_the_device_is_refused(base, tmp_path):
    data = tmp_path / "task.jsonl"
    _task_data(data)
    with pytest.raises(ConfigError, match=r"needs at least .* GiB per replica, the device has"):
        tfllm.finetune(
            base,
            data=str(data),
            format="prompt_completion",
            workdir=str(tmp_path / "run"),
            steps=1,
            device_memory_gb=1e-4,
            **SMALL,
        )
