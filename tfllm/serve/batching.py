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

from tfllm.serve.generate import decode, left_pad, prompt_ids
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
        vocabulary_size = self.model.config.vocabulary_size
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
            dropped = tf.maximum(
                lengths - (self.model.config.max_sequence_length - max_new_tokens), 0
            )
            ids = tf.ragged.boolean_mask(ids, tf.ragged.range(lengths) >= dropped[:, None])
            width = tf.cast(tf.reduce_max(ids.row_lengths()), tf.int32)
            padded, start = left_pad(ids, width)
            # The cache holds P + max(max_new_tokens) slots rather than max_sequence_length: a
            # row's prompt is truncated for its own max_new_tokens, so the widest prompt and the
            # longest completion may come from different rows.
            tokens, lengths = decode(
                self.model,
                padded,
                start,
                *knobs,
                self.stop_ids,
                width + tf.reduce_max(max_new_tokens),
            )
            texts = tf.RaggedTensor.from_tensor(tokens, lengths)
            return {"completions": self.tokenizer.detokenize(texts), "tokens": tokens}

    def signatures(self) -> dict:
        return {
            **super().signatures(),
            "generate_batched": self.generate_rows,
        }
