"""The compiled model calls of continuous batching: prefill prompts into their slots, then one
decode step over every slot at once.

The KV cache is one (keys, values) pair of (S, KV, C, K) variables per layer that stays on the
device between calls: S sequence slots of C positions each. A slot holds its sequence as
`tfllm generate` holds a batch of one (`tfllm.serve.generate.decode`): the prompt left-padded
to a width W in columns 0..W-1 (`start` padding columns), generated token j written at column
W + j. Every row writes at its own column (`cache_index` (S,)) and reads its own positions and
mask (`cache_start` (S,)), through the same `TransformerLM.call` that training and `tfllm
generate` use, so a sequence's greedy tokens do not depend on the other slots. The sampling
rules are `tfllm.serve.sampling`'s, keyed per row by (seed, step).

The cache is a set of variables written in place (`CausalSelfAttention` writes into variables
when given them): passed in and out of each call as tensors, the whole cache was copied at
every step. The decode step runs over the first R slots, R a power of two covering the busy
ones (the scheduler fills the lowest free slots), and reads only the first L columns of the
cache, L the smallest of four windows (quarters of C) holding every busy row's columns: it is
traced once per (R, L). The step samples in the graph and hands back only the token ids unless
a row asks for log-probs. Prefill takes a group of admitted prompts in one call, left-padded to
the longest of them (a padding column costs what a prompt token costs), and is traced once for
every width and row count, once per whether the prompts' log-probs are wanted. `traces` counts
both, for the tests.

Both run as TensorFlow graphs without XLA on the CPU: XLA's CPU dots measured 2-4x slower than
oneDNN's at these shapes (docs/server.md, "Measured").

Shape letters: S slots, C cache length, W prompt width, V vocabulary_size, K top log-probs.
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
        self.jit_compile = jit_compile
        self.traces = {"prefill": 0, "step": 0}
        # Variables, written in place by the attention layers: a tensor cache passed in and
        # out of each call was copied whole at every step (100 MB on the small config).
        self.cache = tuple(
            (tf.Variable(k, trainable=False), tf.Variable(v, trainable=False))
            for k, v in model.empty_cache(slots, cache_len)
        )
        self._prefills = {echo: self._prefill_function(echo) for echo in (False, True)}
        self.lengths = sorted({-(-cache_len * quarter // 4) for quarter in range(1, 5)})
        self._step = tf.function(self._step_fn, jit_compile=jit_compile)

    def busy_rows(self, highest_slot: int) -> int:
        """How many leading slots a step computes when `highest_slot` is the last busy one: a
        power of two (or all slots), so the step compiles for a few batch sizes only and a
        lone request does not pay for 16 rows."""
        rows = 1
        while rows <= highest_slot:
            rows *= 2
        return min(rows, self.slots)

    def window(self, columns: int) -> int:
        """How many leading cache columns a step reads when the busy rows use `columns`: a
        quarter, half, three quarters or all of the cache length, so the step compiles for
        four lengths only and short sequences do not pay for attention over the whole cache."""
        return next(length for length in self.lengths if length >= columns)

    def _window_arg(self, columns: int) -> int | None:
        """The step's `cache_length`: None for the whole cache, which is read as whole rows
        (one copy each; gathering every column one by one measured slower). Under XLA always
        None: XLA has no kernel for the gather of a window out of a variable."""
        length = self.window(columns)
        return None if length == self.cache_len or self.jit_compile else length

    def warm_up(self, ids: tuple[int, ...]) -> list[int]:
        """Traces the prefill (with and without the prompt's log-probs) and the decode step for
        every number of busy rows and every cache window (`lengths`); returns the row counts."""
        knobs = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
        for echo in (False, True):
            self.prefill([0], [(list(ids) * 2, knobs)], echo=echo)
        sizes = sorted({self.busy_rows(slot) for slot in range(self.slots)})
        for size in sizes:
            rows = {name: np.zeros(size, np.int32) for name in ("token", "index", "start")}
            rows.update({"temperature": np.zeros(size), "top_k": np.zeros(size)})
            rows.update({"top_p": np.ones(size), "seed": np.zeros(size), "step": np.zeros(size)})
            for length in self.lengths:
                rows["index"][0] = length - 1
                self.step(rows, want_logprobs=False)
        return sizes

    def width(self, length: int, max_tokens: int) -> int:
        """The length bucket of a prompt of `length` ids (powers of two from 8, as `tfllm
        generate` rounds a prompt): the prompts admitted together that share one are prefilled
        in one call."""
        return bucket(length, self.cache_len - max_tokens)

    def prefill(
        self,
        slots: list[int],
        sequences: list[tuple[list[int], dict]],
        echo: bool,
        offset: int = 0,
    ) -> list[dict]:
        """Writes several prompts into their `slots` in one call and samples each one's first
        token, so admitting many requests costs about one prefill. The prompts are left-padded
        to the longest of them only: a padding column costs as much as a prompt token.

        With `offset` > 0 the call continues one prompt whose first `offset` ids are already in
        its slot (columns 0..offset-1, no padding): `sequences` holds the next chunk of its ids,
        which attend to those columns too (chunked prefill, a long prompt over several calls).

        `sequences`: (ids, knobs) pairs, knobs the temperature, top_k, top_p, seed of the
        sequence. Returns one dict of numpy values per sequence: width (the column of the first
        generated token), token, logprob (of the token), top (values, ids) (K,), and with
        `echo` the prompt's own log-probs (len(ids) - 1,) (token i + 1 given 0..i) and their
        top (len(ids) - 1, K).
        """
        width = max(len(ids) for ids, _ in sequences)
        starts = [width - len(ids) for ids, _ in sequences]
        if offset and (len(sequences) > 1 or echo):
            raise ValueError("a prefill chunk after the first continues one prompt, no echo")
        padded = np.zeros((len(sequences), width), np.int32)
        for row, ((ids, _), start) in enumerate(zip(sequences, starts, strict=True)):
            padded[row, start:] = ids
        outputs = self._prefills[echo](
            tf.constant(padded),
            tf.constant(starts, tf.int32),
            tf.constant(slots, tf.int32),
            tf.constant(offset, tf.int32),
            *_row_knobs([knobs for _, knobs in sequences]),
        )
        outputs = tf.nest.map_structure(lambda t: t.numpy(), outputs)
        results = []
        for row, start in enumerate(starts):
            result = tf.nest.map_structure(lambda a, row=row: a[row], outputs)
            result["width"] = offset + width
            if echo:  # the padding columns hold no prompt token
                result["prompt_logprobs"] = result["prompt_logprobs"][start:]
                result["prompt_top"] = tuple(t[start:] for t in result["prompt_top"])
            results.append(result)
        return results

    def _prefill_function(self, echo: bool):
        """The prefill, traced once for any number of rows, width and offset: the graph runs
        without XLA, so its shapes may stay open."""
        rows = tf.TensorSpec([None], tf.int32)
        signature = [tf.TensorSpec([None, None], tf.int32), rows, rows]
        signature += [tf.TensorSpec([], tf.int32)]
        signature += [tf.TensorSpec([None], dtype) for dtype in (tf.float32, tf.int32)]
        signature += [tf.TensorSpec([None], dtype) for dtype in (tf.float32, tf.int64)]

        def prefill(ids, start, slots, offset, temperature, top_k, top_p, seed):
            return self._prefill_fn(
                ids, start, slots, offset, temperature, top_k, top_p, seed, echo
            )

        return tf.function(prefill, input_signature=signature)

    def _slot_columns(self, slots, first, count):
        """(B, KV, count, 3) scatter/gather indices of columns first..first+count-1 of the
        cache rows `slots` (B,)."""
        shape = tf.stack([tf.shape(slots)[0], self.model.kv_heads, count])
        return tf.stack(
            [
                tf.broadcast_to(slots[:, None, None], shape),
                tf.broadcast_to(tf.range(self.model.kv_heads)[None, :, None], shape),
                tf.broadcast_to(first + tf.range(count)[None, None, :], shape),
            ],
            axis=-1,
        )

    def _prefill_fn(self, ids, start, slots, offset, temperature, top_k, top_p, seed, echo):
        self.traces["prefill"] += 1
        batch, width = tf.shape(ids)[0], tf.shape(ids)[1]
        columns = offset + tf.range(width)
        positions = tf.maximum(columns[None, :] - start[:, None], 0)  # (B, W)
        # A cache of the prompt's own columns, copied into the slots' first columns: the
        # slots' later columns hold an older sequence's keys, which the decode step's mask
        # hides until this sequence writes them. A later chunk starts from the `offset`
        # columns its slot already holds.
        before = self._slot_columns(slots, 0, offset)
        own = tuple(
            tuple(
                tf.concat([part.gather_nd(before), empty], axis=2)
                for part, empty in zip(pair, empty_pair, strict=True)
            )
            for pair, empty_pair in zip(
                self.cache, self.model.empty_cache(batch, width), strict=True
            )
        )
        logits, own = self.model(
            ids,
            positions=positions,
            cache=own,
            cache_index=offset,
            cache_start=start,
            last_only=not echo,  # the prompt's own log-probs need every position's logits
        )
        last = logits[:, -1, :]  # (B, V)
        sample = tf.reduce_any(temperature > 0.0)
        token = sampling.next_token(
            last, temperature, top_k, top_p, seed, tf.zeros([batch], tf.int32), sample
        )
        written = self._slot_columns(slots, offset, width)  # (B, KV, W, 3)
        for (keys, values), (own_keys, own_values) in zip(self.cache, own, strict=True):
            keys.scatter_nd_update(written, own_keys[:, :, offset:])
            values.scatter_nd_update(written, own_values[:, :, offset:])
        logprobs = tf.nn.log_softmax(last)
        out = {
            "token": token,
            "logprob": tf.gather(logprobs, token, batch_dims=1),
            "top": _top(logprobs),
        }
        if echo:
            every = tf.nn.log_softmax(logits[:, :-1, :])  # (B, W - 1, V)
            out["prompt_logprobs"] = tf.gather(every, ids[:, 1:], batch_dims=2)
            out["prompt_top"] = _top(every)
        return out

    def step(self, rows: dict, want_logprobs: bool) -> dict:
        """One token for each of the first R slots. `rows` holds (R,) numpy arrays: token (the
        last one of each sequence), index (its cache column), start, temperature, top_k, top_p,
        seed, step (how many tokens the sequence has generated). Returns numpy token (R,), and
        with `want_logprobs` logprob (R,) and top (values, ids) (R, K): the log-softmax over
        the vocabulary is only computed for a step whose rows need it."""
        outputs = self._step(
            tf.constant(rows["token"], tf.int32),
            tf.constant(rows["index"], tf.int32),
            tf.constant(rows["start"], tf.int32),
            tf.constant(rows["temperature"], tf.float32),
            tf.constant(rows["top_k"], tf.int32),
            tf.constant(rows["top_p"], tf.float32),
            tf.constant(rows["seed"], tf.int64),
            tf.constant(rows["step"], tf.int32),
            tf.constant(want_logprobs),
            self._window_arg(int(rows["index"].max()) + 1),
        )
        out = {key: tf.nest.map_structure(lambda t: t.numpy(), v) for key, v in outputs.items()}
        if not want_logprobs:
            del out["logprob"], out["top"]
        return out

    def _step_fn(self, token, index, start, temperature, top_k, top_p, seed, step, want, length):
        self.traces["step"] += 1
        logits, _ = self.model(
            token[:, None],
            positions=(index - start)[:, None],
            cache=self.cache,
            cache_index=index,
            cache_start=start,
            cache_length=length,
        )
        logits = logits[:, -1, :]  # (S, V)
        chosen = sampling.next_token(
            logits, temperature, top_k, top_p, seed, step, tf.reduce_any(temperature > 0.0)
        )
        size = tf.shape(token)[0]

        def scored():
            logprobs = tf.nn.log_softmax(logits)
            return tf.gather(logprobs, chosen, batch_dims=1), _top(logprobs)

        def unscored():
            shape = [size, TOP_LOGPROBS]
            return tf.zeros([size]), (tf.zeros(shape), tf.zeros(shape, tf.int32))

        logprob, top = tf.cond(want, scored, unscored)
        return {"token": chosen, "logprob": logprob, "top": top}


def _row_knobs(sequences: list[dict]):
    """The sampling knobs of some sequences as (B,) tensors, in `sampling.next_token`'s order."""
    return (
        tf.constant([s["temperature"] for s in sequences], tf.float32),
        tf.constant([s["top_k"] for s in sequences], tf.int32),
        tf.constant([s["top_p"] for s in sequences], tf.float32),
        tf.constant([s["seed"] for s in sequences], tf.int64),
    )
