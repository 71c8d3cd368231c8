"""The open-weights benchmarks' inputs and contenders in their smallest form (not timed)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from benchmarks import convert_bench, lora_bench, shapes
from tfllm.hub import convert
from tfllm.runs.trained import load_trained

TINY = {
    **convert_bench.SHAPE,
    "vocabulary_size": 256,
    "num_layers": 2,
    "hidden_dim": 64,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_dim": 96,
    "max_sequence_length": 64,
}


def test_convert_bench_checkpoint_is_sharded_bfloat16_and_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_bench, "SHARD_BYTES", 40_000)
    source = tmp_path / "hf"
    total = convert_bench.write_checkpoint(str(source), TINY)
    shards = sorted(source.glob("model-*.safetensors"))
    assert len(shards) > 2 and total == sum(p.stat().st_size for p in shards) - sum(
        8 + int.from_bytes(p.read_bytes()[:8], "little") for p in shards
    )
    tensors = {k: v for p in shards for k, v in load_file(p).items()}
    assert {str(t.dtype) for t in tensors.values()} == {"bfloat16"}
    convert.from_hf(str(source), str(tmp_path / "run"))
    model = load_trained(str(tmp_path / "run")).model
    embedding = tensors["model.embed_tokens.weight"].astype(np.float32)
    np.testing.assert_array_equal(model.embedding.kernel.numpy(), embedding.T)  # (hidden, vocab)
    assert model.count_params() == sum(
        int(np.prod(s)) for s in convert_bench.hf_shapes(TINY).values()
    )


@pytest.mark.slow  # two models compiled and trained a step
def test_lora_contenders_train_the_llama_shape_one_step():
    """tfllm LoRA and keras-hub `enable_lora` on `shapes.LLAMA`, the smallest measurement."""
    for contender in ("tfllm-lora", "keras-hub-lora"):
        result = lora_bench.worker(contender, steps=1, chunks=1)
        assert result["tokens_per_second"] > 0, contender
    assert shapes.LLAMA["num_key_value_heads"] < shapes.LLAMA["num_heads"]
