"""SentencePiece: trained with the `sentencepiece` library, run in-graph with tensorflow-text.

The in-graph op is the tokenizer of record: the exported SavedModel carries it. `prepare`'s
worker processes run the same model with the `sentencepiece` library (no TensorFlow in them);
tests/test_corpus_scale.py checks that both give the same ids, so data and serving agree.

`load_tokenizer(path)` is the one way to open any tokenizer tfllm uses (this SentencePiece
model or a Hugging Face one, `hf_tokenizer.py`), and `specials` gives the ids a model puts
around its text (start, stop, pad).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import posixpath
from collections.abc import Iterable, Iterator

import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.errors import DataError
from tfllm.tokenizers.hf_tokenizer import load_hf_tokenizer

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
# SentencePiece caps one training sentence; longer paragraphs are cut into pieces this long.
_MAX_SENTENCE_CHARS = 16384


def _sentences(texts: Iterable[str], sample_bytes: int) -> Iterator[str]:
    """Paragraphs of the sample, cut to SentencePiece's limit, until sample_bytes are given."""
    given = 0
    for text in texts:
        for paragraph in text.split("\n\n"):
            for start in range(0, len(paragraph), _MAX_SENTENCE_CHARS):
                piece = paragraph[start : start + _MAX_SENTENCE_CHARS]
                if piece.strip():
                    yield piece
                    given += len(piece)
                    if given >= sample_bytes:
                        return


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "unigram",
    sample_mb: int = 8,
    byte_fallback: bool = True,
    character_coverage: float = 0.9995,
) -> bytes:
    """Trains a SentencePiece model on the first `sample_mb` MB of texts; returns its proto.

    Identity normalization, kept whitespace, a newline piece and byte fallback make
    detokenize(tokenize(text)) == text for any UTF-8 input, which source code needs. Without
    byte fallback, characters outside the coverage become <unk> and that is lossy.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(texts, sample_mb << 20),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=byte_fallback,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            user_defined_symbols=["\n"],
            character_coverage=character_coverage,
            max_sentence_length=_MAX_SENTENCE_CHARS * 4,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            eos_id=EOS_ID,
            bos_id=-1,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as err:
        # e.g. "Vocabulary size is too high": the sample has too few distinct pieces.
        raise DataError(f"tokenizer training failed (vocab_size={vocab_size}): {err}") from None
    return model.getvalue()


def sha256(model_proto: bytes) -> str:
    return hashlib.sha256(model_proto).hexdigest()


def is_hf_tokenizer(path: str) -> bool:
    """A Hugging Face tokenizer: a directory, a `.json`, or a `.model` beside the
    `tokenizer_config.json` that says how it adds BOS/EOS (an imported model's)."""
    beside = posixpath.join(posixpath.dirname(path), "tokenizer_config.json")
    return tf.io.gfile.isdir(path) or path.endswith(".json") or tf.io.gfile.exists(beside)


@dataclasses.dataclass(frozen=True)
class Specials:
    """The ids a model's text conventions need around its tokens.

    start: in front of a prompt (and of every document tfllm packs); stop: any ends a
    completion; pad: the filler of padded positions (never attended to, never a target).
    """

    start: tuple[int, ...]
    stop: tuple[int, ...]
    pad: int = PAD_ID


def specials(tokenizer) -> Specials:
    """tfllm's own SentencePiece models read a prompt as a new document, after the EOS that
    separates their training documents, and stop at EOS. An imported model reads it the way
    its own tokenizer does by default (its post-processor's prefix: Llama's BOS, nothing for
    Qwen2 or GPT-2) and stops at any of its EOS ids (generation_config.json)."""
    if not hasattr(tokenizer, "eos_ids"):
        return Specials((EOS_ID,), (EOS_ID,))
    return Specials(tuple(tokenizer.prefix_ids), tuple(tokenizer.eos_ids))


def load_tokenizer(path: str):
    """The in-graph tokenizer: string tensors in, int32 ragged ids out (and back).

    A directory or a `.json` file is a Hugging Face tokenizer (`load_hf_tokenizer`: byte-level
    BPE `tokenizer.json` or `tokenizer.model`, with its BOS/EOS metadata); any other path is a
    SentencePiece model such as the one `prepare` trains. Both answer `tokenize`/`detokenize`.
    """
    if is_hf_tokenizer(path):
        return load_hf_tokenizer(path)
    if not tf.io.gfile.exists(path):
        raise DataError(f"tokenizer not found: {path} (run python -m tfllm.prepare)")
    with tf.io.gfile.GFile(path, "rb") as f:
        proto = f.read()
    return tf_text.SentencepieceTokenizer(model=proto, out_type=tf.int32)
