"""The training loop on document-packed shards, with a damaged shard skipped and counted."""

from __future__ import annotations

import math
import os

import pytest
from _data_helpers import small_config, write_corpus
from commands import logged

from tfllm.corpus import prepare
from tfllm.errors import DataError
from tfllm.training import loop as train


@pytest.mark.slow  # trains
def test_train_on_document_packing_with_a_skipped_shard(tmp_path):
    write_corpus(tmp_path / "text", files=60, words=40)
    overrides = [
        "data.packing=document",
        "data.seq_len=32",
        "train.steps=2",
        "train.steps_per_loop=2",
        "train.eval_every=2",
        "train.checkpoint_every=2",
        "train.eval_batches=1",
        "train.global_batch_size=4",
        "train.sample_tokens=2",
        f"runtime.workdir={tmp_path / 'run'}",
    ]
    cfg = small_config(tmp_path, str(tmp_path / "text"), "doc", *overrides)
    manifest = prepare.prepare(cfg)
    damaged = manifest["splits"]["train"]["shards"][0]
    with open(os.path.join(prepare.data_dir(cfg), damaged["file"]), "r+b") as f:
        f.seek(40)
        f.write(b"\xff")
    with pytest.raises(DataError, match=f"damaged shard .*{damaged['file']}"):
        train.train(cfg)
    skip = small_config(tmp_path, str(tmp_path / "text"), "doc", *overrides, "data.on_corrupt=skip")
    with logged() as lines:
        result = train.train(skip)
    assert result["step"] == 2 and math.isfinite(result["val_loss"])
    assert any(f"{damaged['records']} records lost" in line for line in lines)
