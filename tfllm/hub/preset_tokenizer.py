"""A keras-hub preset's tokenizer as the Hugging Face files tfllm reads
(`tfllm.tokenizers.hf_tokenizer`).

SentencePiece tokenizers (Gemma, Mistral, Llama 2) keep their model: assets/tokenizer/
vocabulary.spm becomes tokenizer.model. Byte-level BPE tokenizers (Llama 3, Qwen, GPT-2) become a
`tokenizers` tokenizer.json from keras-hub's vocabulary and merges with the family's own
Hugging Face pre-tokenizer (keras-hub splits every family with Llama 3's pattern in Python and
GPT-2's in its TF graph; the model was trained with its family's), the tokenizer's special tokens
never split, and Llama 3's BOS post-processor. tokenizer_config.json and generation_config.json
carry the start and end tokens (Llama 3's two stop ids).
"""

from __future__ import annotations

import json
import os
import shutil

from tfllm.hub.hf_config import HubError

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
_SPM = "assets/tokenizer/vocabulary.spm"


def write_tokenizer(tokenizer, preset: str, family: str, out: str) -> str:
    """Writes the HF tokenizer files of keras-hub `tokenizer` (loaded from `preset`) into `out`;
    returns the name of the tokenizer file."""
    if os.path.isfile(os.path.join(preset, _SPM)):
        shutil.copy2(os.path.join(preset, _SPM), os.path.join(out, "tokenizer.model"))
        name, add_bos = "tokenizer.model", True
    elif hasattr(tokenizer, "merges"):
        _bpe(tokenizer, family).save(os.path.join(out, "tokenizer.json"))
        name, add_bos = "tokenizer.json", family == "llama"
    else:
        raise HubError(
            f"{preset}: tokenizer {type(tokenizer).__name__} is neither SentencePiece "
            "(assets/tokenizer/vocabulary.spm) nor byte-level BPE"
        )
    start = tokenizer.start_token if add_bos else None
    ends = [getattr(tokenizer, a, None) for a in ("end_token", "end_token2")]
    ends = [t for t in ends if t is not None]
    config = {"add_bos_token": add_bos, "add_eos_token": False}
    config.update({"bos_token": start} if start else {})
    config.update({"eos_token": ends[0]} if ends else {})
    generation = {"eos_token_id": [tokenizer.token_to_id(t) for t in ends]}
    if start:
        generation["bos_token_id"] = tokenizer.token_to_id(start)
    for file, value in (("tokenizer_config.json", config), ("generation_config.json", generation)):
        with open(os.path.join(out, file), "w") as f:
            json.dump(value, f, indent=2)
    return name


def _bpe(tokenizer, family: str):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors
    from tokenizers import pre_tokenizers as pre

    vocab = dict(tokenizer.vocabulary)
    merges = [tuple(m.split(" ")) for m in tokenizer.merges if not m.startswith("#version")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    if family == "gpt2":
        tok.pre_tokenizer = pre.ByteLevel(add_prefix_space=False)
    else:
        pattern = LLAMA3_PATTERN if family == "llama" else QWEN2_PATTERN
        split = pre.Split(Regex(pattern), "isolated")
        tok.pre_tokenizer = pre.Sequence([split, pre.ByteLevel(False, use_regex=False)])
        if family != "llama":
            tok.normalizer = normalizers.NFC()  # Qwen's tokenizer.json normalizes
    tok.decoder = decoders.ByteLevel()
    specials = list(getattr(tokenizer, "unsplittable_tokens", None) or [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if family == "llama" and tokenizer.start_token is not None:
        bos = tokenizer.start_token
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
                ),
            ]
        )
    return tok
