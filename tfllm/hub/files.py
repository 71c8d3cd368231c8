"""The files of a Hugging Face directory, checked before anything is allocated from them.

An imported directory is someone else's: its `model.safetensors.index.json` may point outside
the directory, a safetensors header may claim 2**62 bytes, a tensor's shape may multiply to
more than the file holds. Everything here is read as untrusted: a header's length is bounded
by the file's size (and `MAX_HEADER`), each entry's dtype, shape and offsets are checked
against each other and against the data present, and every weight file must resolve (symlinks
followed) to a regular file inside the model directory.
"""

from __future__ import annotations

import json
import math
import os

from tfllm.hub.hf_config import HubError

MAX_HEADER = 100 << 20  # the safetensors library's own limit on a header's size
ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
            "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip


def confined(directory: str, name: object, origin: str) -> str:
    """`directory/name` when `name` is a plain relative file name that stays (symlinks
    followed) inside `directory`."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise HubError(f"{origin}: weight file {name!r} is not a file name")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or ".." in parts:
        raise HubError(f"{origin}: weight file {name!r} points outside the model directory")
    path = os.path.join(directory, name)
    root = os.path.realpath(directory)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise HubError(f"{origin}: weight file {name!r} links outside the model directory")
    return path


def read_index(path: str, directory: str) -> dict[str, str]:
    """HF tensor name -> the confined path of its file, from `model.safetensors.index.json`."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        raise HubError(f"{path}: cannot read JSON: {err}") from None
    mapping = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise HubError(f"{path}: no weight_map of tensor names to file names")
    files = {}
    for tensor, name in mapping.items():
        files[tensor] = confined(directory, name, path)
    for file in set(files.values()):
        if not os.path.isfile(file):
            raise HubError(f"{path}: weight file {os.path.basename(file)} does not exist")
    return files


def _entry_error(entry: object, data_bytes: int) -> str | None:
    if not isinstance(entry, dict):
        return "is not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in ITEMSIZE:
        return f"has an unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        return f"has a shape {shape!r} that is not a list of sizes"
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        return f"has data_offsets {offsets!r} outside the file's {data_bytes} data bytes"
    need = math.prod(shape) * ITEMSIZE[dtype]  # Python ints: no overflow
    if offsets[1] - offsets[0] != need:
        return f"of shape {shape} needs {need} bytes, its offsets span {offsets[1] - offsets[0]}"
    return None


def read_header(path: str) -> tuple[dict, int]:
    """A safetensors file's checked header {name: {dtype, shape, data_offsets}} and where its
    data starts."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > min(size - 8, MAX_HEADER):
                raise HubError(
                    f"{path}: not a safetensors file (a header of {length} bytes in a file of "
                    f"{size})"
                )
            header = json.loads(f.read(length))
    except (OSError, ValueError) as err:
        raise HubError(f"{path}: not a safetensors file ({err})") from None
    if not isinstance(header, dict):
        raise HubError(f"{path}: not a safetensors file (its header is not an object)")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        end = offsets[1] if isinstance(offsets, list) and len(offsets) == 2 else None
        if isinstance(end, int) and end > data_bytes:  # a download that stopped half way
            raise HubError(
                f"{path}: truncated (tensor {name} ends at data byte {end}, the file holds "
                f"{data_bytes})"
            )
        problem = _entry_error(entry, data_bytes)
        if problem:
            raise HubError(f"{path}: tensor {name} {problem}")
    return header, 8 + length


def data_bytes(files: set[str]) -> int:
    """The tensor bytes the weight files hold (their headers checked)."""
    total = 0
    for file in files:
        header, start = read_header(file)
        total += sum(e["data_offsets"][1] - e["data_offsets"][0] for e in header.values())
    return total
