"""The SavedModel export: a TF Serving model version from a training workdir.

Writes `export/NAME/<version>/` (the next integer by default): saved_model.pb, variables/,
assets/ (the resolved config.yaml and tokenizer.model; with int8 weights also
quantization.json, see `tfllm.serve.quantize`) and assets.extra/ (tf_serving_warmup_requests,
batching_parameters.pbtxt). The version is written under a temporary name and renamed into
place, so a server watching export/NAME never loads a half-written model.
Signatures and request limits: see `tfllm.serve.module` and `tfllm.serve.batching`
(`generate_batched`). The LiteRT and ONNX formats: `tfllm.serve.litert`, `tfllm.serve.onnx`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import posixpath

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tfllm import resources
from tfllm.errors import TfllmError
from tfllm.runs.trained import load_trained
from tfllm.serve import batching, quantize
from tfllm.serve.module import GENERATE_DEFAULTS
from tfllm.tokenizers.tokenizer import EOS_ID

logger = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("none", "int8")

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"


def next_version(export_dir: str) -> int:
    """One more than the largest integer version under export_dir (1 when there is none)."""
    return max(map(int, _versions(export_dir)), default=0) + 1


@contextlib.contextmanager
def unique_variable_names():
    """Gives every tf.Variable created inside a distinct name.

    Keras 3 names a variable by its short name ("output_kernel"), so several variables share
    one name. TF2 loading does not care, but the TF1 session loader that TF Serving uses maps
    variables by name, and duplicates there fail with "Could not find variable ...".
    Checkpoints match variables by object path, so restoring is unaffected.
    """
    seen = collections.Counter()

    def creator(next_creator, **kwargs):
        name = kwargs.get("name") or "Variable"
        seen[name] += 1
        if seen[name] > 1:
            kwargs["name"] = f"{name}_{seen[name] - 1}"
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        yield


def make_inputs_optional(saved_model_dir: str, signature: str, defaults: dict) -> None:
    """Turns the signature's input placeholders in `defaults` into PlaceholderWithDefault.

    TF Serving and the TF1 session loader feed a signature by tensor name; a plain Placeholder
    that a request leaves out fails with "You must feed a value for placeholder tensor". TF2's
    `tf.saved_model.load` calls the traced functions instead and still takes every input.
    """
    path = posixpath.join(saved_model_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    meta_graph = saved_model.meta_graphs[0]
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    for key, value in defaults.items():
        node = nodes[meta_graph.signature_def[signature].inputs[key].name.split(":")[0]]
        default = meta_graph.graph_def.node.add(name=f"{node.name}/default", op="Const")
        default.attr["dtype"].CopyFrom(node.attr["dtype"])
        default.attr["value"].tensor.CopyFrom(
            tf.make_tensor_proto(value, tf.dtypes.as_dtype(node.attr["dtype"].type))
        )
        node.op = "PlaceholderWithDefault"
        node.input.append(default.name)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())


def warmup_requests(model_name: str, max_new_tokens: int) -> list:
    """PredictionLog records that exercise each signature once, defaults included."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    requests = [
        ("serving_default", {"prompts": tf.constant(["def ", ""])}),
        (
            "serving_default",
            {
                "prompts": tf.constant(["import "]),
                "max_new_tokens": tf.constant(max_new_tokens),
                "temperature": tf.constant(0.8),
                "top_k": tf.constant(40),
                "top_p": tf.constant(0.95),
                "seed": tf.constant(1, tf.int64),
            },
        ),
        (
            "generate_batched",
            {
                "prompts": tf.constant(["def ", "import "]),
                "max_new_tokens": tf.constant([max_new_tokens, 1]),
                "temperature": tf.constant([0.0, 0.8]),
                "top_k": tf.constant([0, 40]),
                "top_p": tf.constant([1.0, 0.95]),
                "seed": tf.constant([0, 1], tf.int64),
            },
        ),
        ("score", {"texts": tf.constant(["def f(x):\n    return x\n"])}),
        ("logits", {"token_ids": tf.constant([[EOS_ID, EOS_ID]], tf.int32)}),
    ]
    logs = []
    for signature, inputs in requests:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def _versions(export_dir: str) -> list[str]:
    if not tf.io.gfile.isdir(export_dir):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(export_dir))
    return sorted((n for n in names if n.isdigit()), key=int)


def new_version_dir(export_dir: str, version: int | None) -> str:
    """export_dir/<version> (the next integer by default), refused when it exists."""
    version = next_version(export_dir) if version is None else version
    if version < 1:
        raise TfllmError(f"--version must be a positive integer, got {version}")
    final = posixpath.join(export_dir, str(version))
    if tf.io.gfile.exists(final):
        raise TfllmError(f"{final} already exists; pick another --version")
    return final


def export(
    workdir: str,
    export_dir: str,
    version: int | None = None,
    quantize_weights: str = "none",
) -> str:
    """Exports the latest checkpoint of `workdir`; returns the version directory.

    `quantize_weights`: "none" (float32) or "int8" (weight-only, `tfllm.serve.quantize`).
    """
    if quantize_weights not in QUANTIZE_CHOICES:
        raise TfllmError(f"--quantize must be one of {QUANTIZE_CHOICES}, got {quantize_weights}")
    final = new_version_dir(export_dir, version)
    with unique_variable_names():
        trained = load_trained(workdir)
    cfg, model, tokenizer_path = trained.cfg, trained.model, trained.tokenizer_path
    # Not a number, so TF Serving ignores it until the rename.
    temporary = posixpath.join(
        posixpath.dirname(final), f".tmp-{posixpath.basename(final)}-{os.getpid()}"
    )
    module_class = batching.BatchingServingModule
    if quantize_weights == "int8":
        module_class = quantize.quantized(module_class)
    module = module_class(model, tokenizer_path, posixpath.join(workdir, "config.yaml"))
    max_new_tokens = min(cfg.train.sample_tokens, module.max_new_tokens_limit)
    kept = ", ".join(_versions(export_dir)) or "none"
    what = f"export version {posixpath.basename(final)}"
    try:
        with resources.guarded(what, export_dir, f"the existing versions ({kept})"):
            tf.saved_model.save(module, temporary, signatures=module.signatures())
            make_inputs_optional(
                temporary,
                "serving_default",
                {"max_new_tokens": max_new_tokens, **GENERATE_DEFAULTS},
            )
            if quantize_weights == "int8":
                module.int8.write_asset(temporary, module.float_weights)
            tf.io.gfile.makedirs(posixpath.join(temporary, "assets.extra"))
            with tf.io.TFRecordWriter(posixpath.join(temporary, WARMUP_FILE)) as writer:
                for record in warmup_requests(posixpath.basename(export_dir.rstrip("/")), 4):
                    writer.write(record.SerializeToString())
            batching.write_batching_parameters(temporary)
            tf.io.gfile.rename(temporary, final)
    except BaseException:
        resources.remove_tree(temporary)  # nothing half-written where TF Serving looks
        raise
    logger.info(
        f"exported {trained.checkpoint} to {final} (weights {quantize_weights}, "
        f"default max_new_tokens {max_new_tokens})"
    )
    return final
