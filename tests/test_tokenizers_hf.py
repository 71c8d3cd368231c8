"""Hugging Face tokenizers in the graph give the ids of `tokenizers` and `sentencepiece`.

Eagerly, inside tf.data, and from a SavedModel reloaded in a fresh process that imports only
tensorflow and tensorflow_text; decoding gives the text back.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import sentencepiece as spm
import tensorflow as tf
from tokenizers import Tokenizer

from tests.hf_tokenizer_files import write_tokenizer
from tfllm.errors import DataError
from tfllm.tokenizers import bpe
from tfllm.tokenizers.hf_tokenizer import load_hf_tokenizer
from tfllm.tokenizers.tokenizer import load_tokenizer

BPE_FAMILIES = ["llama3", "qwen2", "gpt2"]
SPECIAL = {"llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "gpt2": "<|endoftext|>"}
TEXTS = [
    "Hello world, it's 2024!",
    "digits 1234567890 3.14159 and 00042",
    "contractions it's we're THEY'LL I'd've You'RE",
    "runs of     spaces   and trailing spaces   ",
    "newlines\n\n\nand\r\nwindows\n  \n indented\n",
    "\ttabs\t\there \t mixed \t\t",
    "accents café naïve résumé e\u0301 (combining)",
    "CJK 日本語のテキスト 中文 한국어",
    "emoji 🙂👍🏽🎉 and ZWJ 👨‍👩‍👧",
    "unicode spaces a\u00a0b\u3000c\u2028d\x0be",
    "",
    " ",
    "SPECIAL in the middleSPECIALand at the end SPECIAL",
]
# Pieces the fuzzed strings are drawn from: every class the split patterns distinguish.
ALPHABET = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\x0b", "\u0085", "\u2028"]
ALPHABET += ["a", "Bc", "é", "e\u0301", "日", "本語", "🙂", "👍🏽", "1", "23", "4567"]
ALPHABET += ["'", "'s", "'LL", "'re", "'d", ".", ",!", "-", "$", "“"]


def _fuzz(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choices(ALPHABET, k=rng.randint(1, 12))) for _ in range(count)]


def _texts(family: str) -> list[str]:
    return [t.replace("SPECIAL", SPECIAL[family]) for t in TEXTS]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {f: write_tokenizer(root / f, f) for f in [*BPE_FAMILIES, "llama2"]}


@pytest.mark.parametrize("family", BPE_FAMILIES)
def test_split_equals_tokenizers_pre_tokenizer_on_fuzzed_text(hf_dirs, family):
    """The RE2 translation of the file's pattern (lookahead included) splits as Oniguruma does."""
    ref = Tokenizer.from_file(str(hf_dirs[family] / "tokenizer.json"))
    raw = {c: b for b, c in bpe.byte_alphabet().items()}
    texts = _fuzz(400) + _texts(family)[:-1]
    ours = load_hf_tokenizer(str(hf_dirs[family])).pre_tokenize(texts).to_list()
    for text, words in zip(texts, ours, strict=True):
        normalized = ref.normalizer.normalize_str(text) if ref.normalizer else text
        pieces = ref.pre_tokenizer.pre_tokenize_str(normalized)
        expected = [bytes(raw[c] for c in piece) for piece, _ in pieces]
        assert words == expected, repr(text)


@pytest.mark.parametrize("family", BPE_FAMILIES)
def test_ids_equal_tokenizers_eagerly_and_decode_back(hf_dirs, family):
    ref = Tokenizer.from_file(str(hf_dirs[family] / "tokenizer.json"))
    tok = load_hf_tokenizer(str(hf_dirs[family]))
    texts = _texts(family) + _fuzz(200, seed=1)
    plain = tok.tokenize(texts).to_list()
    assert plain == [ref.encode(t, add_special_tokens=False).ids for t in texts]
    assert tok.encode(texts).to_list() == [ref.encode(t).ids for t in texts]
    assert max(len(ids) for ids in plain) > 20  # merges happened on long enough rows
    decoded = [t.decode() for t in tok.detokenize(tf.ragged.constant(plain, tf.int32)).numpy()]
    assert decoded == [ref.decode(ids, skip_special_tokens=False) for ids in plain]
    unchanged = [t for t in texts if ref.normalizer is None or "e\u0301" not in t]
    assert [d for d, t in zip(decoded, texts, strict=True) if t in unchanged] == unchanged


def test_metadata_follows_tokenizer_and_generation_config(hf_dirs):
    llama3 = load_hf_tokenizer(str(hf_dirs["llama3"] / "tokenizer.json"))
    assert (llama3.bos_id, llama3.eos_ids, llama3.pad_id) == (0, (1, 2), None)
    assert llama3.adds_bos and llama3.prefix_ids == (0,)  # transformers' default prompt
    assert llama3.special_ids == (0, 1, 2)
    qwen2 = load_hf_tokenizer(str(hf_dirs["qwen2"]))
    assert (qwen2.eos_ids, qwen2.adds_bos) == ((0, 2), False)
    gpt2 = load_hf_tokenizer(str(hf_dirs["gpt2"]))
    assert (gpt2.bos_id, gpt2.eos_ids, gpt2.prefix_ids) == (0, (0,), ())
    llama2 = load_hf_tokenizer(str(hf_dirs["llama2"]))
    assert (llama2.bos_id, llama2.eos_ids, llama2.prefix_ids) == (1, (2,), (1,))


