"""LoRA: low-rank adapters on the 2-D projection kernels, in PEFT's layout.

A projection y = x W (W is (in, out)) gets A (in, r), drawn as PEFT draws it, and B (r, out),
zero, so a fresh adapter leaves the model unchanged; the effective kernel is
W + (alpha / r) A B. Training computes the low-rank path beside the frozen projection,
y = x W + (alpha / r) (dropout(x) A) B, so the base matmul keeps its hand-written backward pass
and no (in, out)-sized weight gradient is formed for W (frozen, it is never asked for).

Fused kernels hold several of PEFT's modules: QKV holds q, k and v, the MLP's input kernel gate
and up (gate first); only the targeted slices get a delta. Shape letters as in
`tfllm.model.layers`.

The adapters are a `tf.Module` of their own (what a LoRA run checkpoints and optimizes); the
layers reach them through a plain attribute that neither Keras nor tf.train tracks, so the
model's own checkpoints and SavedModels never contain them.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf
from keras import ops

from tfllm.model.projections import dense


def layer_slices(layer) -> dict[str, list[tuple[str, int]]]:
    """The PEFT modules inside each 2-D kernel of an attention or MLP layer, with their output
    widths, in column order: {kernel attribute: [(target, width), ...]}."""
    if hasattr(layer, "qkv_kernel"):
        q, kv = layer.config.num_heads * layer.head_dim, layer.kv_heads * layer.head_dim
        return {"qkv_kernel": [("q", q), ("k", kv), ("v", kv)], "output_kernel": [("o", None)]}
    f = layer.config.intermediate_dim
    inputs = [("gate", f), ("up", f)] if layer.gates == 2 else [("up", f)]
    return {"input_kernel": inputs, "output_kernel": [("down", layer.config.hidden_dim)]}


class _Hook:
    """What a layer holds: its adapters {target: (A, B)} and how to apply them."""

    def __init__(self, pairs: dict, scale: float, dropout: keras.layers.Dropout | None):
        self.pairs, self.scale, self.dropout = pairs, scale, dropout
        self.enabled = True  # False while `adapters_off` traces the base model's pass

    def add(self, x, y, slices, training: bool):
        """y (..., out) of the kernel whose `slices` are [(target, width)], plus the deltas of
        the targeted ones (zeros for the others) computed from the kernel's input x (..., in).
        """
        if not self.enabled or not any(target in self.pairs for target, _ in slices):
            return y
        if self.dropout is not None and training:
            x = self.dropout(x, training=True)
        parts = []
        for target, width in slices:
            if target not in self.pairs:
                parts.append(ops.zeros((*ops.shape(y)[:-1], width), y.dtype))
                continue
            a, b = (ops.cast(v, x.dtype) for v in self.pairs[target])
            parts.append(dense(dense(x, a, training), b, training) * ops.cast(self.scale, x.dtype))
        return y + (parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1))

    def delta(self, slices, in_dim: int):
        """The (in, out) effective-kernel delta (alpha / r) A B of one kernel, zeros elsewhere."""
        parts = []
        for target, width in slices:
            if target in self.pairs:
                a, b = self.pairs[target]
                parts.append(self.scale * tf.matmul(a, b))
            else:
                parts.append(tf.zeros((in_dim, width)))
        return tf.concat(parts, axis=-1)


class Adapters(tf.Module):
    """The adapters of every targeted projection of `model`, attached to its layers.

    Args:
        model: a built `TransformerLM`.
        rank, alpha, dropout: LoRA's r, alpha (scale alpha / r) and input dropout.
        targets: among q, k, v, o, gate, up, down.
        seed: for A's initial values (B starts at zero).
    """

    def __init__(self, model, rank: int, alpha: float, dropout: float, targets, seed: int = 0):
        super().__init__(name="lora")
        self.rank, self.alpha, self.targets = rank, alpha, tuple(targets)
        self.model = _Untracked(model)
        self.pairs = {}  # (block index, target) -> (A, B); tracked by tf.Module for checkpoints
        for i, block in enumerate(model.blocks):
            for layer in (block.attention, block.mlp):
                pairs = {}
                for name, slices in layer_slices(layer).items():
                    in_dim, out_dim = _in_out(layer, name)
                    for target, width in slices:
                        if target in self.targets:
                            pairs[target] = self._pair(i, target, in_dim, width or out_dim, seed)
                            self.pairs[f"block_{i}_{target}"] = pairs[target]
                drop = keras.layers.Dropout(dropout, seed=seed + i) if dropout > 0 else None
                object.__setattr__(layer, "_lora", _Hook(pairs, alpha / rank, drop))
        object.__setattr__(model, "_lora_adapters", self)

    def _pair(self, block: int, target: str, in_dim: int, out_dim: int, seed: int):
        # PEFT: kaiming_uniform(a=sqrt(5)) on A, i.e. U(-1/sqrt(in), 1/sqrt(in)); B zero.
        bound = in_dim**-0.5
        init = keras.initializers.RandomUniform(-bound, bound, seed=seed + 7919 * block)
        a = keras.Variable(init((in_dim, self.rank)), name=f"block_{block}_{target}_lora_a")
        b = keras.Variable(tf.zeros((self.rank, out_dim)), name=f"block_{block}_{target}_lora_b")
        return (a, b)

    @property
    def trainable(self) -> list:
        return [v for pair in self.pairs.values() for v in pair]

    def merge(self) -> None:
        """Adds each delta into its base kernel and detaches the adapters: the model is then a
        plain `TransformerLM` with the effective weights (what generate and export use)."""
        for block in self.model.value.blocks:
            for layer in (block.attention, block.mlp):
                hook = getattr(layer, "_lora", None)
                if hook is None:
                    continue
                for name, slices in layer_slices(layer).items():
                    kernel = getattr(layer, name)
                    in_dim, out_dim = _in_out(layer, name)
                    slices = [(t, w or out_dim) for t, w in slices]
                    delta = tf.reshape(hook.delta(slices, in_dim), kernel.shape)
                    kernel.assign(kernel + tf.cast(delta, kernel.dtype))
                object.__setattr__(layer, "_lora", None)
        object.__setattr__(self.model.value, "_lora_adapters", None)


def _in_out(layer, name: str) -> tuple[int, int]:
    """(in, out) of the 2-D matrix the layer multiplies by for kernel `name`."""
    shape = getattr(layer, name).shape
    if name == "output_kernel" and len(shape) == 3:  # attention's (H, K, D)
        return shape[0] * shape[1], shape[2]
    return shape[0], int(tf.reduce_prod(shape[1:]))


class _Untracked:
    """Holds an object out of tf.Module's sight (the model is not part of the adapters)."""

    def __init__(self, value):
        self.value = value


def trainable_variables(model) -> list:
    """What training updates: the attached adapters, or else the model's trainable variables."""
    adapters = getattr(model, "_lora_adapters", None)
    return adapters.trainable if adapters is not None else model.trainable_variables


@contextlib.contextmanager
def adapters_off(model):
    """Within: `model` computes as its base, without its adapters (DPO's reference model is the
    same weights, no second copy). A switch read when a function is traced, so a compiled step
    can hold both passes."""
    hooks = [
        hook
        for block in model.blocks
        for layer in (block.attention, block.mlp)
        if (hook := getattr(layer, "_lora", None)) is not None
    ]
    for hook in hooks:
        hook.enabled = False
    try:
        yield
    finally:
        for hook in hooks:
            hook.enabled = True


def targets_of(spec: str) -> list[str]:
    return [t.strip() for t in spec.split(",") if t.strip()]


def attach(model, train_cfg) -> Adapters:
    """Freezes `model` and attaches the adapters `train_cfg` (lora_*) asks for."""
    model.trainable = False
    return Adapters(
        model,
        train_cfg.lora_rank,
        train_cfg.lora_alpha,
        train_cfg.lora_dropout,
        targets_of(train_cfg.lora_targets),
        train_cfg.seed,
    )
