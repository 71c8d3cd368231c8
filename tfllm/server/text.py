"""Token ids <-> text for the server, and what of a growing completion may be sent yet.

tfllm's own SentencePiece model runs through the `sentencepiece` library (the very model the
in-graph tokenizer of `tfllm generate` and the export runs: tests/test_data_scale.py checks
they give the same ids), since the scheduler decodes every running sequence at every step and a
TensorFlow call per sequence would cost more than the model. An imported model's Hugging Face
tokenizer runs in-graph, as `tfllm.serve.generate.Generator` runs it.

A completion is decoded whole after each new token (so byte-fallback pieces that only make a
character together come out right) and sent up to what is safe: not a trailing replacement
character (the start of a character whose other bytes are still to come), not a tail that may
still become one of the request's stop strings.
"""

from __future__ import annotations

import json
import posixpath

import tensorflow as tf

from tfllm.errors import TfllmError
from tfllm.tokenizers import tokenizer


class Codec:
    """`encode(text) -> ids`, `decode(ids) -> text` and the model's special ids."""

    def __init__(self, tokenizer_path: str):
        if not tf.io.gfile.exists(tokenizer_path):
            raise TfllmError(f"tokenizer not found: {tokenizer_path}")
        if tokenizer.is_hf_tokenizer(tokenizer_path):
            graph = tokenizer.load_tokenizer(tokenizer_path)
            self.specials = tokenizer.specials(graph)
            tokenize = tf.function(
                graph.tokenize, input_signature=[tf.TensorSpec([None], tf.string)]
            )
            detokenize = tf.function(
                lambda ids: graph.detokenize(tf.RaggedTensor.from_tensor(ids[None])),
                input_signature=[tf.TensorSpec([None], tf.int32)],
            )
            self._encode = lambda text: tokenize(tf.constant([text])).to_list()[0]
            self._decode = lambda ids: (
                detokenize(tf.constant(ids, tf.int32)).numpy()[0].decode("utf-8", "replace")
            )
            self.eos_token = _eos_token(tokenizer_path, graph, self.specials.stop)
        else:
            import sentencepiece as spm

            with tf.io.gfile.GFile(tokenizer_path, "rb") as f:
                processor = spm.SentencePieceProcessor(model_proto=f.read())
            self.specials = tokenizer.specials(None)
            self._encode = processor.encode
            self._decode = processor.decode
            self.eos_token = processor.id_to_piece(tokenizer.EOS_ID)

    def encode(self, text: str, start: bool = True) -> list[int]:
        """The ids of `text`; with `start`, the model's start ids first (the prompt rule of
        `tfllm.serve.generate`)."""
        ids = [int(i) for i in self._encode(text)]
        return [*self.specials.start, *ids] if start else ids

    def decode(self, ids: list[int]) -> str:
        return self._decode(list(ids)) if ids else ""


def _eos_token(tokenizer_path: str, graph, stop: tuple[int, ...]) -> str:
    """A Hugging Face tokenizer's EOS text as transformers' `tokenizer.eos_token` gives it:
    tokenizer_config.json's `eos_token`, else the text of the model's first stop id."""
    directory = (
        tokenizer_path if tf.io.gfile.isdir(tokenizer_path) else posixpath.dirname(tokenizer_path)
    )
    config_path = posixpath.join(directory, "tokenizer_config.json")
    if tf.io.gfile.exists(config_path):
        with tf.io.gfile.GFile(config_path) as f:
            value = json.load(f).get("eos_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            return value
    if not stop:
        return ""
    text = graph.detokenize(tf.constant([[stop[0]]]), skip_special_tokens=False)
    return text.numpy()[0].decode("utf-8", "replace")


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of `text` must wait: a replacement character (an
    unfinished UTF-8 sequence) or the longest tail that begins one of `stops`."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def find_stop(text: str, stops: list[str], since: int) -> int:
    """The index in `text` of the earliest stop string that ends after `since`, or -1."""
    found = -1
    for stop in stops:
        at = text.find(stop, max(0, since - len(stop) + 1))
        if at >= 0 and (found < 0 or at < found):
            found = at
    return found
