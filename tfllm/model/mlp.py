"""The feed-forward layer: gated (SwiGLU, GeGLU) or plain GELU, in the layout the fast path wants.

Shape letters as in `tfllm.model.layers`. The gate and up projections are one (D, 2, F) kernel,
so the forward pass is one matmul; LoRA adapters (`tfllm.model.lora`) add their low-rank terms
to the named slices of its output.
"""

from __future__ import annotations

import keras
from keras import ops

from tfllm.model.primitives import normal
from tfllm.model.projections import dense


class MLP(keras.layers.Layer):
    """Feed-forward: SwiGLU or GeGLU (fused gate and up projections, gate first), or plain
    GELU; biases with `bias` (GPT-2)."""

    _lora = None  # LoRA adapters (`tfllm.model.lora`), set while fine-tuning

    def __init__(
        self,
        hidden_dim: int,
        intermediate_dim: int,
        activation: str = "swiglu",
        output_init_std: float = 0.02,
        bias: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.output_init_std = output_init_std
        self.bias = bias
        self.gates = 1 if activation == "gelu" else 2

    def build(self, input_shape):
        self.input_kernel = self.add_weight(
            name="input_kernel",
            shape=(self.hidden_dim, self.gates, self.intermediate_dim),
            initializer=normal(0.02),
        )
        self.output_kernel = self.add_weight(
            name="output_kernel",
            shape=(self.intermediate_dim, self.hidden_dim),
            initializer=normal(self.output_init_std),
        )
        if self.bias:
            width = self.gates * self.intermediate_dim
            self.input_bias = self.add_weight(
                name="input_bias", shape=(width,), initializer="zeros"
            )
            self.output_bias = self.add_weight(
                name="output_bias", shape=(self.hidden_dim,), initializer="zeros"
            )

    def call(self, x, training=False):
        width = self.gates * self.intermediate_dim
        projected = dense(x, ops.reshape(self.input_kernel, (self.hidden_dim, width)), training)
        if self._lora is not None:
            names = ("gate", "up") if self.gates == 2 else ("up",)
            slices = [(name, self.intermediate_dim) for name in names]
            projected = self._lora.add(x, projected, slices, training)
        if self.bias:
            projected = projected + self.input_bias
        if self.gates == 2:  # (B, T, 2 F)
            gate, up = ops.split(projected, 2, axis=-1)
            gate = ops.silu(gate) if self.activation == "swiglu" else ops.gelu(gate, True)
            hidden = gate * up
        else:
            hidden = ops.gelu(projected, approximate=True)
        output = dense(hidden, self.output_kernel, training)
        if self._lora is not None:
            output = self._lora.add(hidden, output, [("down", self.hidden_dim)], training)
        return output + self.output_bias if self.bias else output

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "activation": self.activation,
            "output_init_std": self.output_init_std,
            "bias": self.bias,
        }
