"""The `generate_batched` signature: `serving_default` with per-row knobs, for TF Serving's
server-side batching, and the `batching_parameters.pbtxt` written beside it.

TF Serving's batcher (`--enable_batching`) concatenates the inputs of several requests along
their first axis; a scalar input has no such axis, so requests to `serving_default` are never
merged. Here every knob has shape (B,), one value per prompt:

    generate_batched  prompts (B,) string, max_new_tokens (B,) int32, temperature (B,) float32,
                      top_k (B,) int32, top_p (B,) float32, seed (B,) int64
                      -> completions (B,) string, tokens (B, N) int32, N = max(max_new_tokens)

Row b gives what `serving_default` gives for prompts[b] alone with row b's knobs: the same
prompt rule and truncation (to max_sequence_length - max_new_tokens[b] tokens), the same
stateless draw keyed by (seed[b], step), and PAD_ID after its own max_new_tokens[b] tokens.
"""

from __future__ import annotations

import posixpath

import tensorflow as tf

from tfllm.data.tokenizer import PAD_ID
from tfllm.serve import sampling
from tfllm.serve.generate import is_stop, left_pad, prompt_ids
from tfllm.serve.module import _INPUT_DTYPES, ServingModule, _check_texts, _require

BATCHING_FILE = "assets.extra/batching_parameters.pbtxt"

# Values for the 2-core CPU here (benchmarks/deploy_bench.py); see the README's table.
BATCHING_PARAMETERS = {
    "max_batch_size": 16,  # rows per merged batch; a decode step costs little more at 16 than 1
    "batch_timeout_micros": 5000,  # how long a partial batch waits for more requests
    "max_enqueued_batches": 64,  # queue bound: beyond it requests fail fast (UNAVAILABLE)
    "num_batch_threads": 2,  # batches run in parallel: one per core
    "pad_variable_length_inputs": "true",  # `tokens` of different N are padded to merge
}


def batching_parameters() -> str:
    """The text of batching_parameters.pbtxt (a BatchingParameters proto in text format)."""
    lines = []
    for key, value in BATCHING_PARAMETERS.items():
        literal = value if isinstance(value, str) else str(value)
        lines.append(f"{key} {{ value: {literal} }}")
    return "\n".join(lines) + "\n"


def write_batching_parameters(saved_model_dir: str) -> None:
    with tf.io.gfile.GFile(posixpath.join(saved_model_dir, BATCHING_FILE), "w") as f:
        f.write(batching_parameters())


def next_tokens(logits, temperature, top_k, top_p, seed, step):
    """`sampling.next_token` with (B,) knobs: row b is what a batch of one with its knobs picks.

    Each row draws its own (V,) Philox uniforms keyed by (seed[b], step), the very numbers a
    (1, V) draw with that key gives, so a row does not depend on the rows merged with it.
    """
    vocabulary_size = tf.shape(logits)[-1]
    scaled = sampling.filter_logits(
        logits / tf.maximum(temperature, 1e-4)[:, None], top_k[:, None], top_p[:, None]
    )
    step = tf.cast(step, tf.int64)
    uniform = tf.map_fn(
        lambda row_seed: tf.random.stateless_uniform(
            [vocabulary_size], tf.stack([row_seed, step]), minval=1e-20, maxval=1.0, alg="philox"
        ),
        seed,
        fn_output_signature=tf.float32,
    )
    sampled = tf.argmax(scaled - tf.math.log(-tf.math.log(uniform)), -1, output_type=tf.int32)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.where(temperature > 0.0, sampled, greedy)


def decode_rows(model, ids, start, max_new_tokens, temperature, top_k, top_p, seed, stop_ids):
    """`generate.decode` with (B,) knobs; row b stops after max_new_tokens[b] tokens.

    The cache holds P + max(max_new_tokens) slots rather than max_sequence_length: a row's
    prompt is truncated for its own max_new_tokens, so the widest prompt and the longest
    completion may come from different rows. Positions stay below max_sequence_length per row.
    """
    batch, width = tf.shape(ids)[0], tf.shape(ids)[1]
    steps = tf.reduce_max(max_new_tokens)
    slots = width + steps
    positions = tf.maximum(tf.range(width)[None, :] - start[:, None], 0)
    cache = model.empty_cache(batch, slots)
    logits, cache = model(ids, positions=positions, cache=cache, cache_index=0, cache_start=start)
    columns = tf.range(slots)[None, :]

    def unfinished(step, logits, cache, tokens, lengths, done):
        return (step < steps) & ~tf.reduce_all(done)

    def one_token(step, logits, cache, tokens, lengths, done):
        token = next_tokens(logits, temperature, top_k, top_p, seed, step)
        done = done | (step >= max_new_tokens)
        token = tf.where(done, PAD_ID, token)
        tokens = tf.where(columns == step, token[:, None], tokens)
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
        logits[:, -1, :],
        cache,
        tf.fill([batch, slots], PAD_ID),
        tf.zeros([batch], tf.int32),
        tf.zeros([batch], tf.bool),
    )
    _, _, _, tokens, lengths, _ = tf.while_loop(unfinished, one_token, state)
    return tokens[:, :steps], lengths


class BatchingServingModule(ServingModule):
    """`ServingModule` plus the `generate_batched` signature."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="prompts"),
            *(tf.TensorSpec([None], dtype, name=name) for name, dtype in _INPUT_DTYPES.items()),
        ]
    )
    def generate_rows(self, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        """Completions of a batch of prompts, each with its own knobs (module docstring)."""
        limit = self.max_new_tokens_limit
        vocabulary_size = self.model.vocabulary_size
        rows = tf.size(prompts)
        knobs = (max_new_tokens, temperature, top_k, top_p, seed)
        checks = _check_texts(prompts, "prompts") + [
            _require(
                tf.reduce_all(tf.stack([tf.size(knob) for knob in knobs]) == rows),
                "every knob needs one value per prompt",
            ),
            _require(
                tf.reduce_all((max_new_tokens >= 1) & (max_new_tokens <= limit)),
                f"max_new_tokens must be in [1, {limit}], got",
                max_new_tokens,
            ),
            _require(
                tf.reduce_all((temperature >= 0.0) & (temperature <= 100.0)),
                "temperature must be in [0, 100], got",
                temperature,
            ),
            _require(
                tf.reduce_all((top_k >= 0) & (top_k <= vocabulary_size)),
                f"top_k must be in [0, {vocabulary_size}], got",
                top_k,
            ),
            _require(
                tf.reduce_all((top_p > 0.0) & (top_p <= 1.0)), "top_p must be in (0, 1], got", top_p
            ),
        ]
        with tf.control_dependencies(checks):
            ids = prompt_ids(self.tokenizer, prompts, self.start_ids)
            # Each row keeps its newest S - max_new_tokens[b] tokens, as serving_default would.
            lengths = tf.cast(ids.row_lengths(), tf.int32)
            dropped = tf.maximum(lengths - (self.model.max_sequence_length - max_new_tokens), 0)
            ids = tf.ragged.boolean_mask(ids, tf.ragged.range(lengths) >= dropped[:, None])
            width = tf.cast(tf.reduce_max(ids.row_lengths()), tf.int32)
            padded, start = left_pad(ids, width)
            tokens, lengths = decode_rows(self.model, padded, start, *knobs, self.stop_ids)
            texts = tf.RaggedTensor.from_tensor(tokens, lengths)
            return {"completions": self.tokenizer.detokenize(texts), "tokens": tokens}

    def signatures(self) -> dict:
        return {
            **super().signatures(),
            "generate_batched": self.generate_rows.get_concrete_function(),
        }
