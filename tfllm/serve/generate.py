"""Cached decoding: prompts in, completions out, through the model's KV cache.

Decoding is one compiled `tf.while_loop`: a prefill call writes the prompt's keys and values
into a fixed-size cache of max_sequence_length slots, then each step feeds one token through the
same `TransformerLM.call` that training uses. Prompts of different lengths are left-padded to a
common width, so every row's last prompt token sits in the same column.

The prompt rule (shared with the exported SavedModel, `tokenizer.specials`): a tfllm model
reads every prompt as the start of a document, after the EOS separator of its training data; an
imported model reads it as its own tokenizer does by default (Llama's BOS first). When start
ids + prompt are longer than max_sequence_length - max_new_tokens tokens, the oldest tokens are
dropped (truncation from the left), so the newest text always stays in the context.

Shape letters: B batch, P padded prompt width, S max_sequence_length, N max_new_tokens.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.errors import TfllmError
from tfllm.model.lm import TransformerLM
from tfllm.serve import sampling
from tfllm.tokenizers import tokenizer
from tfllm.tokenizers.tokenizer import PAD_ID

_MIN_BUCKET = 8  # prompt widths are rounded up to a power of two, at least this


class GenerationError(TfllmError):
    """A generation request outside the limits (max_new_tokens, temperature, top-k, top-p)."""


def prompt_ids(sp, prompts, start: tuple[int, ...]) -> tf.RaggedTensor:
    """Strings (B,) -> ragged int32 ids (B, None): the `start` ids (`tokenizer.specials`: the
    prompt rule of in-process generation, the SavedModel, LiteRT and ONNX), then the tokens."""
    ids = sp.tokenize(prompts)
    if not start:
        return ids
    first = tf.constant([start], ids.dtype)  # (1, k)
    first = tf.tile(first, tf.stack([tf.cast(ids.nrows(), tf.int32), 1]))
    return tf.concat([tf.RaggedTensor.from_tensor(first), ids], axis=1)


def is_stop(token, stop_ids):
    """(B,) bool: the token is one of the model's stop ids (`stop_ids` (K,) int32)."""
    return tf.reduce_any(token[:, None] == stop_ids[None, :], axis=1)


def left_pad(ids: tf.RaggedTensor, width):
    """Keeps the last `width` ids of each row, left-padded with PAD_ID.

    Returns:
        (B, width) int32 ids and (B,) int32 `start`: the number of padding columns per row.
    """
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    right_padded = ids.to_tensor(default_value=PAD_ID)  # (B, max length)
    source = lengths[:, None] - width + tf.range(width)[None, :]  # column read for each column
    gathered = tf.gather(right_padded, tf.maximum(source, 0), batch_dims=1)
    padded = tf.where(source >= 0, gathered, PAD_ID)
    return padded, tf.maximum(width - lengths, 0)


def bucket(length: int, limit: int) -> int:
    """The padded prompt width for `length` tokens: a power of two, capped at `limit`."""
    width = _MIN_BUCKET
    while width < length:
        width *= 2
    return min(width, limit)


def decode(
    model: TransformerLM,
    ids,
    start,
    max_new_tokens,
    temperature,
    top_k,
    top_p,
    seed,
    stop_ids,
    slots=None,
):
    """Prefill, then up to max(max_new_tokens) cached steps; stops early once every row is done.

    The one decode loop of in-process generation and of both SavedModel generate signatures.

    Args:
        model: the language model.
        ids: (B, P) int32 left-padded prompts (from `left_pad`).
        start: (B,) int32 padding columns per row.
        max_new_tokens, temperature, top_k, top_p: scalars (one setting for the batch, broadcast)
            or (B,) (one per row: row b stops after max_new_tokens[b] tokens); see
            `sampling.next_token`.
        seed: int64, a scalar or (B,): `sampling.next_token` says how each keys the draw.
        stop_ids: (K,) int32, the ids that end a row (`tokenizer.specials`).
        slots: the cache length, at least P + max(max_new_tokens); max_sequence_length by
            default (a static shape: what XLA compiles).

    Returns:
        (B, N) int32 generated tokens, N = max(max_new_tokens) (the stop id that ended a row is
        kept, PAD_ID after it and after the row's own max_new_tokens) and (B,) int32 number of
        text tokens per row (before the stop id).
    """
    batch, width = tf.shape(ids)[0], tf.shape(ids)[1]
    max_new_tokens, temperature, top_k, top_p = (
        tf.broadcast_to(knob, [batch]) for knob in (max_new_tokens, temperature, top_k, top_p)
    )
    steps = tf.reduce_max(max_new_tokens)
    any_sampled = tf.reduce_any(temperature > 0.0)
    slots = model.config.max_sequence_length if slots is None else slots
    positions = tf.maximum(tf.range(width)[None, :] - start[:, None], 0)  # (B, P)
    cache = model.empty_cache(batch, slots)
    logits, cache = model(
        ids, positions=positions, cache=cache, cache_index=0, cache_start=start, last_only=True
    )
    columns = tf.range(slots)[None, :]

    def unfinished(step, logits, cache, tokens, lengths, done):
        return (step < steps) & ~tf.reduce_all(done)

    def one_token(step, logits, cache, tokens, lengths, done):
        token = sampling.next_token(logits, temperature, top_k, top_p, seed, step, any_sampled)
        done = done | (step >= max_new_tokens)
        token = tf.where(done, PAD_ID, token)  # (B,)
        tokens = tf.where(columns == step, token[:, None], tokens)  # (B, S)
        done = done | is_stop(token, stop_ids)
        lengths = lengths + tf.cast(~done, tf.int32)
        index = width + step
        logits, cache = model(
            token[:, None],
            positions=(index - start)[:, None],
            cache=cache,
            cache_index=index,
            cache_start=start,
        )
        return step + 1, logits[:, -1, :], cache, tokens, lengths, done

    state = (
        tf.constant(0),
        logits[:, -1, :],  # (B, V)
        cache,
        tf.fill([batch, slots], PAD_ID),  # generated token j in column j
        tf.zeros([batch], tf.int32),
        tf.zeros([batch], tf.bool),
    )
    _, _, _, tokens, lengths, _ = tf.while_loop(unfinished, one_token, state)
    return tokens[:, :steps], lengths


