"""Deduplication: exact (a hash of the cleaned text) and near-duplicate (MinHash LSH).

The signatures are computed where the text is (the worker processes, `minhash`); the decisions
are taken in one place, in document order (`Deduplicator`), so they do not depend on how many
workers there are. Near-duplicates follow datatrove's defaults: word 5-grams of the lowercased
text, 112 permutations in 14 bands of 8; a document whose band matches a kept one is a candidate,
and is dropped when the two signatures agree on at least `data.minhash_threshold` of their
permutations (the estimated Jaccard similarity of their shingle sets).

Memory grows with the kept documents: 16 bytes each for exact deduplication (about 100 with
Python's set), about 1.5 KB each with near-duplicate removal (the signature and one dict entry
per band). That is the one part of prepare that is not flat in corpus size; past about 10^8
documents, deduplicate in a separate pass (or with Beam) first.
"""

from __future__ import annotations

import re

import numpy as np

_SEED = 1
_WORD = re.compile(r"\w+")


def minhash_permutations(perms: int):
    from datasketch import MinHash

    return MinHash(num_perm=perms, seed=_SEED, scheme="affine32").permutations


def minhash(text: str, ngram: int, permutations) -> np.ndarray:
    """The MinHash signature (uint32 per permutation) of the word n-grams of `text`."""
    from datasketch import MinHash

    words = _WORD.findall(text.lower())
    shingles = {
        " ".join(words[i : i + ngram]).encode() for i in range(max(1, len(words) - ngram + 1))
    }
    sketch = MinHash(
        num_perm=len(permutations[0]), seed=_SEED, permutations=permutations, scheme="affine32"
    )
    sketch.update_batch(sorted(shingles))
    return sketch.hashvalues.astype(np.uint32)


class Deduplicator:
    """Keeps the first of each exact and near duplicate; `added` lists what was kept since the
    last `take_added()`, for a restartable prepare to save."""

    def __init__(self, near: bool, bands: int, threshold: float):
        self.near, self.bands, self.threshold = near, bands, threshold
        self._seen: set[bytes] = set()
        self._tables: list[dict[bytes, int]] = [{} for _ in range(bands)]
        self._signatures: list[np.ndarray] = []
        self._added_keys: list[bytes] = []
        self._added_signatures: list[np.ndarray] = []

    def check(self, key: bytes, signature: np.ndarray | None) -> str:
        """ "" and remembers the document when it is new, else the drop counter's name."""
        if key in self._seen:
            return "dropped_duplicate"
        if self.near and self._near_match(signature):
            return "dropped_near_duplicate"
        self._add(key, signature)
        self._added_keys.append(key)
        if self.near:
            self._added_signatures.append(signature)
        return ""

    def _band_keys(self, signature: np.ndarray) -> list[bytes]:
        return [band.tobytes() for band in np.split(signature, self.bands)]

    def _near_match(self, signature: np.ndarray) -> bool:
        for table, band in zip(self._tables, self._band_keys(signature), strict=True):
            other = table.get(band)
            if other is not None:
                agreement = float(np.mean(self._signatures[other] == signature))
                if agreement >= self.threshold:
                    return True
        return False

    def _add(self, key: bytes, signature: np.ndarray | None) -> None:
        self._seen.add(key)
        if self.near:
            index = len(self._signatures)
            self._signatures.append(signature)
            for table, band in zip(self._tables, self._band_keys(signature), strict=True):
                table.setdefault(band, index)

    def take_added(self) -> tuple[list[bytes], np.ndarray | None]:
        keys, signatures = self._added_keys, self._added_signatures
        self._added_keys, self._added_signatures = [], []
        return keys, (np.stack(signatures) if signatures else None)

    def restore(self, keys: list[bytes], signatures: np.ndarray | None) -> None:
        for i, key in enumerate(keys):
            self._add(key, None if signatures is None else signatures[i])
