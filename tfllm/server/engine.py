"""The compiled model calls of continuous batching: prefill one sequence into a slot, then one
decode step over every slot at once.

The KV cache is one (keys, values) pair of (S, KV, C, K) variables per layer that stays on the
device between calls: S sequence slots of C positions each. A slot holds its sequence as
`tfllm generate` holds a batch of one (`tfllm.serve.generate.decode`): the prompt left-padded
to its length bucket W in columns 0..W-1 (`start` padding columns), generated token j written
at column W + j. Every row writes at its own column (`cache_index` (S,)) and reads its own
positions and mask (`cache_start` (S,)), through the same `TransformerLM.call` that training
and `tfllm generate` use, so a sequence's greedy tokens do not depend on the other slots. The
sampling rules are `tfllm.serve.sampling`'s, keyed per row by (seed, step).

The cache is a set of variables written in place (`CausalSelfAttention` writes into variables
when given them): passed in and out of each call as tensors, the whole cache was copied at
every step. The decode step runs over the first R slots, R a power of two covering the busy
ones (the scheduler fills the lowest free slots), and is traced once per R; prefill once per
length bucket (powers of two from 8, `tfllm.serve.generate.bucket`) and per whether the
prompt's log-probs are wanted. `traces` counts both, for the tests.

Shape letters: S slots, C cache length, W prompt bucket, V vocabulary_size, K top log-probs.
"""

from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from tfllm.model.lm import TransformerLM
from tfllm.serve import sampling
from tfllm.serve.generate import bucket

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 5  # the most alternatives per token a request may ask for (OpenAI's limit)


def _top(logprobs):
    """(..., V) -> (..., K) values and ids of the most likely tokens."""
    top = tf.math.top_k(logprobs, TOP_LOGPROBS)
    return top.values, top.indices


