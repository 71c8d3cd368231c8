"""Byte-level BPE as TensorFlow ops: reading the pre-tokenizer, its split, the merge loop.

Everything here runs in a graph (tf.data, a SavedModel) with core TF ops plus tensorflow-text's
`regex_split`, so a SavedModel needs only `tensorflow` and `tensorflow_text` to tokenize.

Hugging Face `tokenizers` compiles pre-tokenizer patterns with Oniguruma; TF has RE2, which
differs in two ways that matter here, both translated (and proved equal by
tests/test_tokenizers_hf.py on fuzzed text):

- `\\s` is ASCII-only in RE2 but Unicode `White_Space` in Oniguruma (NBSP, U+3000, ...): it is
  rewritten to the explicit class `[\\x{9}-\\x{d}\\x{85}\\p{Z}]`.
- RE2 has no lookahead. GPT-2, Llama 3 and Qwen2 all end their pattern with
  `A|\\s+(?!\\S)|\\s+`: at a whitespace run that A cannot start, take the run minus its last
  character when a non-space follows (that character then starts the next piece), else the whole
  run. The equivalent RE2 pattern is `A|\\s` (one whitespace character per piece) followed by a
  join: consecutive pieces that A did not produce are one run, and the run's last character
  stays alone only when a non-space piece follows it. This holds because in those patterns A
  cannot match inside a whitespace run where it failed at the run's start (A's whitespace
  alternatives need a newline, or a non-space right after one optional space), so both
  engines see the same run. Any other lookaround is refused.
"""

from __future__ import annotations

import re

import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.errors import DataError

# Oniguruma's Unicode `\s` (White_Space): U+0009-U+000D, U+0085 and the separators Zs, Zl, Zp.
_WHITESPACE = r"\x{9}-\x{d}\x{85}\p{Z}"
_LOOKAHEAD_TAIL = r"|\s+(?!\S)|\s+"
# The split that ByteLevel(use_regex=true) applies: GPT-2's pattern, fixed in `tokenizers`.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
NO_MERGE = 2**31 - 1  # int32 rank of a pair that is not in the merge list
_NORMALIZERS = {"NFC", "NFKC", "NFD", "NFKD"}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


