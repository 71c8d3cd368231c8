"""Hostile and careless input, each defect of issue 25 run as a user types the command: one
`error:` line, exit code 2, no traceback, and nothing written or changed."""

from __future__ import annotations

import os
import pathlib
import resource
import shutil
import subprocess
import sys

import pytest
import tiny_run
import yaml
from commands import one_error, run_main, run_subprocess

from tfllm.config import load_config
from tfllm.errors import ConfigError

QUICK = ["--set", "train.jit_compile=false", "--set", "train.steps=2", "--set",
         "train.steps_per_loop=1", "--set", "train.eval_every=2", "--set", "train.eval_batches=1",
         "--set", "train.checkpoint_every=2", "--set", "train.global_batch_size=2",
         "--set", "train.warmup_steps=1"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run"))


def snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}  # fmt: skip


# 1. A task file's templates run in the sandbox.
PAYLOADS = [
    "{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch PWNED').read() }}",
    "{{ self.__init__.__globals__.__builtins__.open('PWNED', 'w') }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ 'a' * 10**12 }}",
]


def refused_eval(tmp_path, monkeypatch, capsys, as_a_user: bool, *argv: str):
    """`tfllm eval argv...` in `tmp_path`, as a CompletedProcess for `one_error`: a subprocess
    as a user types it when `as_a_user` (each defect's own example), else in this process,
    the same code path without a TensorFlow start-up per case."""
    if as_a_user:
        return run_subprocess("eval", *argv, cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    code = run_main("eval", list(argv))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["eval", *argv], code, out, err)


# The issue's own payload runs as the user types it, a subprocess; the others in process.
@pytest.mark.parametrize(
    "payload", [pytest.param(PAYLOADS[0], marks=pytest.mark.slow), *PAYLOADS[1:]]
)
def test_a_task_template_cannot_run_code(tmp_path, monkeypatch, capsys, payload):
    (tmp_path / "docs.jsonl").write_text('{"q": "x", "a": "y"}\n')
    task = {"task": "evil", "dataset_path": "docs.jsonl", "output_type": "generate_until",
            "doc_to_text": payload, "doc_to_target": "a"}  # fmt: skip
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(task))
    argv = ("--workdir", str(tmp_path / "none"), "--tasks", "evil.yaml")
    result = refused_eval(tmp_path, monkeypatch, capsys, payload == PAYLOADS[0], *argv)
    one_error(result, "evil.yaml: doc_to_text", "sandbox")
    assert not (tmp_path / "PWNED").exists()


def test_a_chat_template_cannot_run_code(tmp_path):
    from tfllm.errors import DataError
    from tfllm.tokenizers import chat

    path = tmp_path / "chat.jinja"
    path.write_text(PAYLOADS[0])
    template = chat.load_template(str(path))
    with pytest.raises(DataError, match="chat.jinja: refused by the template sandbox"):
        template.render([{"role": "user", "content": "hi"}])
    assert not (tmp_path / "PWNED").exists()


# 2. A changed data.source never trains on the old shards.
@pytest.mark.slow  # a subprocess
def test_train_refuses_shards_made_from_another_source(run, tmp_path):
    corpus = tmp_path / "mycorpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("print('hello')\n" * 50)
    result = run_subprocess("train", "--config", f"{run.workdir}/config.yaml", "--set",
                            f"runtime.workdir={tmp_path / 'w'}", "--set",
                            f"data.source={corpus}/")  # fmt: skip
    one_error(result, "was prepared from data.source", str(corpus), "--force", "data.name")
    assert not (tmp_path / "w" / "config.yaml").exists()


@pytest.mark.slow  # two prepare commands
def test_prepare_refuses_a_dataset_whose_input_changed(corpus_dir, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir / "json", corpus)
    common = ["--set", f"data.source={corpus}", "--set", f"data.root={tmp_path / 'data'}",
              "--set", "data.name=t", "--set", "model.vocabulary_size=512", "--set",
              "data.seq_len=16", "--set", "model.max_sequence_length=16", "--set",
              "data.val_fraction=0.3"]  # fmt: skip
    assert run_subprocess("prepare", *common).returncode == 0
    before = snapshot(tmp_path / "data")
    (corpus / "decoder.py").write_text("changed\n")
    one_error(run_subprocess("prepare", *common), "input corpus/decoder.py changed", "--force")
    assert snapshot(tmp_path / "data") == before


