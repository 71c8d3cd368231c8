"""The LiteRT (TensorFlow Lite) export: a `.tflite` file for phones and edge devices.

Writes `export/NAME/<version>/`: model.tflite with two signatures (`tfllm.serve.steps`),

    prefill  tokens (B, P), input_pos (P,), kv_cache_k_<i>/kv_cache_v_<i> (B, H, C, K)
             -> logits (B, P, V), kv_cache_k_<i>/kv_cache_v_<i>
    decode   tokens (B, 1), input_pos (1,), the cache -> logits (B, 1, V), the cache

with every shape static (B = --batch, P = --prefill_length, C = --cache_length), tokenizer.model
(the SentencePiece model; the device tokenizes) and tokens.json (the ids a device app needs and
the shapes above). Only TFLITE_BUILTINS ops are allowed: a graph needing a Select TF op fails
here, naming the op, rather than on the device. With int8, the converter's default optimization
stores the weights as int8 (dynamic-range quantization; activations stay float32).
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import tempfile

import tensorflow as tf

from tfllm.errors import TfllmError
from tfllm.runs.trained import load_trained
from tfllm.serve import steps
from tfllm.serve.export import new_version_dir
from tfllm.tokenizers.tokenizer import is_hf_tokenizer, load_tokenizer, specials

logger = logging.getLogger(__name__)

MODEL_FILE = "model.tflite"
TOKENS_FILE = "tokens.json"


class LiteRTError(TfllmError):
    """The graph cannot become a built-ins-only .tflite file, or bad static shapes."""


def convert(module: tf.Module, signatures: dict, quantize_weights: str = "none") -> bytes:
    """The .tflite bytes of `signatures` (name -> concrete function) over `module`'s variables.

    Raises LiteRTError naming every op that is not a TFLite built-in.
    """
    with tempfile.TemporaryDirectory() as saved_model_dir:
        tf.saved_model.save(module, saved_model_dir, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved_model_dir, signature_keys=list(signatures)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize_weights == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        try:
            return converter.convert()
        except Exception as error:  # ConverterError, or a plain one from the MLIR passes
            ops = sorted(set(re.findall(r"'(tf\.\w+)' op is neither a custom op nor", str(error))))
            if not ops:
                raise
            raise LiteRTError(
                f"the LiteRT export needs ops outside TFLITE_BUILTINS: {', '.join(ops)} "
                "(Select TF ops are not allowed: rewrite them with built-in ops)"
            ) from None


def token_ids(batch, prefill_length, cache_length: int, model, tokenizer_path: str) -> dict:
    """tokens.json: the ids and shapes a device app needs besides the tokenizer."""
    ids = specials(load_tokenizer(tokenizer_path))
    return {
        "start_ids": list(ids.start),  # the SavedModel's prompt rule
        "eos_id": ids.stop[0] if ids.stop else None,
        "stop_ids": list(ids.stop),
        "pad_id": ids.pad,
        "tokenizer": posixpath.basename(tokenizer_path),
        "vocabulary_size": model.config.vocabulary_size,
        "batch": batch,
        "prefill_length": prefill_length,
        "cache_length": cache_length,
        "kv_cache": steps.cache_names(model.config.num_layers),
        "kv_cache_shape": [batch, model.kv_heads, cache_length, model.head_dim],
    }


def copy_tokenizer(tokenizer_path: str, directory: str) -> None:
    """The tokenizer file under its own name (tokenizer.model or tokenizer.json), with the
    Hugging Face files that say how it adds BOS/EOS when there are any."""
    source = posixpath.dirname(tokenizer_path)
    names = [posixpath.basename(tokenizer_path)]
    if is_hf_tokenizer(tokenizer_path):
        names += ["tokenizer_config.json", "generation_config.json", "special_tokens_map.json"]
    for name in names:
        if tf.io.gfile.exists(posixpath.join(source, name)):
            tf.io.gfile.copy(posixpath.join(source, name), posixpath.join(directory, name))


def export_litert(
    workdir: str,
    export_dir: str,
    version: int | None = None,
    batch: int = 1,
    prefill_length: int = 64,
    cache_length: int | None = None,
    quantize_weights: str = "none",
) -> str:
    """Writes model.tflite, tokenizer.model and tokens.json; returns the version directory."""
    final = new_version_dir(export_dir, version)
    trained = load_trained(workdir)
    model = trained.model
    cache_length = model.config.max_sequence_length if cache_length is None else cache_length
    if not 1 <= cache_length <= model.config.max_sequence_length:
        raise LiteRTError(
            f"--cache_length must be in [1, {model.config.max_sequence_length}], got {cache_length}"
        )
    if not 1 <= prefill_length <= cache_length:
        raise LiteRTError(f"--prefill_length must be in [1, {cache_length}], got {prefill_length}")
    if batch < 1:
        raise LiteRTError(f"--batch must be at least 1, got {batch}")
    module = tf.Module()
    module.weights = [variable.value for variable in model.weights]  # not the Keras model
    signatures = {
        "prefill": steps.step_function(model, batch, prefill_length, cache_length),
        "decode": steps.step_function(model, batch, 1, cache_length),
    }
    flatbuffer = convert(
        module,
        {name: fn.get_concrete_function() for name, fn in signatures.items()},
        quantize_weights,
    )
    temporary = posixpath.join(export_dir, f".tmp-{posixpath.basename(final)}")
    tf.io.gfile.makedirs(temporary)
    with tf.io.gfile.GFile(posixpath.join(temporary, MODEL_FILE), "wb") as f:
        f.write(flatbuffer)
    copy_tokenizer(trained.tokenizer_path, temporary)
    ids = token_ids(batch, prefill_length, cache_length, model, trained.tokenizer_path)
    with tf.io.gfile.GFile(posixpath.join(temporary, TOKENS_FILE), "w") as f:
        f.write(json.dumps({**ids, "weights": quantize_weights}, indent=1) + "\n")
    tf.io.gfile.rename(temporary, final)
    logger.info(
        f"exported {trained.checkpoint} to {final}/{MODEL_FILE} ({len(flatbuffer):,} bytes)"
    )
    return final
