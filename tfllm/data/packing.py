"""Pack token ids into fixed windows of `seq_len + 1` tokens, one document batch at a time.

    concat     documents, each followed by EOS, form one stream cut into windows; the tail that
               fills no window is dropped and counted
    document   a document that fits in the rest of a window goes there, otherwise the window is
               padded (segment 0) and the document starts the next one; a document longer than a
               window fills the rest of the current one and continues in the next. Every window
               stores segment ids (1, 2, ... per document part in the window), so attention
               never crosses documents; the last window is padded, nothing is dropped

In both modes tokens_in == tokens_written + tokens_dropped, exactly (padding is not a token).
"""

from __future__ import annotations

import numpy as np


class ConcatPacker:
    """Cuts the stream of ids into full windows; keeps the remainder for the next call."""

    def __init__(self, window_len: int):
        self.window_len = window_len
        self._carry = np.zeros([0], np.int32)

    def add(self, flat: np.ndarray, row_lengths: np.ndarray) -> tuple[np.ndarray, None]:
        del row_lengths  # document boundaries are the EOS tokens already in the stream
        stream = np.concatenate([self._carry, flat])
        full = stream.size // self.window_len * self.window_len
        self._carry = stream[full:]
        return stream[:full].reshape(-1, self.window_len), None

    def tail(self) -> np.ndarray:
        """The ids carried over to the next window (fewer than window_len)."""
        return self._carry

    def finish(self) -> tuple[np.ndarray, None, int]:
        """Returns (no windows, None, tokens dropped): the tail is too short for a window."""
        return np.zeros([0, self.window_len], np.int32), None, int(self._carry.size)


class DocumentPacker:
    """Places each document part in one window with its own segment id."""

    def __init__(self, window_len: int):
        self.window_len = window_len
        self._tokens = np.zeros([window_len], np.int32)
        self._segments = np.zeros([window_len], np.int32)
        self._fill = 0
        self._segment = 0

    def _close(self, out_tokens: list, out_segments: list) -> None:
        out_tokens.append(self._tokens.copy())
        out_segments.append(self._segments.copy())
        self._tokens[:] = 0
        self._segments[:] = 0
        self._fill = self._segment = 0

    def add(self, flat: np.ndarray, row_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out_tokens: list[np.ndarray] = []
        out_segments: list[np.ndarray] = []
        offsets = np.concatenate([[0], np.cumsum(row_lengths)])
        for start, end in zip(offsets[:-1], offsets[1:], strict=True):
            doc = flat[start:end]
            space = self.window_len - self._fill
            # A document that would fit a window of its own is not cut: pad and move on.
            if self._fill and space < doc.size <= self.window_len:
                self._close(out_tokens, out_segments)
            while doc.size:
                take = min(doc.size, self.window_len - self._fill)
                self._segment += 1
                self._tokens[self._fill : self._fill + take] = doc[:take]
                self._segments[self._fill : self._fill + take] = self._segment
                self._fill += take
                doc = doc[take:]
                if self._fill == self.window_len:
                    self._close(out_tokens, out_segments)
        return self._stack(out_tokens, out_segments)

    def _stack(self, tokens: list, segments: list) -> tuple[np.ndarray, np.ndarray]:
        if not tokens:
            empty = np.zeros([0, self.window_len], np.int32)
            return empty, empty
        return np.stack(tokens), np.stack(segments)

    def finish(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Pads and returns the last partial window; nothing is dropped."""
        tokens: list[np.ndarray] = []
        segments: list[np.ndarray] = []
        if self._fill:
            self._close(tokens, segments)
        return *self._stack(tokens, segments), 0
