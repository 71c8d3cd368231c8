"""The feed-forward layer: gated (SwiGLU, GeGLU) or plain GELU, in the layout the fast path wants.

Shape letters as in `tfllm.model.layers`. The gate and up projections are one (D, 2, F) kernel,
so the forward pass is one matmul; LoRA adapters (`tfllm.model.lora`) add their low-rank terms
to the named slices of its output.
"""

from __future__ import annotations

import keras
from keras import ops

from tfllm.config import ModelConfig
from tfllm.model.primitives import Configured, normal, residual_normal
from tfllm.model.projections import dense


class MLP(Configured, keras.layers.Layer):
    """Feed-forward of `config.activation`: SwiGLU or GeGLU (fused gate and up projections,
    gate first), or plain GELU; biases with `config.bias` (GPT-2)."""

    _lora = None  # LoRA adapters (`tfllm.model.lora`), set while fine-tuning

    def __init__(self, config: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.gates = 1 if config.activation == "gelu" else 2

    def build(self, input_shape):
        c = self.config
        self.input_kernel = self.add_weight(
            name="input_kernel",
            shape=(c.hidden_dim, self.gates, c.intermediate_dim),
            initializer=normal(0.02),
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(c.intermediate_dim, c.hidden_dim),
            initializer=residual_normal(c),
        )
        if c.bias:
            width = self.gates * c.intermediate_dim
            self.input_bias = self.add_weight(
                name="input_bias", shape=(width,), initializer="zeros"
            )
            self.output_bias = self.add_weight(
                name="output_bias", shape=(c.hidden_dim,), initializer="zeros"
            )

    def call(self, x, training=False):
        c = self.config
        width = self.gates * c.intermediate_dim
        projected = dense(x, ops.reshape(self.input_kernel, (c.hidden_dim, width)), training)
        if self._lora is not None:
            names = ("gate", "up") if self.gates == 2 else ("up",)
            slices = [(name, c.intermediate_dim) for name in names]
            projected = self._lora.add(x, projected, slices, training)
        if c.bias:
            projected = projected + self.input_bias
        if self.gates == 2:  # (B, T, 2 F)
            gate, up = ops.split(projected, 2, axis=-1)
            gate = ops.silu(gate) if c.activation == "swiglu" else ops.gelu(gate, True)
            hidden = gate * up
        else:
            hidden = ops.gelu(projected, approximate=True)
        output = dense(hidden, self.output_kernel, training)
        if self._lora is not None:
            output = self._lora.add(hidden, output, [("down", c.hidden_dim)], training)
        return output + self.output_bias if c.bias else output
