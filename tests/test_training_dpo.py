"""DPO end to end: preference data prepared into pair records (both of TRL's shapes, bad records
counted and named, over-long pairs cut or dropped), the invariant at step 1 for every loss
variant (policy == reference: sigmoid and robust ln 2, ipo 1/(4 b^2), hinge 1; rewards 0),
TRL's names in TensorBoard, the reference table computed once and reused, and the same run
under MirroredStrategy over 2 logical CPU devices with gradient accumulation, and stopped and
resumed, equal to one uninterrupted run on one device."""

from __future__ import annotations

import glob
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from preference_task import SEQ, dpo_options, random_task

import tfllm
from tfllm.config import TrainConfig, load_config, save_config
from tfllm.corpus import prepare
from tfllm.data import layout, pairs, records
from tfllm.data.reader import IGNORE
from tfllm.errors import DataError
from tfllm.runs.trained import load_trained
from tfllm.tokenizers.tokenizer import load_tokenizer
from tfllm.training import dpo, loop

ROOT = pathlib.Path(__file__).resolve().parent.parent
METRICS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]
METRICS += ["logps/chosen", "logps/rejected", "loss"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return random_task(tmp_path_factory.mktemp("dpo"))


def preference_config(root, base, source, *overrides):
    base_cfg = load_config([f"{base}/config.yaml"])
    return load_config(
        [f"{base}/config.yaml"],
        [
            f"train.init_from={base}",
            "train.objective=dpo",
            "data.format=preference",
            "data.packing=document",
            f"data.source={source}",
            f"data.tokenizer={layout.tokenizer_path(base_cfg)}",
            f"data.root={root / 'prep'}",
            f"runtime.workdir={root / 'unused'}",
            "data.val_fraction=0.2",
            *overrides,
        ],
    )


def read_pairs(cfg, split="train"):
    """(tokens (N, 2, W), segments (N, 2, W)) of a prepared split, in file order."""
    directory = layout.data_dir(cfg)
    manifest = records.read_manifest(directory)
    paths = [f"{directory}/{s['file']}" for s in manifest["splits"][split]["shards"]]
    serialized = list(tf.data.TFRecordDataset(paths))
    parsed = records.parse_batch(tf.stack(serialized), manifest["window_len"], segments=True)
    shape = [-1, 2, manifest["window_len"] // 2]
    return (
        manifest,
        tf.reshape(parsed["tokens"], shape).numpy(),
        tf.reshape(parsed["segments"], shape).numpy(),
    )


def test_text_and_conversational_pairs(task, tmp_path):
    root, base = task
    lines = [
        {"prompt": "pick a b =", "chosen": " b", "rejected": " a"},
        {
            "prompt": [{"role": "user", "content": "pick c d"}],
            "chosen": [{"role": "assistant", "content": "d"}],
            "rejected": [{"role": "assistant", "content": "c"}],
        },
        {"prompt": "x", "chosen": " y"},  # no rejected
        {"prompt": [{"role": "robot", "content": "hi"}], "chosen": [], "rejected": []},
        {"prompt": "x", "chosen": 3, "rejected": " z"},
        "not an object",
    ] * 4
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines))
    template = tmp_path / "short.jinja"  # ChatML's markers would not fit the tiny window
    template.write_text(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    cfg = preference_config(
        tmp_path, base, source, "data.name=mixed", f"data.chat_template={template}"
    )
    manifest = prepare.prepare(cfg)
    assert manifest["records"]["read"] == 24 and manifest["records"]["used"] == 8
    assert manifest["records"]["skipped"] == {
        "missing_field": 4,
        "bad_role": 4,
        "wrong_type": 4,
        "not_an_object": 4,
    }
    assert any("mixed.jsonl:3: missing field 'rejected'" in n for n in manifest["records"]["named"])
    tokenizer = load_tokenizer(cfg.data.tokenizer)

    def ids(text):
        return tokenizer.tokenize(text).numpy().tolist()

    chat_prompt = "<user>pick c d\n<assistant>"
    seen = set()
    for split in ("train", "val"):
        _, tokens, segments = read_pairs(cfg, split)
        for row_tokens, row_segments in zip(tokens, segments, strict=True):
            number = np.abs(row_segments).max()
            assert set(np.abs(row_segments).ravel()) <= {0, number}  # one pair per record
            prompt = row_tokens[0][row_segments[0] < 0].tolist()
            assert prompt == row_tokens[1][row_segments[1] < 0].tolist()
            chosen = row_tokens[0][row_segments[0] > 0].tolist()
            rejected = row_tokens[1][row_segments[1] > 0].tolist()
            if prompt == [2, *ids("pick a b =")]:  # text: tfllm's EOS around, as SFT
                assert (chosen, rejected) == (ids(" b") + [2], ids(" a") + [2])
                seen.add("text")
            else:  # conversational: the template's rendering, no ids added
                assert prompt == ids(chat_prompt)
                assert (chosen, rejected) == (ids("d\n"), ids("c\n"))
                seen.add("chat")
    assert seen == {"text", "chat"}


def test_long_pairs_cut_from_the_prompt_first_or_dropped(task, tmp_path):
    root, base = task
    long_prompt = " ".join("pick a b" for _ in range(40)) + " ="
    source = tmp_path / "long.jsonl"
    rows = [{"prompt": long_prompt, "chosen": " b", "rejected": " a a a"}] * 6
    source.write_text("".join(json.dumps(x) + "\n" for x in rows))
    cfg = preference_config(tmp_path, base, source, "data.name=cut", f"data.seq_len={SEQ}")
    manifest = prepare.prepare(cfg)
    assert sum(s["pairs_cut"] for s in manifest["splits"].values()) == 6
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    prompt_ids = [2] + tokenizer.tokenize(long_prompt).numpy().tolist()  # tfllm's EOS first
    rejected_ids = tokenizer.tokenize(" a a a").numpy().tolist() + [2]
    _, tokens, segments = read_pairs(cfg, "train")
    window = SEQ + 1
    kept = window - len(rejected_ids)  # the rejected side is the longer: it stays whole
    np.testing.assert_array_equal(tokens[0, 1, :kept], prompt_ids[-kept:])  # the prompt's end
    np.testing.assert_array_equal(tokens[0, 1, kept:], rejected_ids)
    assert (segments[0, 1] != 0).all()

    dropped = preference_config(
        tmp_path, base, source, "data.name=drop", f"data.seq_len={SEQ}", "data.truncate=drop"
    )
    with pytest.raises(DataError, match="no usable train pair"):
        prepare.prepare(dropped)


def test_bad_file_is_one_error_line(task, tmp_path):
    """`python -m tfllm.prepare` on a file with no usable pair: exit 2, one line naming it."""
    root, base = task
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "x"}\n')
    cfg = preference_config(tmp_path, base, source, "data.name=bad")
    config = tmp_path / "bad.yaml"
    save_config(cfg, str(config))
    result = subprocess.run(
        [sys.executable, "-m", "tfllm.prepare", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: bad.jsonl: no usable preference record (missing_field 1); first: "
        f"{source}:1: missing field 'chosen'"
    ]
    assert not (pathlib.Path(layout.data_dir(cfg)) / records.MANIFEST).exists()


@pytest.mark.parametrize(
    "loss, expected",
    [("sigmoid", math.log(2)), ("robust", math.log(2)), ("ipo", 1 / (4 * 0.1**2)), ("hinge", 1.0)],
)
def test_policy_equal_to_reference_gives_the_known_loss(task, loss, expected):
    """On real pair batches: both reference paths (LoRA's adapters-off pass, where fresh
    adapters change nothing, and a precomputed table of the same model) give the variant's
    value at d = 0, and zero rewards."""
    root, base = task
    cfg = preference_config(root, base, root / "pairs.jsonl", "data.name=pairs")
    manifest = prepare.ensure_prepared(cfg)
    trained = load_trained(base)
    train_cfg = TrainConfig(dpo_loss=loss, dpo_label_smoothing=0.2 if loss == "robust" else 0.0)
    shards = pairs.numbered_pairs(reader_shards(cfg, manifest), 16)
    numbers, *batch = next(iter(shards))
    table, _ = dpo.sequence_logps(trained.model, *batch, training=False)
    objective = dpo.DPO(train_cfg)
    for reference_batch in (batch, [*batch, table]):  # adapters off / precomputed
        total, metrics = objective.loss_sum(trained.model, reference_batch, training=True)
        count = float(objective.count(batch))
        assert float(total) / count == pytest.approx(expected, rel=1e-5)
        for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert float(metrics[name]) == pytest.approx(0.0, abs=1e-4)
    assert (batch[1] != IGNORE).numpy().sum(-1).min() >= 1  # every sequence has a target


def test_reference_table_is_written_by_the_chief_only(task, tmp_path):
    """A multi-worker job's workers each compute the table; only the chief writes it (two
    writers renaming one temporary file race), and every worker gets the same table."""
    from tfllm.runs.finetune import identity
    from tfllm.training import reference

    root, base = task
    cfg = preference_config(root, base, root / "pairs.jsonl", "data.name=pairs")
    manifest = prepare.ensure_prepared(cfg)
    directory = str(tmp_path / "dataset")  # the table's home; the shards stay where they are
    for name in os.listdir(layout.data_dir(cfg)):
        os.makedirs(directory, exist_ok=True)
        os.symlink(f"{layout.data_dir(cfg)}/{name}", f"{directory}/{name}")
    trained = load_trained(base)
    train_cfg = TrainConfig(global_batch_size=16)
    worker = reference.ensure(
        trained.model, directory, manifest, identity(trained), train_cfg, chief=False
    )
    assert glob.glob(f"{directory}/reference-logps-*") == []
    chief = reference.ensure(trained.model, directory, manifest, identity(trained), train_cfg)
    (written,) = glob.glob(f"{directory}/reference-logps-*")  # no temporary file left
    np.testing.assert_array_equal(worker, chief)
    stored = json.loads(pathlib.Path(written).read_text())["logps"]
    np.testing.assert_array_equal(np.asarray(stored, np.float32), chief)
    assert (chief[1:] < 0).all() and manifest["pairs"] + 1 == len(chief)


def reader_shards(cfg, manifest):
    from tfllm.training.reference import _shards

    return _shards(layout.data_dir(cfg), manifest)


def tensorboard(workdir: str, split: str = "train") -> dict[str, dict[int, float]]:
    values: dict[str, dict[int, float]] = {}
    for path in glob.glob(f"{workdir}/{split}/events*"):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.dtype.kind == "f":  # scalars, not the run's text
                    values.setdefault(value.tag, {})[event.step] = float(array)
    return values


def _weights(workdir: str) -> dict[str, np.ndarray]:
    model = load_trained(workdir).model
    return {v.path: v.numpy() for v in model.weights}


def _train_command(config: str, workdir: str, *overrides: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "tfllm.train", "--config", config]
    for override in (f"runtime.workdir={workdir}", *overrides):
        args += ["--set", override]
    log = open(f"{workdir}.log", "w")  # noqa: SIM115 - the child holds it
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("lora_rank", [0, 4], ids=["full", "lora"])
def test_mirrored_accumulated_and_resumed_runs_equal_one_device(task, lora_rank):
    """4 steps of DPO: one device in one go (the reference run); the run's own config.yaml
    under MirroredStrategy over 2 logical CPU devices with 2 micro-batches, typed as a
    command; and one device stopped after step 2 and resumed. Weights within 1e-5, the
    step losses within 1e-5 relative, and the step-1 loss is ln 2 (sigmoid, policy ==
    reference), all TRL's names written."""
    root, base = task
    name = f"r{lora_rank}"
    options = dpo_options(root, steps=4, learning_rate=1e-2, lora_rank=lora_rank)
    if lora_rank:
        options["lora_targets"] = "q,k,v,o,gate,up,down"
    single = tfllm.dpo(base, data=str(root / "pairs.jsonl"), workdir=str(root / name), **options)
    config = f"{single.workdir}/config.yaml"
    mirrored = _train_command(
        config,
        str(root / f"{name}_mirrored"),
        "runtime.strategy=mirrored",
        "train.grad_accum_steps=2",
    )
    resumed = load_config([config], [f"runtime.workdir={root / name}_resumed"])
    loop.train(resumed, stop_after=2)
    reference_files = glob.glob(f"{root / name}/data/finetune/reference-logps-*.json")
    assert len(reference_files) == (0 if lora_rank else 1)
    stamp = [os.stat(p).st_mtime_ns for p in reference_files]
    loop.train(resumed)
    assert [os.stat(p).st_mtime_ns for p in reference_files] == stamp  # reused, not redone
    assert mirrored.wait(timeout=600) == 0, pathlib.Path(f"{root / name}_mirrored.log").read_text()

    expected = _weights(single.workdir)
    scalars = tensorboard(single.workdir)
    assert set(METRICS) <= set(scalars)
    assert scalars["loss"][1] == pytest.approx(math.log(2), abs=1e-5)
    assert scalars["rewards/margins"][1] == pytest.approx(0.0, abs=1e-5)
    for other in (f"{name}_mirrored", f"{name}_resumed"):
        got = _weights(str(root / other))
        diff = max(float(np.max(np.abs(expected[k] - got[k]))) for k in expected)
        print(f"DPO {'LoRA' if lora_rank else 'full'} {other}: max |diff| {diff:.3g}")
        assert diff <= 1e-5
        losses = tensorboard(str(root / other))["loss"]
        for step, loss in losses.items():
            assert loss == pytest.approx(scalars["loss"][step], rel=1e-5)


def test_distillation_refuses_another_tokenizer(task, tmp_path):
    """A teacher whose tokenizer gives other ids: one line naming both, before any training;
    the same tokenizer (by file, or by ids) passes."""
    from hf_tokenizer_files import write_tokenizer

    from tfllm.errors import ConfigError
    from tfllm.training.distill import check_same_tokenizer

    root, base = task
    ours = layout.tokenizer_path(load_config([f"{base}/config.yaml"]))
    check_same_tokenizer(ours, ours)
    theirs = str(write_tokenizer(tmp_path / "gpt2", "gpt2"))
    with pytest.raises(ConfigError) as err:
        check_same_tokenizer(ours, theirs)
    assert str(err.value) == (
        f"train.distill_from: the teacher's tokenizer ({theirs}) is not the student's ({ours}); "
        "distillation compares distributions over the same token ids"
    )
