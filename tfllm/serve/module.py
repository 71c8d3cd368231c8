"""The serving `tf.Module`: text in, text out, with the tokenizer and every limit in the graph.

Signatures (all run without XLA, as TF Serving on GPU requires; tensorflow/serving#2214):

    serving_default  prompts (B,) string [, max_new_tokens, temperature, top_k, top_p, seed]
                     -> completions (B,) string, tokens (B, N) int32
    score            texts (B,) string -> log_likelihood (B,), token_loss (B, T), num_tokens (B,)
    logits           token_ids (B, T) int32 -> logits (B, T, V) float32

Requests outside the limits fail with InvalidArgument and a one-line reason, checked before any
work: at least one string, valid UTF-8, max_new_tokens in [1, max_sequence_length - 1],
temperature in [0, 100], top_k in [0, V], top_p in (0, 1], token ids in [0, V) (on GPU an
out-of-range id would silently embed as zeros), 1 <= T <= max_sequence_length.

Prompts follow the rule in `tfllm.generate`: EOS + prompt tokens, truncated from the left to
max_sequence_length - max_new_tokens tokens. `score` reads each text the same way, truncated
from the left to max_sequence_length + 1 tokens; the first token (EOS, unless truncated away) is
context only.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.model.lm import TransformerLM
from tfllm.serve.generate import decode, left_pad, prompt_ids
from tfllm.tokenizers import tokenizer
from tfllm.tokenizers.tokenizer import PAD_ID

# Optional inputs of serving_default and their defaults (max_new_tokens is set per export).
GENERATE_DEFAULTS = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}
_INPUT_DTYPES = {
    "max_new_tokens": tf.int32,
    "temperature": tf.float32,
    "top_k": tf.int32,
    "top_p": tf.float32,
    "seed": tf.int64,
}


def _require(condition, message: str, *values):
    """An in-graph check: InvalidArgument "assertion failed: [message] [values]" when false."""
    return tf.debugging.Assert(condition, [message, *values])


def _check_texts(texts, name: str) -> list:
    # Transcoding replaces every invalid sequence, so only valid UTF-8 comes out unchanged.
    clean = tf.strings.unicode_transcode(
        texts, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )
    return [
        _require(tf.size(texts) > 0, f"{name} must hold at least one string"),
        _require(tf.reduce_all(tf.equal(clean, texts)), f"{name} must be valid UTF-8"),
    ]


class ServingModule(tf.Module):
    """The exported model: weights, the tokenizer (tfllm's SentencePiece or an imported
    model's), assets and three signatures."""

    def __init__(self, model: TransformerLM, tokenizer_path: str, config_path: str):
        super().__init__(name="tfllm")
        # Track the TF variables under the Keras ones, not the Keras model: a Keras 3 variable
        # exports as a second tf.Variable initialized from the first, which the TF1 session
        # loader that TF Serving uses cannot resolve ("Could not find variable ...").
        self.weights = [variable.value for variable in model.weights]
        object.__setattr__(self, "model", model)  # bypasses tracking, see above
        # Tracked resources: saved with the SavedModel, copied to assets/ for people and tools.
        self.tokenizer = tokenizer.load_tokenizer(tokenizer_path)
        specials = tokenizer.specials(self.tokenizer)
        self.start_ids = specials.start  # the prompt rule (tfllm.serve.generate)
        self.stop_ids = tf.constant(specials.stop, tf.int32, shape=[len(specials.stop)])
        self.tokenizer_asset = tf.saved_model.Asset(tokenizer_path)
        self.config_asset = tf.saved_model.Asset(config_path)
        self.max_new_tokens_limit = model.config.max_sequence_length - 1

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="prompts"),
            *(tf.TensorSpec([], dtype, name=name) for name, dtype in _INPUT_DTYPES.items()),
        ]
    )
    def generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed):
        """Completions of a batch of prompts; see the module docstring for limits and rules."""
        limit = self.max_new_tokens_limit
        vocabulary_size = self.model.config.vocabulary_size
        checks = _check_texts(prompts, "prompts") + [
            _require(
                (max_new_tokens >= 1) & (max_new_tokens <= limit),
                f"max_new_tokens must be in [1, {limit}], got",
                max_new_tokens,
            ),
            _require(
                (temperature >= 0.0) & (temperature <= 100.0),  # false for NaN too
                "temperature must be in [0, 100], got",
                temperature,
            ),
            _require(
                (top_k >= 0) & (top_k <= vocabulary_size),
                f"top_k must be in [0, {vocabulary_size}], got",
                top_k,
            ),
            _require((top_p > 0.0) & (top_p <= 1.0), "top_p must be in (0, 1], got", top_p),
        ]
        with tf.control_dependencies(checks):
            ids = prompt_ids(self.tokenizer, prompts, self.start_ids)
            context = self.model.config.max_sequence_length - max_new_tokens
            width = tf.minimum(tf.cast(tf.reduce_max(ids.row_lengths()), tf.int32), context)
            padded, start = left_pad(ids, width)
            knobs = (max_new_tokens, temperature, top_k, top_p, seed)
            tokens, lengths = decode(self.model, padded, start, *knobs, self.stop_ids)
            texts = tf.RaggedTensor.from_tensor(tokens, lengths)
            return {"completions": self.tokenizer.detokenize(texts), "tokens": tokens}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
    def score(self, texts):
        """Per-token negative log-likelihoods of each text, and their sum as a log-likelihood."""
        with tf.control_dependencies(_check_texts(texts, "texts")):
            ids = prompt_ids(self.tokenizer, texts, self.start_ids)
            lengths = tf.cast(ids.row_lengths(), tf.int32)
            dropped = tf.maximum(lengths - (self.model.config.max_sequence_length + 1), 0)
            ids = tf.ragged.boolean_mask(ids, tf.ragged.range(lengths) >= dropped[:, None])
            lengths = lengths - dropped
            # Right padding: causal attention never looks at the padding after a text.
            dense = ids.to_tensor(default_value=PAD_ID)  # (B, W)
            dense = tf.pad(dense, [[0, 0], [0, tf.maximum(2 - tf.shape(dense)[1], 0)]])
            logits = self.model(dense[:, :-1])  # (B, W - 1, V)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(dense[:, 1:], logits)
            scored = tf.range(tf.shape(losses)[1])[None, :] < (lengths - 1)[:, None]
            token_loss = tf.where(scored, losses, 0.0)
            return {
                "log_likelihood": -tf.reduce_sum(token_loss, axis=-1),
                "token_loss": token_loss,
                "num_tokens": tf.maximum(lengths - 1, 0),
            }

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids")])
    def logits(self, token_ids):
        """Next-token logits at every position of a batch of equal-length id sequences."""
        vocabulary_size = self.model.config.vocabulary_size
        length = tf.shape(token_ids)[1]
        checks = [
            _require(tf.shape(token_ids)[0] > 0, "token_ids must hold at least one sequence"),
            _require(
                (length >= 1) & (length <= self.model.config.max_sequence_length),
                f"token_ids length must be in [1, {self.model.config.max_sequence_length}], got",
                length,
            ),
            _require(
                tf.reduce_all((token_ids >= 0) & (token_ids < vocabulary_size)),
                f"token_ids must be in [0, {vocabulary_size})",
            ),
        ]
        with tf.control_dependencies(checks):
            return {"logits": self.model(token_ids)}

    def signatures(self) -> dict:
        """The functions, not their concrete functions: `tf.saved_model.save` traces them in its
        save context, as it traces the module's own functions, so the SavedModel holds one copy
        of each graph. A concrete function traced before the save is a second copy (twice the
        graph: 7.5 MB instead of 4.0 on the small config)."""
        return {"serving_default": self.generate, "score": self.score, "logits": self.logits}