def test_sentencepiece_ids_equal_the_library(hf_dirs):
    ref = spm.SentencePieceProcessor(model_file=str(hf_dirs["llama2"] / "tokenizer.model"))
    tok = load_hf_tokenizer(str(hf_dirs["llama2"]))
    texts = [t.replace("SPECIAL", " ") for t in TEXTS] + _fuzz(100, seed=2)
    assert tok.tokenize(texts).to_list() == ref.encode(texts)
    assert tok.encode(texts).to_list() == [[1, *ids] for ids in ref.encode(texts)]
    decoded = [t.decode() for t in tok.detokenize(tok.tokenize(texts)).numpy()]
    assert decoded == ref.decode(ref.encode(texts))


@pytest.mark.parametrize("family", ["llama3", "llama2"])
def test_inside_tf_data(hf_dirs, family):
    tok = load_hf_tokenizer(str(hf_dirs[family]))
    texts = _texts("llama3") if family == "llama3" else TEXTS
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(4).map(tok.encode, num_parallel_calls=2)
    rows = [row for batch in ds for row in batch.to_list()]
    assert rows == tok.encode(texts).to_list()


def test_load_tokenizer_dispatches_on_the_path(hf_dirs, tmp_path):
    assert load_tokenizer(str(hf_dirs["gpt2"])).tokenize(["hi"]).to_list()[0]
    ref = Tokenizer.from_file(str(hf_dirs["gpt2"] / "tokenizer.json"))
    hf_file = load_tokenizer(str(hf_dirs["gpt2"] / "tokenizer.json"))
    assert hf_file.vocabulary_size == ref.get_vocab_size(with_added_tokens=True)
    own = load_tokenizer(str(hf_dirs["llama2"] / "tokenizer.model"))  # tfllm's own kind of file
    assert own.detokenize(own.tokenize(["a b"])).numpy().tolist() == [b"a b"]


_RELOAD = """
import json, sys
import tensorflow as tf, tensorflow_text  # noqa: F401 (registers the ops)
out = {}
for name, path, texts in json.loads(sys.argv[1]):
    m = tf.saved_model.load(path)
    enc = m.signatures["encode"](texts=tf.constant(texts))
    dec = m.signatures["decode"](ids=enc["ids"], lengths=enc["lengths"])
    ids = tf.RaggedTensor.from_row_lengths(enc["ids"], enc["lengths"]).to_list()
    out[name] = {"ids": ids, "texts": [t.decode() for t in dec["texts"].numpy()]}
assert not [m for m in sys.modules if m.startswith("tfllm")]
print(json.dumps(out))
"""


class _Serving(tf.Module):
    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(self, texts):
        ids = self.tokenizer.encode(texts)
        return {"ids": ids.flat_values, "lengths": ids.row_lengths()}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int64)])
    def decode(self, ids, lengths):
        ids = tf.RaggedTensor.from_row_lengths(ids, lengths)
        return {"texts": self.tokenizer.detokenize(ids)}


@pytest.mark.slow  # a subprocess
def test_savedmodel_reloaded_in_a_fresh_process(hf_dirs, tmp_path):
    jobs, expected = [], {}
    for family in [*BPE_FAMILIES, "llama2"]:
        tok = load_hf_tokenizer(str(hf_dirs[family]))
        texts = _texts(family) if family != "llama2" else TEXTS
        texts += _fuzz(30, seed=3)
        module = _Serving(tok)
        path = str(tmp_path / family)
        tf.saved_model.save(
            module, path, signatures={"encode": module.encode, "decode": module.decode}
        )
        jobs.append([family, path, texts])
        ids = tok.encode(texts).to_list()
        decoded = tok.detokenize(tf.ragged.constant(ids, tf.int32)).numpy()
        expected[family] = {"ids": ids, "texts": [t.decode() for t in decoded]}
        if family != "llama2":
            ref = Tokenizer.from_file(str(hf_dirs[family] / "tokenizer.json"))
            assert ids == [ref.encode(t).ids for t in texts]
    run = subprocess.run(
        [sys.executable, "-c", _RELOAD, json.dumps(jobs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.splitlines()[-1]) == expected


def _spec(hf_dirs, family="gpt2") -> dict:
    return json.loads((hf_dirs[family] / "tokenizer.json").read_text())


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["model"].update(type="WordPiece"), "model.type 'WordPiece'; supported: BPE"),
        (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer 'Whitespace'"),
        (lambda s: s.update(normalizer={"type": "Lowercase"}), "normalizer ['Lowercase']"),
        (
            lambda s: s.update(
                pre_tokenizer={
                    "type": "Sequence",
                    "pretokenizers": [
                        {
                            "type": "Split",
                            "pattern": {"Regex": r"\w+(?=\d)"},
                            "behavior": "Isolated",
                        },
                        {"type": "ByteLevel", "use_regex": False},
                    ],
                }
            ),
            "lookaround RE2 cannot run",
        ),
        (lambda s: s["added_tokens"][0].update(lstrip=True), "lstrip/rstrip/single_word"),
    ],
)
def test_unsupported_files_get_a_one_line_error(hf_dirs, tmp_path, change, message):
    spec = _spec(hf_dirs)
    change(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match="tokenizer.json: ") as err:
        load_hf_tokenizer(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json or tokenizer.model"):
        load_hf_tokenizer(str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        load_hf_tokenizer(str(tmp_path / "tokenizer.model"))
