"""An imported model through the user's journey, each command a fresh process:

HF directory (Llama-3-style: GQA, byte-level BPE tokenizer.json with BOS, two stop ids)
-> `tfllm.convert --from_hf` -> `tfllm.train` 10 steps on instruction data under
MirroredStrategy over 2 logical CPUs (equal to one device within 1e-5) -> `tfllm.generate`
-> `tfllm.export` -> a process without tfllm serves it with the model's own tokenizer.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from commands import run_subprocess
from hf_tokenizer_files import write_tokenizer
from hub_fixtures import write_hf_dir
from tokenizers import Tokenizer

from tfllm.runs.trained import load_trained
from tfllm.serve.generate import Generator

pytestmark = pytest.mark.slow  # each command a fresh process

PROMPT = "Hello world, it's"
TRAIN = [
    "--set", "data.format=prompt_completion", "--set", "data.packing=document",
    "--set", "data.name=imported-pc", "--set", "data.seq_len=32",
    "--set", "data.val_fraction=0.2", "--set", "train.steps=10",
    "--set", "train.steps_per_loop=5", "--set", "train.eval_every=10",
    "--set", "train.checkpoint_every=10", "--set", "train.global_batch_size=4",
    "--set", "train.eval_batches=1", "--set", "train.sample_tokens=4",
    "--set", "train.warmup_steps=2", "--set", "train.sample_prompt=Hello",
]  # fmt: skip
SERVE = """
import json, sys
import tensorflow as tf
import tensorflow_text  # noqa: F401
assert "tfllm" not in sys.modules
out = tf.saved_model.load(sys.argv[1]).signatures["serving_default"](
    prompts=tf.constant([sys.argv[2]]), max_new_tokens=tf.constant(6), temperature=tf.constant(0.0),
    top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0, tf.int64))
print(json.dumps({"completion": out["completions"].numpy()[0].decode(),
                  "tokens": out["tokens"].numpy()[0].tolist()}))
"""


def _ok(done: subprocess.CompletedProcess, stream: str = "stdout") -> str:
    """The command's results (stdout), or its log lines with stream="stderr"."""
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "Traceback" not in done.stderr
    return getattr(done, stream)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    hf = root / "hf"
    write_hf_dir(str(hf), "llama", vocabulary_size=640)
    write_tokenizer(hf, "llama3")
    data = root / "pc.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Numbers {i} and {i + 1}:", "completion": f" {2 * i + 1}"})
            + "\n"
            for i in range(40)
        )
    )
    _ok(run_subprocess("convert", "--from_hf", str(hf), "--workdir", "runs/imp", cwd=root))
    shutil.copytree(root / "runs/imp", root / "runs/one")
    common = [*TRAIN, "--set", f"data.source={data}"]
    config = ["--config", "runs/imp/config.yaml"]
    mirrored = _ok(
        run_subprocess("train", *config, *common, "--strategy", "mirrored", cwd=root), "stderr"
    )
    one = ["--set", "runtime.workdir=runs/one", "--strategy", "cpu"]
    _ok(run_subprocess("train", *config, *common, *one, cwd=root))
    return root, mirrored


def test_mirrored_training_equals_one_device(imported):
    root, log = imported
    assert "2 replica(s)" in log and "resumed from runs/imp/checkpoints/ckpt-0 at step 0" in log
    two = load_trained(str(root / "runs/imp"))
    one = load_trained(str(root / "runs/one"))
    assert two.step == one.step == 10
    difference = max(
        float(np.abs(a.numpy() - b.numpy()).max())
        for a, b in zip(two.model.weights, one.model.weights, strict=True)
    )
    assert difference < 1e-5


def test_prompt_tokens_are_the_tokenizers_own(imported):
    root, _ = imported
    trained = load_trained(str(root / "runs/imp"))
    assert trained.tokenizer_path.endswith("tokenizer.json")
    generator = Generator(trained.model, trained.tokenizer_path)
    ids = generator._prompt_ids(tf.constant([PROMPT])).to_list()[0]
    reference = Tokenizer.from_file(trained.tokenizer_path).encode(PROMPT).ids
    assert ids == reference and ids[0] == 0  # Llama 3: BOS first, no tfllm EOS
    assert generator.specials.stop == (1, 2)


def test_generate_and_the_fresh_process_export_agree(imported):
    root, _ = imported
    generated = _ok(
        run_subprocess(
            "generate", "--workdir", "runs/imp", "--prompt", PROMPT, "--max_new_tokens", "6",
            cwd=root,
        )
    )  # fmt: skip
    _ok(run_subprocess("export", "--workdir", "runs/imp", "--export_dir", "export/imp", cwd=root))
    version = root / "export/imp/1"
    assert (version / "assets" / "tokenizer.json").is_file()
    served = subprocess.run(
        [sys.executable, "-c", SERVE, str(version), PROMPT], capture_output=True, text=True
    )
    assert served.returncode == 0, served.stderr[-3000:]
    out = json.loads(served.stdout.strip().splitlines()[-1])
    assert PROMPT + out["completion"] == generated.rstrip("\n")
    assert pathlib.Path(version / "saved_model.pb").stat().st_size > 0
