"""Prepare's restart state and the Beam batch files: JSON + .npz (snapshot.py), never pickle.

The restart itself (SIGKILL, then the same shards) is tests/test_corpus_scale.py's; the Beam
runner's equality with the local one is tests/test_corpus_beam.py's. Here: a state with every
kind of value comes back equal, and a file that is not a snapshot (a planted pickle) is
refused with one line naming it, without running anything.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle

import numpy as np
import pytest

from tfllm.corpus import resume, snapshot
from tfllm.corpus.clean import CleaningStats
from tfllm.data.packing import DocumentPacker
from tfllm.data.records import ShardWriter
from tfllm.errors import DataError


def _state(tmp_path: pathlib.Path) -> dict:
    packer = DocumentPacker(8)
    packer.add(np.arange(1, 12, dtype=np.int32), np.array([5, 6]))  # one window, 3 carried
    writer = ShardWriter(str(tmp_path), "train", 8, 4)
    writer.write(*packer.add(np.arange(20, 27, dtype=np.int32), np.array([7])))
    sources = collections.defaultdict(CleaningStats)
    sources[0].update(documents=3, dropped_short=1)
    dropped = collections.defaultdict(list)
    dropped["dropped_duplicate"].append({"reason": "dropped_duplicate", "name": "a:1"})
    return {
        "position": 12,
        "moved_to_val": "",
        "sources": sources,
        "splits": {"train": {"packer": packer, "writer": writer, "tokens_in": np.int64(18)}},
        "dropped": dropped,
        "key": b"\x01\x00\x00",  # trailing NUL bytes survive
        "pair": (1, "x"),
    }


def test_a_state_comes_back_equal(tmp_path):
    state = _state(tmp_path)
    checkpoint = resume.Checkpoint(str(tmp_path), "f")
    checkpoint.save(state, [bytes(range(16))], None)
    loaded = checkpoint.load()
    assert loaded.pop("dedup_keys") == [bytes(range(16))]
    assert loaded.pop("dedup_signatures") is None
    assert (loaded.pop("fingerprint"), loaded.pop("deltas")) == ("f", 1)
    assert (tmp_path / ".prepare" / "state.npz").is_file()
    assert loaded["sources"][0] == state["sources"][0] and isinstance(loaded["sources"][5], dict)
    assert loaded["dropped"] == state["dropped"] and loaded["dropped"]["new"] == []
    assert (loaded["key"], loaded["pair"], loaded["position"]) == (b"\x01\x00\x00", (1, "x"), 12)
    old, new = state["splits"]["train"], loaded["splits"]["train"]
    assert type(new["packer"]) is DocumentPacker and type(new["writer"]) is ShardWriter
    for name in ("_tokens", "_segments", "_fill", "_segment"):
        np.testing.assert_array_equal(getattr(new["packer"], name), getattr(old["packer"], name))
    (a, b), (c, d) = old["writer"]._pending[0], new["writer"]._pending[0]
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(b, d)
    # The restored packer goes on exactly as the original.
    more = np.arange(30, 36, dtype=np.int32), np.array([6])
    for x, y in zip(old["packer"].add(*more), new["packer"].add(*more), strict=True):
        np.testing.assert_array_equal(x, y)


class _Planted:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_planted_pickle_is_refused_and_not_run(tmp_path):
    checkpoint = resume.Checkpoint(str(tmp_path), "f")
    checkpoint.save(_state(tmp_path), [], None)
    state = tmp_path / ".prepare" / "state.npz"
    marker = tmp_path / "ran"
    state.write_bytes(pickle.dumps({"fingerprint": _Planted(marker)}))
    with pytest.raises(DataError, match=f"{state}: not a snapshot"):
        checkpoint.load()
    assert not marker.exists()
    # An .npz whose structure names a class that is not registered is refused too.
    buffer = io.BytesIO()
    structure = np.frombuffer(b'{"o": "Popen", "f": {"args": "touch ran"}}', np.uint8)
    np.savez(buffer, **{"__snapshot__.json": structure})
    with pytest.raises(DataError, match="planted: unknown class 'Popen'"):
        snapshot.loads(buffer.getvalue(), "planted")