class Generator:
    """Text in, text out around one compiled `decode` per (batch size, prompt bucket).

    `traces` counts how often the decode function was traced (a Python side effect runs once
    per trace), so tests can assert that prompts within one bucket share one program.
    """

    # A plain graph by default: on CPU, the XLA-compiled loop measured about 2-3x slower per
    # token than the graph (benchmarks/generate_bench.py); the graph is also what gets exported.
    def __init__(self, model: TransformerLM, tokenizer_path: str, jit_compile: bool = False):
        self.model = model
        self.traces = 0
        self._decode = tf.function(self._decode_fn, jit_compile=jit_compile)
        if not tf.io.gfile.exists(tokenizer_path):
            raise TfllmError(f"tokenizer not found: {tokenizer_path}")
        if tokenizer.is_hf_tokenizer(tokenizer_path):  # a tf.Module: its tables live in it
            loaded = tokenizer.load_tokenizer(tokenizer_path)

            def load():
                return loaded
        else:
            # tensorflow-text's SentencePiece resource is owned by the kernel that made it, and
            # an eagerly made one can vanish ("Resource ... SentencepieceResource does not
            # exist") once TF drops that kernel from its cache: make it inside each graph.
            loaded = None

            def load():
                return tokenizer.load_tokenizer(tokenizer_path)

        self.specials = tokenizer.specials(loaded)
        self.stop_ids = tf.constant(self.specials.stop, tf.int32, shape=[len(self.specials.stop)])
        self._prompt_ids = tf.function(
            lambda prompts: prompt_ids(load(), prompts, self.specials.start),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )
        self._detokenize = tf.function(
            lambda tokens, lengths: load().detokenize(tf.RaggedTensor.from_tensor(tokens, lengths)),
            input_signature=[
                tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([None], tf.int32),
            ],
        )

    def _decode_fn(self, ids, start, max_new_tokens, temperature, top_k, top_p, seed):
        self.traces += 1
        return decode(
            self.model, ids, start, max_new_tokens, temperature, top_k, top_p, seed, self.stop_ids
        )

    def generate_ids(
        self,
        prompts: list[str],
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
    ):
        """Returns (B, N) generated token ids and (B,) text lengths, as `decode`.

        max_new_tokens defaults to 64, or less when the context is shorter.
        """
        if max_new_tokens is None:
            max_new_tokens = min(64, self.model.config.max_sequence_length - 1)
        check_request(self.model, prompts, max_new_tokens, temperature, top_k, top_p)
        ids = self._prompt_ids(tf.constant(prompts, tf.string))
        longest = int(tf.reduce_max(ids.row_lengths()))
        width = bucket(longest, self.model.config.max_sequence_length - max_new_tokens)
        padded, start = left_pad(ids, tf.constant(width))
        return self._decode(
            padded,
            start,
            tf.constant(max_new_tokens),
            tf.constant(temperature, tf.float32),
            tf.constant(top_k),
            tf.constant(top_p, tf.float32),
            tf.constant(seed, tf.int64),
        )

    def generate(self, prompts: list[str], **options) -> list[str]:
        """Completions of `prompts` (without the prompts); options as `generate_ids`."""
        tokens, lengths = self.generate_ids(prompts, **options)
        texts = self._detokenize(tokens, lengths)
        return [text.decode("utf-8", "replace") for text in texts.numpy().tolist()]


def check_request(model, prompts, max_new_tokens, temperature, top_k, top_p) -> None:
    """The request limits, as one-line errors (the SavedModel checks the same in its graph)."""
    limit = model.config.max_sequence_length - 1  # at least one context token: the EOS
    if not prompts:
        raise GenerationError("give at least one prompt")
    if not 1 <= max_new_tokens <= limit:
        raise GenerationError(f"max_new_tokens must be in [1, {limit}], got {max_new_tokens}")
    if not 0.0 <= temperature <= 100.0:
        raise GenerationError(f"temperature must be in [0, 100], got {temperature}")
    if not 0 <= top_k <= model.config.vocabulary_size:
        raise GenerationError(f"top_k must be in [0, {model.config.vocabulary_size}], got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise GenerationError(f"top_p must be in (0, 1], got {top_p}")
