"""Quality filters on cleaned text, each off by default and counted under its own name.

    data.min_doc_chars             length: shorter documents are dropped (`dropped_short`)
    data.filter_min_alnum          share of alphanumeric characters among the non-whitespace
                                   ones below this (0 = off) -> `dropped_low_alnum`
    data.filter_max_line_chars     a line longer than this (0 = off) -> `dropped_long_line`
    data.filter_max_repeated_lines share of non-empty lines that repeat an earlier line of the
                                   document above this (1 = off) -> `dropped_repeated_lines`

The repeated-lines and alphanumeric rules are those of Gopher (Rae et al. 2021) and datatrove's
GopherQualityFilter, simplified to characters and lines.
"""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")
_NOT_ALNUM = re.compile(r"[\W_]")


def failed_filter(
    text: str, min_alnum: float, max_line_chars: int, max_repeated_lines: float
) -> str:
    """The drop counter of the first filter `text` fails, or "" when it passes them all."""
    if min_alnum > 0:
        visible = _SPACE.sub("", text)
        symbols = len(_NOT_ALNUM.findall(visible))
        if visible and 1 - symbols / len(visible) < min_alnum:
            return "dropped_low_alnum"
    if max_line_chars > 0 and max(map(len, text.split("\n"))) > max_line_chars:
        return "dropped_long_line"
    if max_repeated_lines < 1:
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if lines and 1 - len(set(lines)) / len(lines) > max_repeated_lines:
            return "dropped_repeated_lines"
    return ""