# 3. A refused resume leaves the workdir byte-identical.
@pytest.mark.slow  # subprocesses
def test_a_refused_resume_leaves_the_workdir_untouched(run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(run.workdir, workdir)
    before = snapshot(workdir)
    result = run_subprocess(
        "train",
        "--config",
        f"{workdir}/config.yaml",
        "--set",
        f"runtime.workdir={workdir}",
        "--set",
        "model.num_layers=3",
        *QUICK,
    )
    one_error(result, "was written for a different model", "model.num_layers")
    after = snapshot(workdir)
    assert after == before
    generated = run_subprocess("generate", "--workdir", str(workdir), "--prompt", "def ",
                               "--max_new_tokens", "2")  # fmt: skip
    assert generated.returncode == 0, generated.stderr


# 4. Every numeric setting has a range.
@pytest.mark.parametrize(
    "assignment, message",
    [
        ("train.learning_rate=-1", "train.learning_rate must be greater than 0, got -1.0"),
        ("train.learning_rate=nan", "train.learning_rate must be a finite number, got nan"),
        ("model.dropout=1.5", "model.dropout must be in [0, 1), got 1.5"),
        ("train.warmup_steps=-1", "train.warmup_steps must be at least 0, got -1"),
        ("train.grad_clip_norm=-1", "train.grad_clip_norm must be at least 0, got -1.0"),
        ("model.layer_norm_epsilon=0", "model.layer_norm_epsilon must be greater than 0"),
        ("model.rope_max_wavelength=0", "model.rope_max_wavelength must be greater than 0"),
        ("train.beta_2=1", "train.beta_2 must be in [0, 1), got 1.0"),
        ("runtime.device_memory_gb=inf", "runtime.device_memory_gb must be a finite number"),
        ("runtime.workdir=", "runtime.workdir must name a directory, got ''"),
    ],
)
def test_numeric_settings_are_checked_against_their_range(assignment, message):
    with pytest.raises(ConfigError) as err:
        load_config([], [assignment])
    assert message in str(err.value)


def test_a_negative_learning_rate_is_refused_by_the_command(tmp_path):
    result = run_subprocess("train", "--set", "train.learning_rate=-1",
                            "--set", f"runtime.workdir={tmp_path / 'w'}")  # fmt: skip
    one_error(result, "train.learning_rate must be greater than 0, got -1.0")
    assert not (tmp_path / "w").exists()


def test_every_numeric_field_declares_a_range():
    import dataclasses

    from tfllm.config import Config

    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            if f.type in ("int", "float"):
                assert "range" in f.metadata, f"{section.name}.{f.name}"


# 5. Out of disk space: one line, temp files removed. RLIMIT_FSIZE makes writes past the
# limit fail with EFBIG (Python ignores SIGXFSZ), as a full disk does with ENOSPC.
def small_disk(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def run_limited(limit: int, command: str, *argv: str):
    return subprocess.run([sys.executable, "-m", f"tfllm.{command}", *argv], capture_output=True,
                          text=True, preexec_fn=small_disk(limit), timeout=900)  # fmt: skip


@pytest.mark.slow  # a subprocess
def test_disk_full_while_training_keeps_the_last_checkpoint(run, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(run.workdir, workdir)
    result = run_limited(64 << 10, "train", "--config", f"{workdir}/config.yaml", "--set",
                         f"runtime.workdir={workdir}", *QUICK)  # fmt: skip
    one_error(result, "out of disk space while writing checkpoint ckpt-2", "ckpt-0")
    names = {p.name for p in (workdir / "checkpoints").iterdir()}
    assert not [n for n in names if n.startswith("ckpt-2")], names
    assert "ckpt-0.done.json" in names


@pytest.mark.slow  # a subprocess
def test_disk_full_while_exporting_keeps_the_versions(run, tmp_path):
    export_dir = tmp_path / "export"
    shutil.copytree(run.export_dir, export_dir)
    result = run_limited(256 << 10, "export", "--workdir", run.workdir, "--export_dir",
                         str(export_dir))  # fmt: skip
    one_error(result, "out of disk space while writing export version 2", "(1)")
    assert sorted(p.name for p in export_dir.iterdir()) == ["1"]


@pytest.mark.slow  # a subprocess
def test_disk_full_while_preparing_removes_temp_files(corpus_dir, tmp_path):
    # A 8 KB tokenizer fits, a shard of about 200 KB does not.
    result = run_limited(32 << 10, "prepare", "--set", f"data.root={tmp_path}", "--set",
                         f"data.source={corpus_dir}", "--set", "data.name=full", "--set",
                         "data.tokenizer_sample_mb=1", "--set", "data.records_per_shard=4000",
                         "--set", "model.vocabulary_size=512")  # fmt: skip
    one_error(result, "out of disk space while writing the dataset", "restart state")
    left = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not left
    assert not (tmp_path / "full" / "manifest.json").exists()


# 7. The smaller ones.
@pytest.mark.slow  # a subprocess
def test_a_damaged_restart_state_is_one_line(tmp_path):
    state = tmp_path / "data" / "x" / ".prepare"
    state.mkdir(parents=True)
    (state / "state.npz").write_bytes(b"garbage")
    result = run_subprocess("prepare", "--set", f"data.root={tmp_path / 'data'}", "--set",
                            "data.name=x")  # fmt: skip
    one_error(result, "restart state", "is damaged", "delete")


@pytest.mark.slow  # a subprocess
def test_prepare_takes_a_lock_on_its_dataset(tmp_path):
    dataset = tmp_path / "x"
    dataset.mkdir()
    holder = f'{{"pid": {os.getpid()}, "host": "{os.uname().nodename}", "since": 0}}'
    (dataset / "prepare.lock").write_text(holder)
    result = run_subprocess("prepare", "--set", f"data.root={tmp_path}", "--set", "data.name=x")
    one_error(result, f"dataset {dataset} is in use by process {os.getpid()}")


@pytest.mark.parametrize(
    "key, value, message",
    [
        pytest.param(  # a subprocess, as a user types it
            "filter_list", 5, "filter_list must be list, got int 5", marks=pytest.mark.slow
        ),
        ("rolling_context", "long", "rolling_context must be int, got str 'long'"),
        ("generation_kwargs", {"until": 3}, "generation_kwargs.until must be a string"),
        ("filter_list", [{"filter": [{"regex_pattern": "("}]}], "regex_pattern '('"),
    ],
)
def test_task_keys_of_the_wrong_type_are_one_line(
    tmp_path, monkeypatch, capsys, key, value, message
):
    (tmp_path / "docs.jsonl").write_text('{"q": "x", "a": "y"}\n')
    task = {"dataset_path": "docs.jsonl", "doc_to_text": "q", "doc_to_target": "a", key: value}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(task))
    as_a_user = (key, value) == ("filter_list", 5)
    result = refused_eval(tmp_path, monkeypatch, capsys, as_a_user, "--workdir", "none", "--tasks",
                          "t.yaml")  # fmt: skip
    one_error(result, message)


@pytest.mark.parametrize(
    "flag, message",
    [("--batch_size=0", "--batch_size must be at least 1"), ("--limit=-1", "--limit must be")],
)
@pytest.mark.slow  # a subprocess
def test_eval_flags_out_of_range_are_one_line(run, flag, message):
    one_error(run_subprocess("eval", "--workdir", run.workdir, "--tasks", "stdlib", flag), message)


@pytest.mark.slow  # two eval commands
def test_a_second_eval_of_one_step_does_not_overwrite_the_first(run, tmp_path):
    argv = ["--workdir", run.workdir, "--tasks", "stdlib_bpb", "--limit", "1", "--output_dir",
            str(tmp_path)]  # fmt: skip
    for _ in range(2):
        result = run_subprocess("eval", *argv)
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.json")) == [
        "results-step-0-2.json",
        "results-step-0.json",
    ]


def test_non_utf8_config_and_argument_are_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_bytes(b"train:\n  steps: 5 # \xff\xfe\n")
    one_error(run_subprocess("train", "--config", str(tmp_path / "bad.yaml")), "not UTF-8 text")
    result = subprocess.run([sys.executable, "-m", "tfllm.generate", "--workdir", "w",
                             "--prompt", b"\xff\xfe"], capture_output=True, text=True)  # fmt: skip
    one_error(result, "argument 4", "is not valid UTF-8")


@pytest.mark.slow
def test_a_fine_tuning_run_reports_the_models_vocabulary(run, tmp_path):
    result = run_subprocess("train", "--set", f"train.init_from={run.workdir}", "--set",
                            f"runtime.workdir={tmp_path / 'ft'}", "--set",
                            f"data.root={tmp_path / 'data'}", "--set", "data.name=ft", "--set",
                            f"data.source={pathlib.Path(tiny_run.tfllm.__file__).parent}",
                            "--set", f"data.seq_len={tiny_run.SEQ}", "--set",
                            "model.vocabulary_size=4096", *QUICK)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"(ln V = {__import__('math').log(tiny_run.VOCAB):.2f})" in result.stdout


def test_the_fingerprint_names_a_changed_mixture_weight_or_setting(tmp_path):
    from tfllm.data import fingerprint
    from tfllm.errors import DataError

    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text(f"text {name}\n")
    source = f"{tmp_path}/a.txt:0.7,{tmp_path}/b.txt:0.3"
    cfg = load_config([], [f"data.source={source}"])
    manifest = {"packing": "concat", "seq_len": cfg.data.seq_len, "vocabulary_size": 256,
                "built_from": fingerprint.describe(cfg)}  # fmt: skip
    fingerprint.check(load_config([], [f"data.source={source}"]), manifest, "m.json")
    reweighed = load_config([], [f"data.source={source.replace('0.7', '0.5')}"])
    with pytest.raises(DataError, match="m.json was prepared from data.source .*0.7"):
        fingerprint.check(reweighed, manifest, "m.json")
    cleaned = load_config([], [f"data.source={source}", "data.min_doc_chars=5"])
    with pytest.raises(DataError, match="prepared with data.min_doc_chars 1, the config says 5"):
        fingerprint.check(cleaned, manifest, "m.json")