class Engine:
    """Owns the model's slots and KV cache; called from the scheduler's thread only."""

    def __init__(self, model: TransformerLM, slots: int, cache_len: int, jit_compile: bool = False):
        self.model, self.slots, self.cache_len = model, slots, cache_len
        self.traces = {"prefill": 0, "step": 0}
        # Variables, written in place by the attention layers: a tensor cache passed in and
        # out of each call was copied whole at every step (100 MB on the small config).
        self.cache = tuple(
            (tf.Variable(k, trainable=False), tf.Variable(v, trainable=False))
            for k, v in model.empty_cache(slots, cache_len)
        )
        self._prefill = tf.function(self._prefill_fn)
        self._step = tf.function(self._step_fn, jit_compile=jit_compile)

    def busy_rows(self, highest_slot: int) -> int:
        """How many leading slots a step computes when `highest_slot` is the last busy one: a
        power of two (or all slots), so the step compiles for a few batch sizes only and a
        lone request does not pay for 16 rows."""
        rows = 1
        while rows <= highest_slot:
            rows *= 2
        return min(rows, self.slots)

    def warm_up(self, ids: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """Traces prefill for every power-of-two width and the decode step for every number of
        busy rows; returns both lists."""
        knobs = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
        widths = sorted({bucket(n, self.cache_len) for n in range(1, self.cache_len + 1)})
        for width in widths:
            self.prefill(0, list(ids)[:width], width, knobs, echo=False)
        sizes = sorted({self.busy_rows(slot) for slot in range(self.slots)})
        for size in sizes:
            rows = {name: np.zeros(size, np.int32) for name in ("token", "index", "start")}
            rows.update({"temperature": np.zeros(size), "top_k": np.zeros(size)})
            rows.update({"top_p": np.ones(size), "seed": np.zeros(size), "step": np.zeros(size)})
            self.step(rows, want_top=False)
        return widths, sizes

    def width(self, length: int, max_tokens: int) -> int:
        """The prefill bucket of a prompt of `length` ids, as `tfllm generate` picks it."""
        return bucket(length, self.cache_len - max_tokens)

    def prefill(self, slot: int, ids: list[int], width: int, knobs: dict, echo: bool) -> dict:
        """Writes the prompt `ids` into `slot` and samples the first token.

        `knobs`: temperature, top_k, top_p, seed of the sequence. Returns numpy values:
        token, logprob (of the token), top (values, ids) (K,), and with `echo` the prompt's
        own log-probs (len(ids) - 1,) (token i + 1 given 0..i) and their top (len(ids) - 1, K).
        """
        start = width - len(ids)
        padded = np.zeros((1, width), np.int32)
        padded[0, start:] = ids
        outputs = self._prefill(
            tf.constant(padded),
            tf.constant([start], tf.int32),
            tf.constant(slot, tf.int32),
            *_row_knobs([knobs]),
            echo,
        )
        result = {k: tf.nest.map_structure(lambda t: t.numpy()[0], v) for k, v in outputs.items()}
        if echo:  # the padding columns hold no prompt token
            result["prompt_logprobs"] = result["prompt_logprobs"][start:]
            result["prompt_top"] = tuple(t[start:] for t in result["prompt_top"])
        return result

    def _prefill_fn(self, ids, start, slot, temperature, top_k, top_p, seed, echo):
        self.traces["prefill"] += 1
        width = tf.shape(ids)[1]
        positions = tf.maximum(tf.range(width)[None, :] - start[:, None], 0)  # (1, W)
        own = self.model.empty_cache(1, self.cache_len)
        logits, own = self.model(
            ids, positions=positions, cache=own, cache_index=0, cache_start=start
        )
        last = logits[:, -1, :]  # (1, V)
        token = sampling.next_token(
            last, temperature, top_k, top_p, seed, tf.zeros([1], tf.int32), temperature[0] > 0
        )
        row = tf.reshape(slot, (1, 1))
        for (keys, values), (own_keys, own_values) in zip(self.cache, own, strict=True):
            keys.scatter_nd_update(row, own_keys)
            values.scatter_nd_update(row, own_values)
        logprobs = tf.nn.log_softmax(last)
        out = {
            "token": token,
            "logprob": tf.gather(logprobs, token, batch_dims=1),
            "top": _top(logprobs),
        }
        if echo:
            every = tf.nn.log_softmax(logits[:, :-1, :])  # (1, W - 1, V)
            out["prompt_logprobs"] = tf.gather(every, ids[:, 1:], batch_dims=2)
            out["prompt_top"] = _top(every)
        return out

    def step(self, rows: dict, want_top: bool) -> dict:
        """One token for each of the first R slots. `rows` holds (R,) numpy arrays: token (the
        last one of each sequence), index (its cache column), start, temperature, top_k, top_p,
        seed, step (how many tokens the sequence has generated). Returns numpy token (R,),
        logprob (R,) and top (values, ids) (R, K) (zeros unless `want_top`)."""
        outputs = self._step(
            tf.constant(rows["token"], tf.int32),
            tf.constant(rows["index"], tf.int32),
            tf.constant(rows["start"], tf.int32),
            tf.constant(rows["temperature"], tf.float32),
            tf.constant(rows["top_k"], tf.int32),
            tf.constant(rows["top_p"], tf.float32),
            tf.constant(rows["seed"], tf.int64),
            tf.constant(rows["step"], tf.int32),
            tf.constant(want_top),
        )
        return {key: tf.nest.map_structure(lambda t: t.numpy(), v) for key, v in outputs.items()}

    def _step_fn(self, token, index, start, temperature, top_k, top_p, seed, step, top):
        self.traces["step"] += 1
        logits, _ = self.model(
            token[:, None],
            positions=(index - start)[:, None],
            cache=self.cache,
            cache_index=index,
            cache_start=start,
        )
        logits = logits[:, -1, :]  # (S, V)
        chosen = sampling.next_token(
            logits, temperature, top_k, top_p, seed, step, tf.reduce_any(temperature > 0.0)
        )
        logprobs = tf.nn.log_softmax(logits)
        size = tf.shape(token)[0]
        empty = (
            tf.zeros([size, TOP_LOGPROBS], tf.float32),
            tf.zeros([size, TOP_LOGPROBS], tf.int32),
        )
        return {
            "token": chosen,
            "logprob": tf.gather(logprobs, chosen, batch_dims=1),
            "top": tf.cond(top, lambda: _top(logprobs), lambda: empty),
        }


def _row_knobs(sequences: list[dict]):
    """The sampling knobs of some sequences as (B,) tensors, in `sampling.next_token`'s order."""
    return (
        tf.constant([s["temperature"] for s in sequences], tf.float32),
        tf.constant([s["top_k"] for s in sequences], tf.int32),
        tf.constant([s["top_p"] for s in sequences], tf.float32),
        tf.constant([s["seed"] for s in sequences], tf.int64),
    )
