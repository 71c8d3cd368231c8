"""The quality guard: a short run of the main job must still train a good model.

Training loss can stay flat while the model gets worse on held-out text (issue 24: shards
packed in file order made the main job see a few alphabetical slices of the stdlib, 12% worse
per byte, and 374 tests passed). This test runs the user's commands on the built-in corpus -
`python -m tfllm.train` (which prepares the data) for STEPS steps of the default tiny config,
then `python -m tfllm.eval --tasks stdlib_bpb` - and checks two things:

- held-out bits per byte below BPB_LIMIT (the measured value with a margin, see there);
- the windows of those STEPS steps come from documents spread over the whole corpus: each
  window is traced to its stdlib file by a line that occurs in no other file, and the files
  found must cover at least MIN_DOCUMENT_SHARE of the train documents and fall in at least
  MIN_PARTS of the PARTS equal stretches (by bytes) of the corpus's file order, none holding
  more than MAX_PART_SHARE of the windows. A slice of the file order fails all three.
"""

from __future__ import annotations

import collections
import itertools
import json
import posixpath

import pytest
import sentencepiece as spm
from commands import run_subprocess

from tfllm.corpus.sources import list_files
from tfllm.data import reader, records, verify
from tfllm.data.layout import split_of

STEPS = 300
BATCH = 16  # the tiny config's train.global_batch_size
# Measured here on 2026-12-06 (Python 3.11.7's stdlib; docs/quality.md): 2.022 bits per byte
# with documents scattered over the shards and shards read 16 at a time, 2.303 with the shards
# in file order (91807f2, the regression). The limit is the good value plus a 5% margin; the
# regression is 14% above the good value.
BPB_LIMIT = 2.12
PARTS = 10
MIN_PARTS = 9  # measured: 10 of 10 with the fix; 1 in file order
MAX_PART_SHARE = 0.2  # of the traced windows in one part; measured 0.11 with the fix, 1.0 sliced
MIN_DOCUMENT_SHARE = 0.3  # of the train documents; measured 0.515 with the fix, 0.052 sliced
MIN_LINE_CHARS = 40  # shorter lines (imports, `return None`) repeat across files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir trained STEPS steps on the built-in corpus, and its dataset directory."""
    root = tmp_path_factory.mktemp("quality")
    workdir = root / "run"
    sets = [
        f"data.root={root / 'data'}",
        f"runtime.workdir={workdir}",
        f"train.steps={STEPS}",
        f"train.eval_every={STEPS}",
        f"train.checkpoint_every={STEPS}",
    ]
    done = run_subprocess("train", *(f"--set={s}" for s in sets), timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    return workdir, str(root / "data" / "stdlib-2k")


@pytest.mark.slow
def test_held_out_bits_per_byte(trained, tmp_path):
    workdir, _ = trained
    done = run_subprocess(
        "eval", f"--workdir={workdir}", "--tasks=stdlib_bpb", f"--output_dir={tmp_path}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / f"results-step-{STEPS}.json").read_text())["results"]
    (bpb,) = [r["value"] for r in results if r["metric"] == "bits_per_byte"]
    assert bpb < BPB_LIMIT, f"held-out stdlib bits per byte {bpb:.3f} >= {BPB_LIMIT}"


def _first_windows(directory: str, count: int) -> list[list[int]]:
    """The token ids of the first `count` windows the trainer reads (seed 0, default block)."""
    manifest = records.read_manifest(directory)
    shards = verify.check_split(directory, manifest, "train", "size", "error")
    stream = reader.global_records(shards, 0, 4096, 0).take(count).batch(count)
    serialized = next(iter(stream))
    tokens = records.parse_batch(serialized, shards.window_len)[records.TOKENS_KEY]
    return tokens.numpy().tolist()


def _train_files() -> tuple[list[str], list[int], dict[str, int]]:
    """The train documents in file order: names, sizes, and each line (of at least
    MIN_LINE_CHARS, stripped) found in exactly one of them -> that document's index."""
    names, sizes, owner = [], [], {}
    for name, path in list_files("stdlib"):
        if split_of(name, 0.02) != "train":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        index = len(names)
        names.append(name)
        sizes.append(len(text.encode("utf-8")))
        for line in {line.strip() for line in text.splitlines()}:
            if len(line) >= MIN_LINE_CHARS:
                owner[line] = index if owner.get(line, index) == index else -1
    return names, sizes, owner


@pytest.mark.slow
def test_first_steps_cover_the_corpus(trained):
    _, directory = trained
    windows = _first_windows(directory, STEPS * BATCH)
    sp = spm.SentencePieceProcessor(model_file=posixpath.join(directory, records.TOKENIZER))
    names, sizes, owner = _train_files()
    traced = []
    for ids in windows:
        lines = sp.decode(ids).splitlines()[1:-1]  # the first and last may be cut
        found = [owner.get(line.strip(), -1) for line in lines]
        found = [index for index in found if index >= 0]
        if found:
            traced.append(found[0])
    assert len(traced) > 0.5 * len(windows), "too few windows traced to a file"
    starts, total = [0, *itertools.accumulate(sizes)], sum(sizes)
    parts = collections.Counter(starts[index] * PARTS // total for index in traced)
    documents = len(set(traced)) / len(names)
    summary = (
        f"{len(set(traced))} of {len(names)} documents ({documents:.3f}), parts of the file "
        f"order {sorted(parts.items())}"
    )
    assert documents >= MIN_DOCUMENT_SHARE, summary
    assert len(parts) >= MIN_PARTS, summary
    assert max(parts.values()) <= MAX_PART_SHARE * len(traced), summary
