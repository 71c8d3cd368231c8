"""Hugging Face tokenizers in the graph: byte-level BPE `tokenizer.json` and SentencePiece.

`load_hf_tokenizer(path)` reads a model directory (or the file itself) and returns a `tf.Module`
whose `tokenize` (strings (B,) -> ragged int32 (B, None)) and `detokenize` run eagerly, inside
tf.data and inside a SavedModel that needs only tensorflow + tensorflow_text to reload. The ids
equal the `tokenizers` library's (`Tokenizer.from_file(f).encode(text, add_special_tokens=False)`)
and `sentencepiece`'s; `encode` adds what the post-processor adds (Llama 3's BOS), as
`transformers` does by default. Special and added tokens are split out before anything else.

Byte-level BPE (GPT-2, Llama 3, Qwen2): the pre-tokenizer's own split patterns (see bpe.py),
the byte alphabet, then the merges. SentencePiece (Llama 2, Mistral, Gemma): tensorflow-text.
"""

from __future__ import annotations

import json
import posixpath
import re

import tensorflow as tf
import tensorflow_text as tf_text

from tfllm.errors import DataError
from tfllm.tokenizers import bpe


def _read_json(path: str, required: bool = True) -> dict:
    if not tf.io.gfile.exists(path):
        if required:
            raise DataError(f"{path}: not found")
        return {}
    with tf.io.gfile.GFile(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None


class _Tokenizer(tf.Module):
    """What both kinds share: the stop/bos/pad metadata and `encode` (the default template)."""

    def _set_metadata(self, directory: str, token_id, prefix=(), suffix=()):
        """Ids from tokenizer_config.json (token strings), generation_config.json, config.json."""
        tok_cfg = _read_json(posixpath.join(directory, "tokenizer_config.json"), False)
        gen_cfg = _read_json(posixpath.join(directory, "generation_config.json"), False)
        model_cfg = _read_json(posixpath.join(directory, "config.json"), False)

        def named(key):  # "<s>" or {"content": "<s>", ...} in tokenizer_config.json
            value = tok_cfg.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            return token_id(value) if isinstance(value, str) else None

        def numbered(key):
            value = gen_cfg.get(key, model_cfg.get(key))
            return [value] if isinstance(value, int) else list(value or [])

        self.bos_id = named("bos_token")
        self.bos_id = (
            self.bos_id if self.bos_id is not None else (numbered("bos_token_id") or [None])[0]
        )
        eos = numbered("eos_token_id") + [named("eos_token")]
        self.eos_ids = tuple(dict.fromkeys(i for i in eos if i is not None))
        pad = named("pad_token")
        self.pad_id = pad if pad is not None else (numbered("pad_token_id") or [None])[0]
        self.prefix_ids, self.suffix_ids = tuple(prefix), tuple(suffix)

    @property
    def adds_bos(self) -> bool:
        """Whether `encode` (transformers' default) starts a text with the BOS id."""
        return self.bos_id is not None and self.prefix_ids[:1] == (self.bos_id,)

    def encode(self, texts) -> tf.RaggedTensor:
        """Strings (B,) -> (B, None) ids with the post-processor's tokens, as transformers."""
        ids = self.tokenize(texts)

        def fixed(part):  # the same ids on every row
            part = tf.constant([part], tf.int32, shape=[1, len(part)])
            return tf.RaggedTensor.from_tensor(tf.tile(part, [ids.nrows(out_type=tf.int32), 1]))

        return tf.concat([fixed(self.prefix_ids), ids, fixed(self.suffix_ids)], axis=1)


class ByteLevelBPETokenizer(_Tokenizer):
    """A `tokenizer.json` with a BPE model and a ByteLevel pre-tokenizer, as TF ops."""

    def __init__(self, spec: dict, directory: str, source: str):
        super().__init__(name="byte_level_bpe")
        model = spec.get("model") or {}
        if model.get("type") != "BPE":
            raise DataError(f"{source}: model.type {model.get('type')!r}; supported: BPE")
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise DataError(f"{source}: model.{key}={model[key]!r} is not supported")
        if model.get("byte_fallback"):
            raise DataError(
                f"{source}: model.byte_fallback is SentencePiece-style; use tokenizer.model"
            )
        self._steps = bpe.pre_tokenizer_steps(spec.get("pre_tokenizer"), source)
        self._normalization = bpe.normalization(spec.get("normalizer"), source)
        self._ignore_merges = bool(model.get("ignore_merges"))

        alphabet = {c: b for b, c in bpe.byte_alphabet().items()}
        vocab = model.get("vocab") or {}
        try:  # tokens in the byte alphabet -> their raw bytes, which is what the graph sees
            raw = {bytes(alphabet[c] for c in token): i for token, i in vocab.items()}
        except KeyError as err:
            raise DataError(f"{source}: vocab token outside the byte alphabet ({err})") from None
        added = {t["content"]: t["id"] for t in spec.get("added_tokens", [])}
        for t in spec.get("added_tokens", []):
            if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
                raise DataError(
                    f"{source}: added token {t['content']!r}: lstrip/rstrip/single_word"
                )
        self.vocabulary_size = max([*vocab.values(), *added.values()]) + 1
        self.special_ids = tuple(
            sorted(t["id"] for t in spec.get("added_tokens", []) if t["special"])
        )
        self._width = self.vocabulary_size

        ranks, results = [], []
        for rank, pair in enumerate(model.get("merges") or []):
            left, right = pair.split(" ") if isinstance(pair, str) else pair
            try:
                ids = vocab[left], vocab[right], vocab[left + right]
            except KeyError as err:
                raise DataError(
                    f"{source}: merge {rank} ({left} {right}): {err} not in vocab"
                ) from None
            ranks.append(ids[0] * self._width + ids[1])
            results.append(ids[2])
        self._vocab = _table(list(raw), list(raw.values()), tf.string)
        self._added = _table(list(added), list(added.values()), tf.string)
        self._ranks = _table(ranks or [-1], list(range(len(ranks))) or [0], tf.int64, bpe.NO_MERGE)
        self._results = tf.constant(results, tf.int32, shape=[len(results)])
        self._added_pattern = "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
        pieces = [b""] * self.vocabulary_size  # id -> the bytes it decodes to
        for token, i in raw.items():
            pieces[i] = token
        for token, i in added.items():
            pieces[i] = token.encode()
        self._pieces = tf.constant(pieces, tf.string)
        self._is_special = tf.constant([i in self.special_ids for i in range(self.vocabulary_size)])
        self._set_metadata(
            directory,
            lambda t: added.get(t, vocab.get(t)),
            *_template(spec.get("post_processor"), added, source),
        )

    def pre_tokenize(self, texts) -> tf.RaggedTensor:
        """(N,) strings without added tokens -> (N, None) words, exactly as the pre-tokenizer."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if self._normalization:
            texts = tf_text.normalize_utf8(texts, self._normalization)
        words = tf.RaggedTensor.from_tensor(texts[:, None])
        for step in self._steps:
            if step == "prefix_space":
                flat = words.flat_values
                spaced = tf.where(tf.strings.regex_full_match(flat, "(?s) .*"), flat, " " + flat)
                words = words.with_flat_values(spaced)
            else:
                words = words.with_flat_values(step(words.flat_values)).merge_dims(1, 2)
        return words

    def tokenize(self, texts) -> tf.RaggedTensor:
        """Strings (B,) -> ragged int32 ids (B, None), without the post-processor's tokens."""
        texts = tf.convert_to_tensor(texts, tf.string)
        if self._added_pattern:  # added tokens are pieces of their own, never pre-tokenized
            pieces = tf_text.regex_split(texts, self._added_pattern, self._added_pattern)
        else:
            pieces = tf.RaggedTensor.from_tensor(texts[:, None])
        flat = pieces.flat_values  # (N,)
        added = self._added.lookup(flat)
        words = self.pre_tokenize(tf.where(added >= 0, "", flat))  # (N, W)
        symbols = self._vocab.lookup(tf.strings.bytes_split(words.flat_values))  # (total W, C)
        # Bytes absent from the vocab are dropped, as `tokenizers` does without an unk token.
        dense = tf.ragged.boolean_mask(symbols, symbols >= 0).to_tensor(-1)  # (total W, L)
        if self._ignore_merges:  # a word that is itself a token is not merged (Llama 3)
            whole = self._vocab.lookup(words.flat_values)[:, None]
            first = tf.range(tf.shape(dense)[1])[None, :] == 0
            dense = tf.where(whole >= 0, tf.where(first, whole, -1), dense)
        tokens = bpe.merge(dense, self._ranks, self._results, self._width)
        per_piece = words.with_flat_values(tokens).merge_dims(1, 2)  # (N, T)
        lone = tf.RaggedTensor.from_row_lengths(
            tf.boolean_mask(added, added >= 0), tf.cast(added >= 0, tf.int64)
        )
        per_piece = tf.concat([per_piece, lone], axis=1)
        return pieces.with_flat_values(per_piece).merge_dims(1, 2)

    def detokenize(self, ids, skip_special_tokens: bool = False) -> tf.Tensor:
        """Ragged or dense int ids (B, None) -> strings (B,); invalid UTF-8 becomes U+FFFD."""
        ids = ids if isinstance(ids, tf.RaggedTensor) else tf.RaggedTensor.from_tensor(ids)
        ids = tf.cast(ids, tf.int32)
        keep = (ids >= 0) & (ids < self.vocabulary_size)  # unknown ids are skipped, as HF does
        if skip_special_tokens:
            keep = keep & tf.logical_not(tf.gather(self._is_special, tf.where(keep, ids, 0)))
        ids = tf.ragged.boolean_mask(ids, keep)
        text = tf.strings.reduce_join(tf.gather(self._pieces, ids), axis=-1)
        return tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace")


class SentencePieceTokenizer(_Tokenizer):
    """A SentencePiece `tokenizer.model` (Llama 2, Mistral, Gemma) through tensorflow-text.

    Ids equal the `sentencepiece` library's; control pieces written in the text (`</s>`) are
    text, as there. The BOS/EOS that `encode` adds follow tokenizer_config.json's
    `add_bos_token` (default true, as transformers' Llama and Gemma tokenizers) and
    `add_eos_token` (default false); without that file (tfllm's own tokenizer) none.
    """

    def __init__(self, path: str, directory: str):
        super().__init__(name="sentencepiece")
        with tf.io.gfile.GFile(path, "rb") as f:
            self._sp = tf_text.SentencepieceTokenizer(model=f.read(), out_type=tf.int32)
        self.vocabulary_size = int(self._sp.vocab_size())

        def token_id(token):
            i = int(self._sp.string_to_id(token))
            return i if self._sp.id_to_string(i).numpy().decode() == token else None

        tok_cfg = _read_json(posixpath.join(directory, "tokenizer_config.json"), False)
        self._set_metadata(directory, token_id)
        add_bos = tok_cfg.get("add_bos_token", bool(tok_cfg)) and self.bos_id is not None
        add_eos = tok_cfg.get("add_eos_token", False) and self.eos_ids
        self.prefix_ids = (self.bos_id,) if add_bos else ()
        self.suffix_ids = (self.eos_ids[0],) if add_eos else ()
        self.special_ids = tuple(sorted({self.bos_id, *self.eos_ids, self.pad_id} - {None}))

    def tokenize(self, texts) -> tf.RaggedTensor:
        """Strings (B,) -> ragged int32 ids (B, None), without BOS/EOS."""
        return self._sp.tokenize(tf.convert_to_tensor(texts, tf.string))

    def detokenize(self, ids, skip_special_tokens: bool = True) -> tf.Tensor:
        """Ids (B, None) -> strings (B,); SentencePiece always drops control pieces."""
        return self._sp.detokenize(ids)


def load_hf_tokenizer(path: str) -> _Tokenizer:
    """An HF model directory, `tokenizer.json` or `tokenizer.model` -> an in-graph tokenizer.

    In a directory, a byte-level BPE `tokenizer.json` wins; otherwise `tokenizer.model`
    (Llama 2 style directories carry both, and their tokenizer.json is SentencePiece-shaped).
    """
    if tf.io.gfile.isdir(path):
        directory, spec_path = path, posixpath.join(path, "tokenizer.json")
        model_path = posixpath.join(path, "tokenizer.model")
        spec = _read_json(spec_path, required=False)
        has_model = tf.io.gfile.exists(model_path)
        if spec and ('"ByteLevel"' in json.dumps(spec.get("pre_tokenizer")) or not has_model):
            return ByteLevelBPETokenizer(spec, directory, spec_path)
        if has_model:
            return SentencePieceTokenizer(model_path, directory)
        raise DataError(f"{path}: no tokenizer.json or tokenizer.model")
    directory = posixpath.dirname(path)
    if path.endswith(".json"):
        return ByteLevelBPETokenizer(_read_json(path), directory, path)
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: not found")
    return SentencePieceTokenizer(path, directory)


def _table(keys: list, values: list, key_dtype, default: int = -1) -> tf.lookup.StaticHashTable:
    init = tf.lookup.KeyValueTensorInitializer(
        tf.constant(keys, key_dtype, shape=[len(keys)]),
        tf.constant(values, tf.int32, shape=[len(values)]),
    )
    return tf.lookup.StaticHashTable(init, default_value=default)


def _template(spec: dict | None, added: dict, source: str) -> tuple[list, list]:
    """The ids the post-processor puts before and after a single text."""
    prefix, suffix = [], []
    for part in bpe.flatten(spec, "processors"):
        if part.get("type") == "ByteLevel":
            continue
        if part.get("type") != "TemplateProcessing":
            raise DataError(f"{source}: post_processor {part.get('type')!r} not supported")
        side = prefix
        for item in part.get("single", []):
            if "Sequence" in item:
                side = suffix
            else:
                side.extend(part["special_tokens"][item["SpecialToken"]["id"]]["ids"])
    return prefix, suffix
