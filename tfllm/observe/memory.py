"""The memory a training run needs per replica, estimated before anything is compiled, and a
refusal when it cannot fit the device.

Counted: weights (all of them; a LoRA run's frozen base in `train.base_precision`), gradients
and AdamW's two moments of the trained variables (float32), and the activations kept for the
backward pass of one micro-batch: per token and layer, the block's saved tensors (about
6 D + 3 (H + 2 KV) K + 4 F values in the compute dtype) and the attention probabilities
(2 H T float32: before and after dropout); with `train.remat` only each block's input (D) plus
one block's activations; and the float32 logits with their gradient (2 V). XLA's temporary
buffers are not counted, so the estimate is a floor: the refusal triggers only when even that
does not fit.

Post-training: a DPO step runs every pair as two sequences (twice the rows' activations); its
reference costs no weights (LoRA: the same weights, adapters off; full: a precomputed table)
but, with LoRA, one more forward pass whose float32 logits are alive beside the policy's (V).
Distillation adds the teacher's weights (in its compute dtype) and its float32 probabilities
at every token of the micro-batch (V), kept for the KL's backward pass.
"""

from __future__ import annotations

GIB = 1 << 30


def estimate(
    cfg,
    total_params: int,
    trained_params: int,
    replicas: int,
    teacher_params: int = 0,
    teacher_bytes: int = 4,
) -> dict[str, float]:
    """Bytes per replica by kind: weights, gradients, optimizer, activations (and the teacher's
    or reference's share, see the module docstring), and total."""
    m, t = cfg.model, cfg.train
    compute = 4 if t.precision == "float32" and t.base_precision == "float32" else 2
    frozen = total_params - trained_params
    weights = trained_params * 4 + frozen * (2 if t.base_precision == "bfloat16" else 4)
    rows = t.global_batch_size // replicas // t.grad_accum_steps
    sequences = 2 if t.objective == "dpo" else 1  # chosen and rejected
    tokens = rows * sequences * cfg.data.seq_len
    heads, kv = m.num_heads, m.num_key_value_heads or m.num_heads
    head_dim = m.head_dim or m.hidden_dim // m.num_heads
    block = (6 * m.hidden_dim + 3 * (heads + 2 * kv) * head_dim + 4 * m.intermediate_dim) * compute
    block += 2 * heads * cfg.data.seq_len * 4
    if t.remat:
        layers = m.num_layers * m.hidden_dim * compute + block
    else:
        layers = m.num_layers * block
    sizes = {
        "weights": weights,
        "gradients": trained_params * 4,
        "optimizer": trained_params * 8,
        "activations": tokens * (layers + 2 * m.vocabulary_size * 4),
    }
    if t.objective == "dpo" and t.lora_rank:
        sizes["reference"] = tokens * m.vocabulary_size * 4
    if teacher_params:
        sizes["teacher"] = teacher_params * teacher_bytes + tokens * m.vocabulary_size * 4
    sizes["total"] = sum(sizes.values())
    return sizes


def describe(cfg, sizes: dict[str, float], trained_params: int) -> str:
    t = cfg.train
    parts = ", ".join(f"{k} {sizes[k] / GIB:.3g}" for k in sizes if k != "total")
    lora = f"LoRA r={t.lora_rank} ({trained_params:,} trained)" if t.lora_rank else "full"
    return (
        f"memory per replica (estimate, GiB): {parts}; total {sizes['total'] / GIB:.3g} "
        f"[{t.precision}, base {t.base_precision}, remat {'on' if t.remat else 'off'}, {lora}]"
    )


def device_limit(override_gb: float = 0.0) -> int | None:
    """Bytes the first accelerator reports it can hold (`runtime.device_memory_gb` overrides);
    None on CPU or when the device does not say."""
    if override_gb:
        return int(override_gb * GIB)
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        devices = tf.config.list_logical_devices(kind)
        if devices:
            try:
                info = tf.config.experimental.get_memory_info(devices[0].name)
            except (ValueError, tf.errors.OpError):
                return None
            return info.get("limit") or info.get("bytes_limit") or None
    return None
