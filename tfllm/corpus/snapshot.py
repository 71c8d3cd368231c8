"""Plain data to bytes and back: JSON for the structure, `.npz` for the arrays, no code.

Prepare's restart state (resume.py) and the Beam runner's per-batch results (beam.py) are
files a later process reads back; Python's object serialization runs whatever code a file
names when it loads it, so a damaged or planted file under `<dataset>/` could execute code.
Here the structure is JSON, every NumPy array a member of one `.npz` read with
`allow_pickle=False`, and only the classes registered below are rebuilt (their `__dict__`
restored, `__init__` not run). One file per value, so it is written with one rename.

Encoded forms: JSON scalars as they are; lists as lists; `{"a": i}` the i-th array,
`{"b": hex}` bytes, `{"t": [...]}` a tuple, `{"d": [[key, value], ...], "k": kind}` a dict
(keys of any type; kind names its class: dict, Counter, CleaningStats, or a defaultdict of
one), `{"o": class name, "f": fields}` a registered object.
"""

from __future__ import annotations

import collections
import io
import json

import numpy as np

from tfllm.errors import DataError

_JSON = "__snapshot__.json"
_CLASSES: dict[str, type] = {}
# defaultdict factories a snapshot may name (the state's counters and dropped samples).
_FACTORIES = {"list": list, "CleaningStats": None}


def register(*classes: type) -> None:
    """Allows objects of these classes (plain attributes only) in a snapshot."""
    for cls in classes:
        _CLASSES[cls.__name__] = cls


def _dict_kind(value: dict) -> str:
    if isinstance(value, collections.defaultdict):
        return "defaultdict:" + value.default_factory.__name__
    return type(value).__name__


def _encode(value, arrays: list):
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray):
        arrays.append(value)
        return {"a": len(arrays) - 1}
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, bytes):
        return {"b": value.hex()}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, tuple):
        return {"t": [_encode(v, arrays) for v in value]}
    if isinstance(value, dict):
        items = [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]
        return {"d": items, "k": _dict_kind(value)}
    name = type(value).__name__
    if _CLASSES.get(name) is not type(value):
        raise TypeError(f"snapshot: {name} is not registered")
    return {"o": name, "f": _encode(vars(value), arrays)}


def _new_dict(kind: str, where: str) -> dict:
    from tfllm.corpus.clean import CleaningStats

    plain = {"dict": dict, "Counter": collections.Counter, "CleaningStats": CleaningStats}
    if kind in plain:
        return plain[kind]()
    factory = kind.removeprefix("defaultdict:")
    if kind.startswith("defaultdict:") and factory in _FACTORIES:
        return collections.defaultdict(_FACTORIES[factory] or CleaningStats)
    raise DataError(f"{where}: unknown dict kind {kind!r}")


def _decode(value, arrays, where: str):
    if isinstance(value, list):
        return [_decode(v, arrays, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "a" in value:
        return arrays[f"a{value['a']}"]
    if "b" in value:
        return bytes.fromhex(value["b"])
    if "t" in value:
        return tuple(_decode(v, arrays, where) for v in value["t"])
    if "d" in value:
        out = _new_dict(value["k"], where)
        for k, v in value["d"]:
            out[_decode(k, arrays, where)] = _decode(v, arrays, where)
        return out
    cls = _CLASSES.get(value.get("o"))
    if cls is None:
        raise DataError(f"{where}: unknown class {value.get('o')!r}")
    obj = cls.__new__(cls)
    obj.__dict__.update(_decode(value["f"], arrays, where))
    return obj


def dumps(value) -> bytes:
    """`value` (JSON types, tuples, bytes, dicts with any keys, NumPy arrays, registered
    objects) as the bytes of one `.npz`."""
    arrays: list[np.ndarray] = []
    structure = json.dumps(_encode(value, arrays)).encode()
    members = {f"a{i}": a for i, a in enumerate(arrays)}
    buffer = io.BytesIO()
    np.savez(buffer, **members, **{_JSON: np.frombuffer(structure, np.uint8)})
    return buffer.getvalue()


def loads(data: bytes, where: str = "snapshot"):
    """The value `dumps` wrote; a file that is not one is a DataError naming `where`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        structure = json.loads(arrays.pop(_JSON).tobytes())
    except (ValueError, KeyError, OSError, EOFError) as err:
        raise DataError(f"{where}: not a snapshot ({err})") from None
    return _decode(structure, arrays, where)
