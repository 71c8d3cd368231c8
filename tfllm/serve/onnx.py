"""The ONNX export (optional: `pip install tfllm[onnx]`, tf2onnx and onnxruntime).

Writes `export/NAME/<version>/`: logits.onnx and decode.onnx, converted with
`tf2onnx.convert.from_function`, tokenizer.model and tokens.json (`tfllm.serve.litert`'s ids).

    logits.onnx  token_ids (B, T) int32 -> logits (B, T, V) float32
    decode.onnx  tokens (B, T), input_pos (T,), kv_cache_k_<i>/kv_cache_v_<i> (B, H, C, K)
                 -> logits (B, T, V), present_kv_cache_k_<i>/present_kv_cache_v_<i>
                 (`tfllm.serve.steps`; an ONNX output may not share an input's name)

B and T are free; C is --cache_length. `decode` with T > 1 is a prefill. The SavedModel's
`serving_default` does not convert (a `tf.while_loop` over string ops and stateless sampling),
so the caller tokenizes (the `sentencepiece` package with tokenizer.model, or
onnxruntime-extensions' SentencepieceTokenizer) and runs the loop.
"""

from __future__ import annotations

import json
import logging
import posixpath

import tensorflow as tf

from tfllm.errors import TfllmError
from tfllm.runs.trained import load_trained
from tfllm.serve import steps
from tfllm.serve.export import new_version_dir
from tfllm.serve.litert import TOKENS_FILE, copy_tokenizer, token_ids

logger = logging.getLogger(__name__)

OPSET = 17
PRESENT = "present_"  # the updated caches: present_kv_cache_k_0, ...


def export_onnx(
    workdir: str,
    export_dir: str,
    version: int | None = None,
    cache_length: int | None = None,
) -> str:
    """Writes logits.onnx, decode.onnx, tokenizer.model, tokens.json; returns the directory."""
    try:
        import tf2onnx
    except ImportError:
        raise TfllmError("--format onnx needs tf2onnx: pip install 'tfllm[onnx]'") from None
    final = new_version_dir(export_dir, version)
    trained = load_trained(workdir)
    model = trained.model
    cache_length = model.config.max_sequence_length if cache_length is None else cache_length
    if not 1 <= cache_length <= model.config.max_sequence_length:
        raise TfllmError(
            f"--cache_length must be in [1, {model.config.max_sequence_length}], got {cache_length}"
        )

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")])
    def logits(token_ids):
        return {"logits": model(token_ids)}

    functions = {
        "logits": logits,
        "decode": steps.step_function(model, cache_length=cache_length, output_prefix=PRESENT),
    }
    temporary = posixpath.join(export_dir, f".tmp-{posixpath.basename(final)}")
    tf.io.gfile.makedirs(temporary)
    for name, function in functions.items():
        tf2onnx.convert.from_function(
            function,
            input_signature=function.input_signature,
            opset=OPSET,
            output_path=posixpath.join(temporary, f"{name}.onnx"),
        )
    copy_tokenizer(trained.tokenizer_path, temporary)
    ids = token_ids(None, None, cache_length, model, trained.tokenizer_path)
    with tf.io.gfile.GFile(posixpath.join(temporary, TOKENS_FILE), "w") as f:
        f.write(json.dumps(ids, indent=1) + "\n")
    tf.io.gfile.rename(temporary, final)
    logger.info(f"exported {trained.checkpoint} to {final} (logits.onnx, decode.onnx)")
    return final
