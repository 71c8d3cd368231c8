"""The three request kinds of lm-evaluation-harness, answered by a tfllm model or an export.

    loglikelihood(context, continuation) -> (log P(continuation | context), is greedy)
    loglikelihood_rolling(text)           -> (log P(text), tokens scored)
    generate_until(context, until, n)     -> greedy text, cut at the first stop string

Every sequence starts with EOS, as training documents and the prompt rule of `tfllm.generate`
do: an empty context is the start of a document. A context and continuation are split into
tokens as the harness does (`_encode_pair`): trailing spaces of the context move to the
continuation, and the continuation is whatever the whole text has beyond the context's tokens
(trailing whitespace: the harness's `rstrip()`, newlines included).
Longer than max_sequence_length + 1 tokens, a sequence loses its oldest tokens.

Rolling windows (bits per byte): the first window scores up to S tokens; each later one scores
the next S - context tokens, so every token after the first window is predicted from at least
`context` earlier tokens (0: disjoint windows, the harness's default).

Speed: requests are sorted by length (longest first) and batched in fixed-size batches padded
to a multiple of `_WIDTH_STEP` tokens, so a handful of compiled shapes serve a whole task;
requests with one context (a question's choices) run it once (`tfllm.eval.prefix`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import sentencepiece as spm
import tensorflow as tf

from tfllm.eval.prefix import SharedScorer, is_greedy
from tfllm.progress import Progress
from tfllm.tokenizers.tokenizer import PAD_ID, is_hf_tokenizer, load_tokenizer, specials

logger = logging.getLogger(__name__)
_WIDTH_STEP = 32  # padded widths: multiples of this, capped at max_sequence_length


class Engine:
    """Answers harness requests through `logits_fn` (token ids (B, T) -> logits (B, T, V))
    and `generate_fn` (prompts, max_new_tokens -> greedy completions)."""

    def __init__(
        self,
        logits_fn: Callable,
        generate_fn: Callable[[list[str], int], list[str]],
        tokenizer_path: str,
        max_length: int,
        batch_size: int = 16,
        jit_compile: bool = True,
        progress_level: int = logging.DEBUG,
        cache_model=None,
    ):
        """`cache_model`: the model behind `logits_fn`, whose KV cache lets requests with one
        context run it once (`tfllm.eval.prefix`); None scores every sequence whole.
        `progress_level`: the level of the progress lines (`tfllm.eval` shows them at INFO;
        the trainer's evaluations keep them to --verbose)."""
        if is_hf_tokenizer(tokenizer_path):  # an imported model's: its in-graph tokenizer
            hf = load_tokenizer(tokenizer_path)
            self._encode = lambda text: hf.tokenize(tf.constant([text])).to_list()[0]
            ids = specials(hf)
        else:
            with tf.io.gfile.GFile(tokenizer_path, "rb") as f:
                sp = spm.SentencePieceProcessor(model_proto=f.read())
            self._encode, ids = sp.encode, specials(None)
        # One token in front of every sequence, as the harness's prefix_token_id: the model's
        # start id (tfllm: EOS; Llama: BOS), else its end-of-text id (GPT-2, Qwen2).
        self.prefix_id = (ids.start or ids.stop)[0]
        self.max_length, self.batch_size = max_length, batch_size
        self.progress_level = progress_level
        self._logits_fn, self._generate_fn = logits_fn, generate_fn
        self._score = tf.function(self._score_fn, jit_compile=jit_compile)
        self._shared = None
        if cache_model is not None:
            self._shared = SharedScorer(cache_model, batch_size, jit_compile)
        self.scored_tokens = 0

    def progress(self, name: str, total: int) -> Progress:
        """`eval NAME 120/400 | 35.2 ex/s | eta 0m08s`."""
        return Progress(f"eval {name}", total, unit="ex", logger=logger, level=self.progress_level)

    def _score_fn(self, ids, targets, weights):
        """Per row: the sum of the weighted targets' log-probabilities, and whether each
        weighted target is the argmax."""
        logits = self._logits_fn(ids)
        logp = -tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        greedy = is_greedy(logits, targets)
        return (
            tf.reduce_sum(logp * weights, axis=-1),
            tf.reduce_all(greedy | (weights == 0.0), axis=-1),
        )

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text)) if text else []

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        context_ids = self.encode(context)
        whole = self.encode(context + continuation)
        return [self.prefix_id, *context_ids], whole[len(context_ids) :]

    def score_sequences(
        self, sequences: Sequence[tuple[list[int], int]], name: str = "", progress=None
    ):
        """(tokens, first scored index) pairs -> (log-likelihood, is greedy) per pair.

        Tokens past max_sequence_length + 1 are dropped from the left (the scored part too,
        if it alone is longer). Index i scores token i from tokens[:i].
        """
        limit = self.max_length + 1
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
        results: list = [None] * len(sequences)
        progress = progress or self.progress(name, len(sequences))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows = []
            for i in chunk:
                tokens, first = sequences[i]
                dropped = max(len(tokens) - limit, 0)
                rows.append((tokens[dropped:], max(first - dropped, 1)))
            longest = max(len(tokens) - 1 for tokens, _ in rows)
            width = min(-(-longest // _WIDTH_STEP) * _WIDTH_STEP, self.max_length)
            ids = np.full((self.batch_size, width), PAD_ID, np.int32)
            targets = np.full((self.batch_size, width), PAD_ID, np.int32)
            weights = np.zeros((self.batch_size, width), np.float32)
            for row, (tokens, first) in enumerate(rows):
                n = len(tokens) - 1
                ids[row, :n], targets[row, :n] = tokens[:-1], tokens[1:]
                weights[row, first - 1 : n] = 1.0
            lls, greedy = (t.numpy() for t in self._score(ids, targets, weights))
            self.scored_tokens += int(weights.sum())
            for row, i in enumerate(chunk):
                results[i] = (float(lls[row]), bool(greedy[row]))
            progress.advance(len(chunk))
        return results

    def loglikelihood(self, requests: Sequence[tuple[str, str]], name: str = ""):
        """Requests with the same context (a question's choices) run it once where the engine
        has a model's cache (`tfllm.eval.prefix`); the rest are scored whole."""
        pairs = [self.encode_pair(context, continuation) for context, continuation in requests]
        groups: dict[tuple, list[int]] = {}
        for i, (context_ids, _) in enumerate(pairs):
            groups.setdefault(tuple(context_ids), []).append(i)
        shared = [
            members
            for context_ids, members in groups.items()
            if self._shared is not None
            and len(members) > 1
            and len(context_ids) > 1  # the prefix token alone: nothing to share
            and all(0 < len(pairs[i][1]) <= self.max_length + 1 - len(context_ids) for i in members)
        ]
        alone = sorted(set(range(len(pairs))) - {i for members in shared for i in members})
        progress = self.progress(name, len(pairs))
        results: list = [None] * len(pairs)
        sequences = [(pairs[i][0] + pairs[i][1], len(pairs[i][0])) for i in alone]
        for i, result in zip(alone, self.score_sequences(sequences, name, progress), strict=True):
            results[i] = result
        if shared:
            inputs = [(pairs[m[0]][0], [pairs[i][1] for i in m]) for m in shared]
            for members, scores in zip(shared, self._shared.score(inputs, progress), strict=True):
                for i, result in zip(members, scores, strict=True):
                    results[i] = result
            self.scored_tokens += sum(len(pairs[i][1]) for m in shared for i in m)
        return results

    def rolling_windows(self, text: str, context: int = 0) -> list[tuple[list[int], int]]:
        """The windows of one text, as (tokens, first scored index) pairs."""
        tokens = [self.prefix_id, *self.encode(text)]
        windows, first = [], 1
        while first < len(tokens):
            end = min(
                first + (self.max_length if first == 1 else self.max_length - context), len(tokens)
            )
            low = max(end - self.max_length - 1, 0)
            windows.append((tokens[low:end], first - low))
            first = end
        return windows

    def loglikelihood_rolling(self, texts: Sequence[str], context: int = 0, name: str = ""):
        """(log-likelihood, tokens scored) per text."""
        if not 0 <= context < self.max_length:
            raise ValueError(f"rolling context must be in [0, {self.max_length - 1}]")
        windows, owners = [], []
        for index, text in enumerate(texts):
            for window in self.rolling_windows(text, context):
                windows.append(window)
                owners.append(index)
        totals = [[0.0, 0] for _ in texts]
        for (tokens, first), owner, (ll, _) in zip(
            windows, owners, self.score_sequences(windows, name), strict=True
        ):
            totals[owner][0] += ll
            totals[owner][1] += len(tokens) - first
        return [(ll, n) for ll, n in totals]

    def generate_until(self, requests: Sequence[tuple[str, dict]], name: str = "") -> list[str]:
        """Greedy completions of (context, {"until": [...], "max_gen_toks": N}) requests."""
        results: list = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for i, (_, options) in enumerate(requests):
            n = min(int(options.get("max_gen_toks", 64)), self.max_length - 1)
            groups.setdefault(n, []).append(i)
        progress = self.progress(name, len(requests))
        for max_new, members in groups.items():
            members.sort(key=lambda i: -len(requests[i][0]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                prompts = [requests[i][0] for i in chunk]
                # Full batches keep one compiled program per prompt width.
                padded = prompts + [""] * (self.batch_size - len(prompts))
                texts = self._generate_fn(padded, max_new)[: len(prompts)]
                for i, text in zip(chunk, texts, strict=True):
                    results[i] = cut_at_stops(text, requests[i][1].get("until") or [])
                progress.advance(len(chunk))
        return results


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """The text before the first occurrence of any stop string (the harness's rule)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def model_engine(model, tokenizer_path: str, share_prefixes: bool = True, **options) -> Engine:
    """An engine on an in-process `TransformerLM` (XLA-compiled scoring, cached decoding;
    `share_prefixes`: one context pass per multiple-choice question)."""
    from tfllm.serve.generate import Generator

    generator = Generator(model, tokenizer_path)

    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        return generator.generate(prompts, max_new_tokens=max_new_tokens, temperature=0.0)

    cache_model = model if share_prefixes else None
    return Engine(model, generate, tokenizer_path, model.config.max_sequence_length,
                  cache_model=cache_model, **options)  # fmt: skip
