"""Every model shape the benchmarks measure, defined once, and the token batches they train on.

Shape letters: L layers, D hidden, H heads, V vocabulary, T sequence length, B batch.
A shape is a plain dict of `ModelConfig` keys plus `seq_len` and `batch`; `overrides` turns
one into `--set`-style overrides for `tfllm.config.load_config`.
"""

from __future__ import annotations

import numpy as np

SEQ_LEN = 128
BATCHES = 8  # distinct batches cycled through: identical data for every contender

# GPT-2 layout (GELU MLP of 4D, tied head): the training comparison against keras-hub's
# GPT2Backbone and the nanoGPT-style PyTorch peer.
GPT = {
    # Overhead-bound: per-step framework cost decides.
    "tiny": dict(num_layers=2, hidden_dim=128, num_heads=4, vocabulary_size=2048, batch=8),
    # Compute-bound: about 4.2M parameters, matmuls decide. L4 D256 H4 V4096 T128 B16.
    "small": dict(num_layers=4, hidden_dim=256, num_heads=4, vocabulary_size=4096, batch=16),
}

# Llama layout (grouped-query attention, RMSNorm, SwiGLU, rotary, untied head), 5.0M
# parameters: the imported-model comparison and the LoRA comparison.
LLAMA = {
    "vocabulary_size": 4096,
    "num_layers": 4,
    "hidden_dim": 256,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_dim": 688,
    "max_sequence_length": SEQ_LEN,  # the KV cache of tfllm.serve.generate has this many slots
    "tie_embeddings": False,
    "seq_len": SEQ_LEN,
    "batch": 16,
}
LORA_RANK = 8  # on the query and value projections, keras-hub's `enable_lora` targets

# configs/small.yaml (about 25M parameters): decoding and deployment formats.
DECODE = {
    "num_layers": 6,
    "hidden_dim": 512,
    "num_heads": 8,
    "intermediate_dim": 1536,
    "vocabulary_size": 8192,
    "max_sequence_length": 256,
}

# Llama 3.2-style GQA shape with about 0.5B parameters (untied head): checkpoint import.
CONVERT = {
    "vocabulary_size": 32000,
    "num_layers": 16,
    "num_heads": 12,
    "num_key_value_heads": 4,
    "hidden_dim": 1536,
    "intermediate_dim": 4096,
    "max_sequence_length": 2048,
    "tie_embeddings": False,
}


def gpt(size: str) -> dict:
    """The GPT shape `size` with its MLP width (4D), activation and T."""
    shape = dict(GPT[size], seq_len=SEQ_LEN, activation="gelu")
    shape["intermediate_dim"] = 4 * shape["hidden_dim"]
    shape["max_sequence_length"] = SEQ_LEN
    return shape


def model_keys(shape: dict) -> dict:
    """The `ModelConfig` fields of a shape (without seq_len and batch)."""
    return {k: v for k, v in shape.items() if k not in ("seq_len", "batch")}


def overrides(shape: dict, jit_compile: bool = True) -> list[str]:
    """`load_config` overrides that train `shape` as every contender does: AdamW lr 1e-3,
    no warm-up (betas 0.9/0.95, decay 0.1 and clip 1.0 are the defaults), float32."""
    model = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in
             model_keys(shape).items()]  # fmt: skip
    return model + [
        f"data.seq_len={shape['seq_len']}",
        f"train.global_batch_size={shape['batch']}",
        "train.learning_rate=1e-3",
        "train.warmup_steps=0",
        f"train.jit_compile={str(jit_compile).lower()}",
    ]


def token_batches(shape: dict) -> np.ndarray:
    """(BATCHES, B, T + 1) int32 windows from a fixed seed: inputs are [:-1], targets [1:]."""
    rng = np.random.default_rng(0)
    size = (BATCHES, shape["batch"], shape["seq_len"] + 1)
    return rng.integers(0, shape["vocabulary_size"], size=size, dtype=np.int32)


def tokens_per_step(shape: dict) -> int:
    return shape["batch"] * shape["seq_len"]


def keras_hub_llama():
    """keras-hub's `LlamaBackbone` at the `LLAMA` shape, with random weights (seed 0)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    s = LLAMA
    return keras_hub.models.LlamaBackbone(
        vocabulary_size=s["vocabulary_size"],
        num_layers=s["num_layers"],
        num_query_heads=s["num_heads"],
        hidden_dim=s["hidden_dim"],
        intermediate_dim=s["intermediate_dim"],
        num_key_value_heads=s["num_key_value_heads"],
        tie_word_embeddings=s["tie_embeddings"],
    )
