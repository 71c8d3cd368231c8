"""safetensors in and out, tensor by tensor, through the family's tensor map.

Import reads one HF tensor at a time into its tfllm variable (peak memory: the model's float32
variables plus one tensor), with plain reads at the offsets of the safetensors header rather
than `safe_open`'s memory map: a mapped file's touched pages count in the process's resident
set until it is closed, which made the import's peak the float32 model plus the whole
checkpoint (benchmarks/convert_bench.py). Export writes shard by shard: `model.safetensors`, or past
`shard_bytes` `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`, as
transformers does; the tensors keep the checkpoint's dtype (float32, bfloat16 or float16).
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from tfllm.hub.families import IGNORED_TENSORS, tensor_map
from tfllm.hub.files import confined, read_header, read_index
from tfllm.hub.hf_config import HubError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_BLOCK_BYTES = 16 << 20
_FORMATS = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}


def _read_tensor(path: str, entry: dict, start: int) -> np.ndarray:
    if entry["dtype"] not in _FORMATS:
        raise HubError(f"{path}: dtype {entry['dtype']} is not read (F32, BF16, F16)")
    dtype = np.dtype(_FORMATS[entry["dtype"]])
    begin, end = entry["data_offsets"]  # checked against the shape and the file's size
    tensor = np.fromfile(path, dtype=dtype, count=(end - begin) // dtype.itemsize,
                         offset=start + begin)  # fmt: skip
    if tensor.size * dtype.itemsize != end - begin:
        raise HubError(f"{path}: truncated")
    return tensor.reshape(entry["shape"])


def weight_files(directory: str) -> dict[str, str]:
    """HF tensor name -> the safetensors file holding it."""
    index = os.path.join(directory, INDEX)
    if os.path.exists(index):
        return read_index(index, directory)
    single = os.path.join(directory, SINGLE)
    if os.path.exists(single):
        single = confined(directory, SINGLE, directory)
        return {name: single for name in read_header(single)[0]}
    if any(n.startswith("pytorch_model") and n.endswith(".bin") for n in os.listdir(directory)):
        raise HubError(
            f"{directory}: only pytorch_model*.bin weights; tfllm reads safetensors (convert "
            "them with transformers: model.save_pretrained(dir, safe_serialization=True))"
        )
    raise HubError(f"{directory}: no {SINGLE} nor {INDEX}")


def _matrix(path: str, shape: tuple) -> tuple:
    """A variable's shape as the (in, out) matrix or the vector that its HF tensors split:
    the attention output kernel (H, K, D) reads H K inputs; every other kernel's leading axis
    is its input."""
    total = int(np.prod(shape))
    if len(shape) == 1:
        return (total,)
    rows = shape[0] * shape[1] if path.endswith("attention/output_kernel") else shape[0]
    return (rows, total // rows)


def _hf_shapes(path: str, kind: str, names: list[str], shape: tuple, model) -> list[tuple]:
    """The HF shape of each part of the tfllm variable `path` of `shape`."""
    matrix = _matrix(path, shape)
    if len(names) == 3:  # Q, K, V: H, KV, KV heads
        h, kv, k = model.config.num_heads, model.kv_heads, model.head_dim
        sizes = [h * k, kv * k, kv * k]
    else:
        sizes = [matrix[-1] // len(names)] * len(names)
    if len(matrix) == 1:
        return [(s,) for s in sizes]
    if kind == "linear":
        return [(s, matrix[0]) for s in sizes]
    return [(matrix[0], s) for s in sizes]


def _variables(model) -> dict:
    return {v.path.split("/", 1)[1]: v for v in model.weights}


def read_weights(directory: str, family: str, model) -> None:
    """Assigns every variable of `model` from the HF safetensors of `directory`."""
    files = weight_files(directory)
    prefix = "transformer." if any(n.startswith("transformer.") for n in files) else ""
    headers = {}

    def reader(name):
        def read():
            file = files[prefix + name]
            if file not in headers:
                headers[file] = read_header(file)
            header, start = headers[file]
            if prefix + name not in header:
                raise HubError(f"{file}: no tensor {prefix + name} (the index says it is here)")
            return _read_tensor(file, header[prefix + name], start), os.path.basename(file)

        return read

    names = [n[len(prefix) :] for n in files]
    assign_weights(model, family, {n: reader(n) for n in names}, directory)


def assign_weights(model, family: str, tensors: dict, origin: str) -> None:
    """Assigns every variable of `model` from `tensors`, {HF name: a function returning (the
    tensor, the file it comes from)}, called once per tensor so that one is in memory at a time.
    Every tensor must be used (a tied checkpoint's lm_head and buffers excepted)."""
    mapping = tensor_map(family, model.config.num_layers)
    used = set()
    for path, variable in _variables(model).items():
        if path not in mapping:
            raise HubError(f"no {family} tensor maps to tfllm variable {path}")
        kind, names = mapping[path]
        expected = _hf_shapes(path, kind, names, tuple(variable.shape), model)
        parts = []
        for name, shape in zip(names, expected, strict=True):
            if name not in tensors:
                raise HubError(f"{origin}: tensor {name} is missing (for {path})")
            tensor, file = tensors[name]()
            if tuple(tensor.shape) != shape:
                raise HubError(
                    f"{file}: tensor {name} has shape {tuple(tensor.shape)}, the config says "
                    f"{shape}"
                )
            parts.append(tensor.T if kind == "linear" else tensor)  # a view: no copy yet
            used.add(name)
        _assign_rows(variable, path, parts)
        del parts
    tied_head = "lm_head.weight" if model.config.tie_embeddings else None
    extra = [
        n for n in tensors if n not in used and n != tied_head and not n.endswith(IGNORED_TENSORS)
    ]
    if extra:
        raise HubError(
            f"{origin}: {len(extra)} tensor(s) tfllm's {family} does not use, e.g. {extra[0]}"
        )


def _assign_rows(variable, path: str, parts: list) -> None:
    """Assigns the (in, out) matrix that `parts` make side by side, a block of leading rows at a
    time, each cast to float32 on its own: the float32 temporaries stay near _BLOCK_BYTES where a
    whole-variable concatenation and its tensor conversion held two more copies of the largest
    variable (the embedding) at once."""
    shape = tuple(variable.shape)
    if len(shape) == 1:
        variable.assign(np.concatenate(parts).astype(np.float32))
        return
    rows_per_lead = _matrix(path, shape)[0] // shape[0]  # (H, K, D): K matrix rows per head
    row_bytes = 4 * int(np.prod(shape[1:]))
    step = max(1, _BLOCK_BYTES // row_bytes)
    target = variable.value  # the backend's variable: a slice assigns in place
    for a in range(0, shape[0], step):
        b = min(shape[0], a + step)
        rows = slice(a * rows_per_lead, b * rows_per_lead)
        block = np.concatenate([p[rows] for p in parts], axis=-1).astype(np.float32)
        target[a:b].assign(block.reshape((b - a, *shape[1:])))


def hf_tensors(family: str, model, dtype: str):
    """Yields (HF name, numpy tensor in `dtype`) for every variable, in model order."""
    mapping = tensor_map(family, model.config.num_layers)
    for path, variable in _variables(model).items():
        kind, names = mapping[path]
        shapes = _hf_shapes(path, kind, names, tuple(variable.shape), model)
        flat = variable.numpy().reshape(_matrix(path, tuple(variable.shape)))
        sizes = [s[0] if (kind == "linear" or len(s) == 1) else s[1] for s in shapes]
        for name, part in zip(names, np.split(flat, np.cumsum(sizes)[:-1], axis=-1), strict=True):
            part = part.T if kind == "linear" else part
            yield name, np.ascontiguousarray(part.astype(DTYPES[dtype]))


def write_weights(directory: str, family: str, model, dtype: str, shard_bytes: int) -> None:
    """Writes the model's tensors into `directory` (one file, or shards with the index)."""
    plan = [[]]  # shards of (name, size): sizes are known before any tensor is converted
    size_of = np.dtype(DTYPES[dtype]).itemsize
    mapping = tensor_map(family, model.config.num_layers)
    shard_size = 0
    for path, variable in _variables(model).items():
        kind, names = mapping[path]
        for name, shape in zip(
            names, _hf_shapes(path, kind, names, tuple(variable.shape), model), strict=True
        ):
            size = int(np.prod(shape)) * size_of
            if plan[-1] and shard_size + size > shard_bytes:
                plan.append([])
                shard_size = 0
            plan[-1].append(name)
            shard_size += size
    if len(plan) == 1:
        path = os.path.join(directory, SINGLE)
        save_file(dict(hf_tensors(family, model, dtype)), path, {"format": "pt"})
        return
    files = [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    shard_of = {name: files[i] for i, names in enumerate(plan) for name in names}
    tensors = hf_tensors(family, model, dtype)
    total = 0
    for i, names in enumerate(plan):
        shard = dict(next(tensors) for _ in names)  # the generator follows the plan's order
        total += sum(t.nbytes for t in shard.values())
        save_file(shard, os.path.join(directory, files[i]), {"format": "pt"})
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(shard_of.items()))}
    with open(os.path.join(directory, INDEX), "w") as f:
        json.dump(index, f, indent=2)
