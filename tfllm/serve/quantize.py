"""Weight-only int8: every projection and the embedding stored as int8 with a float32 scale per
output channel, dequantized in the graph; activations, norms and the KV cache stay float32.

Symmetric, round to nearest: scale = max |w| over the channel's inputs / 127, q = rint(w / scale)
in [-127, 127], w ~ q * scale. The serving functions run inside a `keras.StatelessScope` that
maps each Keras kernel to its float32 tensor, so the model's own `call` runs unchanged and the
SavedModel keeps its signatures; the stored weights are a quarter of the size.

The float32 tensor comes from a variable that is saved empty (no bytes on disk): the first call
of any signature dequantizes each kernel into it, later calls only read it. TensorFlow has no
CPU matmul over int8 weights, so a generated token costs what it costs in float32 either way,
and dequantizing on every request instead (25M weights on the small config) made int8 slower
than float32 per token (README, "Measured"). The price is memory: once it has served a
request, a loaded int8 export holds the float32 weights as well as the int8 ones (1.25x
float32's RAM).
TF Serving runs the warmup requests of the export at load, so no client request pays it.
"""

from __future__ import annotations

import json
import posixpath

import keras
import numpy as np
import tensorflow as tf

from tfllm.model.lm import TransformerLM

SCHEME = "int8 weight-only, symmetric, per output channel, dequantized in the graph"
QUANTIZATION_ASSET = "assets/quantization.json"


def contraction_axes(path: str, ndim: int) -> tuple[int, ...]:
    """The input axes of a kernel (summed over by its matmul); the others are output channels.

    Every kernel is (inputs..., outputs...) with one input axis, except attention's output
    projection, (H, K, D), which the model reshapes to (H * K, D). The tied embedding is (D, V):
    its columns are both the looked-up vectors and the logits' output channels.
    """
    if path.endswith("attention/output_kernel") and ndim == 3:
        return (0, 1)
    return (0,)


def quantize(weights: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """float weights -> (int8 values of the same shape, float32 scale broadcastable to them)."""
    peak = np.max(np.abs(weights), axis=axes, keepdims=True)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)  # an all-zero channel
    values = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
    return values, scale


def is_quantized(variable) -> bool:
    """Matrices are quantized; the norms' scale vectors stay float32."""
    return len(variable.shape) >= 2


class QuantizedWeights(tf.Module):
    """The int8 values and scales of a model's kernels, and the mapping that serves them."""

    def __init__(self, model: TransformerLM):
        super().__init__(name="int8")
        targets, self.values, self.scales, self.floats, self.layout = [], [], [], [], {}
        for variable in filter(is_quantized, model.weights):
            axes = contraction_axes(variable.path, len(variable.shape))
            values, scale = quantize(np.asarray(variable.numpy()), axes)
            targets.append(variable)
            # Named by path: the TF1 session loader TF Serving uses maps variables by name.
            name = variable.path.replace("/", ".")
            self.values.append(tf.Variable(values, trainable=False, name=f"{name}.int8"))
            self.scales.append(tf.Variable(scale, trainable=False, name=f"{name}.scale"))
            empty = tf.zeros([0], tf.float32)  # the shape None lets the first call fill it
            self.floats.append(
                tf.Variable(
                    empty, shape=tf.TensorShape(None), trainable=False, name=f"{name}.float32"
                )
            )
            self.layout[variable.path] = {"shape": list(variable.shape), "input_axes": list(axes)}
        object.__setattr__(self, "targets", targets)  # Keras variables: never saved

    def state_mapping(self) -> list:
        """(Keras variable, float32 tensor) pairs for `keras.StatelessScope`: the float32
        variables, or the dequantized weights written into them when they are still empty.

        One cond for all the weights, not one per kernel (42 per signature on the small config,
        0.1 MB of graph). The last variable is written after all the others, so a request that
        sees it filled reads filled ones only, even while a concurrent first request writes them.
        """

        def dequantize():
            weights = [
                tf.cast(values, tf.float32) * scale
                for values, scale in zip(self.values, self.scales, strict=True)
            ]
            writes = [
                floats.assign(weight, read_value=False)
                for floats, weight in zip(self.floats[:-1], weights[:-1], strict=True)
            ]
            with tf.control_dependencies(writes):
                last = self.floats[-1].assign(weights[-1], read_value=False)
            with tf.control_dependencies([last]):
                return [tf.identity(weight) for weight in weights]

        def read():
            return [floats.read_value() for floats in self.floats]

        # The variable's shape, not its value: a predicate read by ReadVariableOp was seen to be
        # wrong once grappler lowered the cond to Switch/Merge (true for an empty variable).
        filled = tf.reduce_prod(tf.raw_ops.VariableShape(input=self.floats[-1].handle)) > 0
        weights = tf.cond(filled, read, dequantize)
        # The static shapes Keras checks.
        return [
            (target, tf.reshape(weight, target.shape))
            for target, weight in zip(self.targets, weights, strict=True)
        ]

    def dequantized(self, function):
        """`function` (a tf.function method of a serving module) with the int8 weights."""
        python_function = function.python_function

        def run(module, *args):
            with keras.StatelessScope(state_mapping=self.state_mapping()):
                return python_function(module, *args)

        run.__name__ = python_function.__name__
        return tf.function(run, input_signature=function.input_signature)

    def write_asset(self, saved_model_dir: str, float_weights: list[str]) -> None:
        """Records the scheme and which weights are int8 in assets/quantization.json."""
        record = {"scheme": SCHEME, "int8": self.layout, "float32": float_weights}
        with tf.io.gfile.GFile(posixpath.join(saved_model_dir, QUANTIZATION_ASSET), "w") as f:
            f.write(json.dumps(record, indent=1) + "\n")


def quantized(module_class):
    """A subclass of serving module class `module_class` that stores and serves int8 weights.

    Every tf.function of the class runs with the dequantized weights; the float32 kernels are
    not tracked, so they are not saved (a function that still read one would fail to save).
    """

    class Quantized(module_class):
        def __init__(self, model: TransformerLM, *args, **kwargs):
            super().__init__(model, *args, **kwargs)
            self.int8 = QuantizedWeights(model)
            kept = [variable for variable in model.weights if not is_quantized(variable)]
            self.weights = [variable.value for variable in kept]
            self.float_weights = [variable.path for variable in kept]
            # Instance attributes shadow the class's functions, `signatures()` included.
            for name in dir(module_class):
                function = getattr(module_class, name)
                if isinstance(function, tf.types.experimental.GenericFunction):
                    setattr(self, name, self.int8.dequantized(function).__get__(self, type(self)))

    Quantized.__name__ = f"Quantized{module_class.__name__}"
    return Quantized