def _rewrite_whitespace(pattern: str) -> str:
    """`\\s` and `\\S` in Oniguruma's Unicode sense, spelled for RE2."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            escape = pattern[i : i + 2]
            if escape == r"\s":
                out.append(_WHITESPACE if in_class else f"[{_WHITESPACE}]")
            elif escape == r"\S" and not in_class:
                out.append(f"[^{_WHITESPACE}]")
            elif escape == r"\S":
                raise DataError(r"pre-tokenizer pattern: \S inside a class is not supported")
            else:
                out.append(escape)
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
        elif ch == "]" and in_class and pattern[i - 1] not in "[^":
            in_class = False
        out.append(ch)
        i += 1
    return "".join(out)


class SplitStep:
    """One `Split(pattern, behavior=Isolated)`: every match and every gap becomes a piece."""

    def __init__(self, pattern: str):
        self.source = pattern
        self.lookahead = pattern.endswith(_LOOKAHEAD_TAIL)
        head = pattern[: -len(_LOOKAHEAD_TAIL)] if self.lookahead else pattern
        if any(token in head for token in ("(?=", "(?!", "(?<")):
            raise DataError(f"pre-tokenizer pattern {pattern!r}: lookaround RE2 cannot run")
        self.head = _rewrite_whitespace(head)
        self.pattern = f"{self.head}|[{_WHITESPACE}]" if self.lookahead else self.head

    def __call__(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """(N,) strings -> (N, None) pieces."""
        pieces = tf_text.regex_split(texts, self.pattern, self.pattern)
        return self._join_runs(pieces) if self.lookahead else pieces

    def _join_runs(self, pieces: tf.RaggedTensor) -> tf.RaggedTensor:
        flat, rows = pieces.flat_values, pieces.value_rowids()
        size = tf.size(flat, out_type=rows.dtype)
        # A one-character whitespace piece that the head cannot match came from the fallback
        # (the head would have won at that position, since RE2 takes alternatives in order).
        fallback = tf.strings.regex_full_match(flat, f"[{_WHITESPACE}]") & tf.logical_not(
            tf.strings.regex_full_match(flat, f"(?:{self.head})")
        )
        starts_space = tf.strings.regex_full_match(flat, f"(?s)[{_WHITESPACE}].*")

        def ahead(x, k):  # x[i + k], or False past the end
            return tf.concat([x[k:], tf.zeros_like(x[:k])], 0)

        def same_row(k):
            return (ahead(rows, k) == rows) & (tf.range(size) + k < size)

        # Join piece i to i+1 when both are fallback whitespace, unless i+1 is the run's last
        # character and a non-space piece follows it (the lookahead's backtrack).
        join = (
            fallback
            & ahead(fallback, 1)
            & same_row(1)
            & (tf.logical_not(same_row(2)) | ahead(starts_space, 2))
        )
        starts = tf.logical_not(tf.concat([tf.zeros_like(join[:1]), join], 0)[:size])
        segment = tf.cumsum(tf.cast(starts, tf.int64)) - 1
        count = tf.reduce_sum(tf.cast(starts, tf.int64))
        joined = tf.strings.unsorted_segment_join(flat, segment, count)
        return tf.RaggedTensor.from_value_rowids(
            joined, tf.boolean_mask(rows, starts), nrows=pieces.nrows()
        )


def flatten(spec: dict | None, key: str) -> list[dict]:
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [s for inner in spec.get(key, []) for s in flatten(inner, key)]
    return [spec]


def pre_tokenizer_steps(spec: dict | None, source: str) -> list:
    """The pre-tokenizer as splitting steps: SplitStep or "prefix_space", in order."""
    steps, byte_level = [], False
    for part in flatten(spec, "pretokenizers"):
        kind = part.get("type")
        if kind == "Split":
            pattern = part.get("pattern", {})
            regex = pattern.get("Regex", re.escape(pattern.get("String", "")))
            if part.get("behavior") != "Isolated" or part.get("invert"):
                raise DataError(
                    f"{source}: pre_tokenizer Split: only behavior Isolated, invert false"
                )
            try:
                steps.append(SplitStep(regex))
            except DataError as err:
                raise DataError(f"{source}: {err}") from None
        elif kind == "ByteLevel":
            byte_level = True
            if part.get("add_prefix_space"):
                steps.append("prefix_space")
            if part.get("use_regex", True):
                steps.append(SplitStep(GPT2_PATTERN))
        else:
            raise DataError(f"{source}: pre_tokenizer {kind!r} not supported (Split, ByteLevel)")
    if not byte_level:
        raise DataError(f"{source}: pre_tokenizer has no ByteLevel step (not byte-level BPE)")
    return steps


def normalization(spec: dict | None, source: str) -> str | None:
    kinds = [part.get("type") for part in flatten(spec, "normalizers")]
    if len(kinds) > 1 or (kinds and kinds[0] not in _NORMALIZERS):
        raise DataError(
            f"{source}: normalizer {kinds} not supported (one of {sorted(_NORMALIZERS)})"
        )
    return kinds[0] if kinds else None


def merge(
    dense: tf.Tensor, ranks: tf.lookup.StaticHashTable, results: tf.Tensor, width: int
) -> tf.RaggedTensor:
    """Applies BPE merges to each word: (W, L) symbol ids, -1 after the end -> (W, None) ids.

    Each step merges, in every word at once, the pair with the lowest rank (the leftmost if it
    occurs twice), as `tokenizers`' priority queue does. A pair (a, b) is keyed a * width + b;
    `results[rank]` is the id the merge produces.
    """
    length = tf.shape(dense)[1]
    cols = tf.range(length)
    results = tf.concat([results, [-1]], 0)  # a valid gather index when no merge is found

    def step(dense, _):
        left, right = dense[:, :-1], dense[:, 1:]  # (W, L-1)
        keys = tf.cast(left, tf.int64) * width + tf.cast(right, tf.int64)
        rank = tf.where((left >= 0) & (right >= 0), ranks.lookup(keys), NO_MERGE)
        best_rank = tf.reduce_min(rank, axis=1)  # (W,)
        active = best_rank < NO_MERGE
        best = tf.reduce_min(tf.where(rank == best_rank[:, None], cols[:-1], length), axis=1)
        merged = tf.gather(results, tf.where(active, best_rank, tf.size(results) - 1))
        shifted = tf.concat([dense[:, 1:], -tf.ones_like(dense[:, :1])], 1)
        at, col = best[:, None], cols[None, :]
        new = tf.where(col < at, dense, tf.where(col == at, merged[:, None], shifted))
        return tf.where(active[:, None], new, dense), tf.reduce_any(active)

    dense, _ = tf.while_loop(
        lambda _, go: go,
        step,
        [dense, tf.constant(True)],
        shape_invariants=[tf.TensorShape([None, None]), tf.TensorShape([])],
    )
    return tf.RaggedTensor.from_tensor(dense, padding=-1)
