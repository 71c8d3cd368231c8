"""Requests that share a context (the choices of one multiple-choice question) run it once.

A batch of Q questions' contexts is run through the model with its KV cache (left-padded, as
generation's prefill), the cache is repeated for each of a question's K choices, and the
choices run from it: 4 choices of 10 tokens after 100 context tokens cost 140 token positions
instead of 440, and vocabulary-wide logits at 40 of them instead of 440. The numbers equal
scoring each (context, choice) sequence whole (the same causal attention; tests/test_eval.py
checks 1e-4).

Only an in-process model has a cache to share; an export's `logits` signature scores whole
sequences (`Engine.score_sequences`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfllm.tokenizers.tokenizer import PAD_ID

_CONTEXT_STEP = 32  # padded context widths: multiples of this (few compiled shapes)
_CHOICE_STEP = 8  # padded choice widths


def is_greedy(logits, targets):
    """Whether each target is the argmax of its logits (B, T): its logit is the largest (a
    tie counts). Measured on CPU with XLA, `tf.argmax` over the vocabulary made the whole
    scoring step about 1.5x slower; a max reduction costs about nothing next to the softmax."""
    chosen = tf.gather(logits, targets, batch_dims=2)
    return chosen >= tf.reduce_max(logits, axis=-1)


def _round_up(n: int, step: int) -> int:
    return max(-(-n // step) * step, step)


class SharedScorer:
    """Scores groups of continuations after one shared context each."""

    def __init__(self, model, batch_size: int, jit_compile: bool = True):
        self.model, self.batch_size = model, batch_size
        self._score = tf.function(self._score_fn, jit_compile=jit_compile)

    def _score_fn(self, context, start, inputs, targets, weights):
        """context (Q, W): each context but its last token, left-padded, start (Q,) padding
        columns; inputs (Q*K, C): the context's last token, then each choice but its last,
        right-padded; targets (the choices) and weights (Q*K, C)."""
        model = self.model
        questions, width = context.shape
        choices = inputs.shape[0] // questions
        positions = tf.maximum(tf.range(width)[None, :] - start[:, None], 0)
        cache = model.empty_cache(questions, width + inputs.shape[1])
        # Only the cache is used: XLA drops the output head (vocabulary-wide logits at every
        # context position, the largest matmul of a small model). The context's last token
        # runs with the choices, so its logits are computed only where they are scored.
        _, cache = model(
            context, positions=positions, cache=cache, cache_index=0, cache_start=start
        )
        cache = tuple((tf.repeat(k, choices, 0), tf.repeat(v, choices, 0)) for k, v in cache)
        start = tf.repeat(start, choices, 0)
        # Padding past the model's last position is clamped (never scored, and it comes last).
        positions = (width - start)[:, None] + tf.range(inputs.shape[1])[None, :]
        positions = tf.minimum(positions, model.config.max_sequence_length - 1)
        logits, _ = model(
            inputs, positions=positions, cache=cache, cache_index=width, cache_start=start
        )
        logp = -tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        greedy = is_greedy(logits, targets)
        return (
            tf.reduce_sum(logp * weights, axis=-1),
            tf.reduce_all(greedy | (weights == 0.0), axis=-1),
        )

    def score(
        self,
        groups: Sequence[tuple[list[int], list[list[int]]]],
        progress,
    ) -> list[list[tuple[float, bool]]]:
        """(context tokens, [continuation tokens, ...]) groups -> (log-likelihood, is greedy)
        per continuation. Each context has at least two tokens, each continuation at least
        one, and context + continuation fits max_sequence_length + 1 tokens."""
        order = sorted(range(len(groups)), key=lambda g: -len(groups[g][0]))
        results: list = [None] * len(groups)
        for low in range(0, len(order), self.batch_size):
            chunk = order[low : low + self.batch_size]
            choices = max(len(groups[g][1]) for g in chunk)  # a batch's rows: questions x this
            width = min(
                _round_up(max(len(groups[g][0]) - 1 for g in chunk), _CONTEXT_STEP),
                self.model.config.max_sequence_length,
            )
            inner = _round_up(max(len(c) for g in chunk for c in groups[g][1]), _CHOICE_STEP)
            rows = self.batch_size * choices
            context = np.full((self.batch_size, width), PAD_ID, np.int32)
            start = np.full((self.batch_size,), width - 1, np.int32)  # unused rows: one token
            inputs = np.full((rows, inner), PAD_ID, np.int32)
            targets = np.full((rows, inner), PAD_ID, np.int32)
            weights = np.zeros((rows, inner), np.float32)
            for q, g in enumerate(chunk):
                tokens, conts = groups[g]
                head = tokens[:-1]
                context[q, width - len(head) :], start[q] = head, width - len(head)
                for j, cont in enumerate(conts):
                    row = q * choices + j
                    inputs[row, : len(cont)] = [tokens[-1], *cont[:-1]]
                    targets[row, : len(cont)], weights[row, : len(cont)] = cont, 1.0
            lls, greedy = (t.numpy() for t in self._score(context, start, inputs, targets, weights))
            for q, g in enumerate(chunk):
                base = q * choices
                results[g] = [
                    (float(lls[base + j]), bool(greedy[base + j])) for j in range(len(groups[g][1]))
                ]
            progress.advance(sum(len(groups[g][1]) for g in chunk))
        return results
