"""What the layers share: their Keras serialization through `ModelConfig`, the initializers,
the norms (RMSNorm, Gemma's (1 + w) RMSNorm, LayerNorm) and rotary positions (with Llama 3.1's
frequency scaling), computed in float32 as Hugging Face does.

Shape letters as in `tfllm.model.layers`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import keras
from keras import ops

from tfllm.config import ModelConfig

_DRAW = [True]  # False inside `weights_to_be_read`


class Configured:
    """Mixed into the model's layers that are built from a `ModelConfig` (their first argument,
    kept as `self.config`): Keras serializes them as the dataclass's fields, so a setting has one
    home and a new one needs no serialization code."""

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(ModelConfig(**config.pop("config")), **config)


def normal(std: float):
    """The initializer of every projection: a normal of standard deviation `std`."""
    return keras.initializers.RandomNormal(stddev=std) if _DRAW[0] else "zeros"


def residual_normal(config: ModelConfig):
    """The initializer of a residual branch's output projection, GPT-2's scaled init: each
    branch's output starts at std 0.02 / sqrt(2L), so the residual stream's variance does not
    grow with depth."""
    return normal(0.02 / math.sqrt(2 * config.num_layers))


@contextlib.contextmanager
def weights_to_be_read():
    """Projections created inside start at zero instead of a random draw: for a model whose
    every weight is read from a checkpoint next (the draws of a 500M-parameter model took about
    27 s of a 100 s import, and a transient copy of its largest tensor)."""
    _DRAW[0] = False
    try:
        yield
    finally:
        _DRAW[0] = True


class RMSNorm(keras.layers.Layer):
    """Layer norm in float32: root-mean-square (`rms`), Gemma's with a (1 + w) scale stored as w
    (`rms_plus_one`), or mean-subtracting with a bias (`layer`, GPT-2's LayerNorm)."""

    def __init__(self, epsilon: float = 1e-5, kind: str = "rms", **kwargs):
        super().__init__(**kwargs)
        self.epsilon, self.kind = epsilon, kind

    def build(self, input_shape):
        ones = "zeros" if self.kind == "rms_plus_one" else "ones"
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer=ones)
        if self.kind == "layer":
            self.bias = self.add_weight(name="bias", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        x32 = ops.cast(x, "float32")
        if self.kind == "layer":
            x32 = x32 - ops.mean(x32, axis=-1, keepdims=True)
        x32 = x32 * ops.rsqrt(ops.mean(ops.square(x32), axis=-1, keepdims=True) + self.epsilon)
        scale = ops.cast(self.scale, "float32")
        x32 = x32 * (1.0 + scale if self.kind == "rms_plus_one" else scale)
        if self.kind == "layer":
            x32 = x32 + ops.cast(self.bias, "float32")
        return ops.cast(x32, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "kind": self.kind}


def rotary_frequencies(config: ModelConfig, head_dim: int):
    """(K/2,) float32 inverse frequencies, as HF computes them, with Llama 3.1's scaling when
    `config.rope_scaling` is llama3."""
    half = head_dim // 2
    inverse_freq = 1.0 / (config.rope_max_wavelength ** (ops.arange(half, dtype="float32") / half))
    if config.rope_scaling != "llama3":
        return inverse_freq
    factor, context = config.rope_scaling_factor, config.rope_original_max_positions
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    wavelength = 2 * math.pi / inverse_freq
    # Long wavelengths are divided by factor, short ones kept, the band between interpolated.
    scaled = ops.where(wavelength > context / low, inverse_freq / factor, inverse_freq)
    smooth = (context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= context / high) & (wavelength <= context / low)
    return ops.where(medium, smoothed, scaled)


def apply_rotary(x, positions, inverse_freq):
    """Rotates (B, T, H, K) queries or keys by their absolute positions (B, T), in HF's
    rotate-half layout (pairs are (i, i + K/2), not adjacent), so HF weights need no permutation.
    """
    half = x.shape[-1] // 2
    angles = ops.cast(positions, "float32")[..., None] * inverse_freq  # (B, T, K/2)
    cos = ops.cast(ops.cos(angles)[:, :, None, :], x.dtype)  # (B, T, 1, K/2)
    sin = ops.cast(ops.sin(angles)[:, :, None, :], x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return ops.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
