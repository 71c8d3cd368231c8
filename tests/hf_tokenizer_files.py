"""Tiny Hugging Face tokenizer files, made offline the way their families make them.

`write_tokenizer(directory, family)` trains a byte-level BPE with the `tokenizers` library
(Llama 3, Qwen2 and GPT-2 pre-tokenizers, special tokens, post-processor) or a SentencePiece
model (Llama 2 settings), and writes tokenizer_config.json and generation_config.json beside it.
Reusable by any test that needs an HF model directory.
"""

from __future__ import annotations

import io
import json
import pathlib

import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, processors, trainers
from tokenizers import pre_tokenizers as pre

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
CORPUS = [
    "Hello world, it's 2024 and we're here. They'll say THEY'LL, I'd've, you're.",
    "def f(x):\n    return x  +  1\n\n\tindented\twith tabs\r\n",
    "Numbers 1234567890 and 3.14159, 42, 007; prices $1,000,000.",
    "café naïve résumé Ünïcödé — “quotes” ‘single’ «guillemets»",
    "日本語のテキスト、中文文本。한국어 텍스트 🙂👍🏽🎉 emoji",
    "spaces     here\u00a0nbsp\u3000ideographic   end   ",
]
FAMILIES = {
    # family: (Split pattern, or None for ByteLevel's own GPT-2 split; normalizer; specials)
    "llama3": (LLAMA3_PATTERN, None, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]),
    "qwen2": (QWEN2_PATTERN, "NFC", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "gpt2": (None, None, ["<|endoftext|>"]),
}


def write_tokenizer(directory: pathlib.Path, family: str, vocab_size: int = 600) -> pathlib.Path:
    """Writes the family's tokenizer files into `directory` (created); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    if family == "llama2":
        return _write_sentencepiece(directory)
    pattern, normalizer, specials = FAMILIES[family]
    tok = Tokenizer(models.BPE(ignore_merges=family == "llama3"))
    if pattern:
        split = pre.Split(Regex(pattern), "isolated")
        tok.pre_tokenizer = pre.Sequence([split, pre.ByteLevel(False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
    if normalizer:
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    if family == "llama3":  # Llama 3 puts BOS in front of every text; the others add nothing
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{specials[0]} $A", special_tokens=[(specials[0], 0)]
                ),
            ]
        )
    tok.save(str(directory / "tokenizer.json"))
    eos = {"llama3": [1, 2], "qwen2": [0, 2], "gpt2": 0}[family]
    config = {"eos_token": specials[-1], "pad_token": None}
    if family == "llama3":
        config["bos_token"] = specials[0]
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "generation_config.json", {"bos_token_id": 0, "eos_token_id": eos})
    return directory


def _write_sentencepiece(directory: pathlib.Path) -> pathlib.Path:
    """Llama 2's settings: BPE, byte fallback, digits split, dummy prefix, <unk> <s> </s>."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=model,
        vocab_size=500,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    (directory / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
    }
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(directory / "generation_config.json", {"bos_token_id": 1, "eos_token_id": 2})
    return directory


def _write_json(path: pathlib.Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2))
