"""The scheduler and engine in-process, without HTTP: sequences of mixed lengths through fewer
slots than sequences give `tfllm generate`'s tokens; the decode step is traced once per number
of busy slots and cache window and the prefill once for every width, all at warm-up; an
imported model's Hugging Face tokenizer encodes, decodes and names its EOS as its library does."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tensorflow as tf
import tiny_run
from hf_tokenizer_files import write_tokenizer

from tfllm.model.attention import MATMUL_ROWS, attend, attend_one_query
from tfllm.server.engine import Engine
from tfllm.server.metrics import Metrics
from tfllm.server.scheduler import Scheduler
from tfllm.server.sequence import Sequence
from tfllm.server.text import Codec, find_stop, held_back

SEQ = 128
GREEDY = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run.build(str(tmp_path_factory.getbasetemp() / "tiny_run_128"), seq=SEQ)


def _serve(scheduler: Scheduler, codec: Codec, jobs: list[tuple[str, int]], **options):
    """Runs `jobs` (prompt, max_tokens) through the scheduler; (texts, finish reasons)."""

    async def main():
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        sequences = [
            Sequence("test", i, codec.encode(prompt), n, GREEDY, events, loop, **options)
            for i, (prompt, n) in enumerate(jobs)
        ]
        scheduler.submit(sequences)
        texts, reasons = [""] * len(jobs), [None] * len(jobs)
        while None in reasons:
            kind, index, *rest = await events.get()
            if kind == "text":
                texts[index] += rest[0]
            elif kind == "done":
                reasons[index] = rest[0]
        return texts, reasons

    return asyncio.run(main())


@pytest.mark.parametrize("prefill_chunk", [0, 6], ids=["whole", "chunked"])
@pytest.mark.slow  # prepares and exports a tiny run
def test_continuous_batching_traces_once_and_matches_generate(run, prefill_chunk):
    """Seven sequences through three slots; with `prefill_chunk` 6, once the running sequences
    are at least as many as the waiting ones, a prompt longer than 6 ids is prefilled over
    several iterations (decode steps of the running sequences in between)."""
    engine = Engine(run.model, slots=3, cache_len=SEQ)
    offsets, prefill = [], engine.prefill

    def recorded(slots, sequences, echo, offset=0):
        offsets.append(offset)
        return prefill(slots, sequences, echo, offset)

    engine.prefill = recorded
    codec = Codec(run.tokenizer_path)
    sizes = engine.warm_up(codec.specials.start)
    assert sizes == [1, 2, 3]
    warm = dict(engine.traces)
    assert engine.lengths == [32, 64, 96, 128]  # the decode step's cache windows
    assert warm == {"step": len(sizes) * 4, "prefill": 2}  # with and without echo
    scheduler = Scheduler(
        engine, codec, max_queue=16, metrics=Metrics(), prefill_chunk=prefill_chunk
    )
    scheduler.start()
    try:
        jobs = [("def", 20), ("import os\n" * 3, 5), ("", 12), ("class A:\n    x = 1\n", 30),
                ("for", 1), ("x" * 40, 9), ("return", 17)]  # fmt: skip
        texts, reasons = _serve(scheduler, codec, jobs)
    finally:
        assert scheduler.close(30)
    for (prompt, n), text in zip(jobs, texts, strict=True):
        assert text == run.generator.generate([prompt], max_new_tokens=n)[0], prompt
    assert set(reasons) <= {"stop", "length"}
    assert engine.traces == warm  # serving traced nothing new
    assert (max(offsets) > 0) == bool(prefill_chunk)  # a prompt continued in a later chunk


@pytest.mark.slow  # prepares and exports a tiny run
def test_xla_step_reads_whole_rows_and_matches_generate(run):
    """`--xla`: XLA has no kernel for the gather of a cache window out of a variable, so the
    compiled step reads whole rows (one trace per row count, whatever the window)."""
    engine = Engine(run.model, slots=1, cache_len=SEQ, jit_compile=True)
    codec = Codec(run.tokenizer_path)
    assert engine.warm_up(codec.specials.start) == [1]
    assert engine.traces["step"] == 1
    scheduler = Scheduler(engine, codec, max_queue=4, metrics=Metrics())
    scheduler.start()
    try:
        texts, _ = _serve(scheduler, codec, [("def", 12)])
    finally:
        assert scheduler.close(30)
    assert texts[0] == run.generator.generate(["def"], max_new_tokens=12)[0]


def test_text_held_back_and_stops():
    assert held_back("abc\ufffd", []) == 1  # a character still missing bytes
    assert held_back("say END", ["ENDING"]) == 3  # may still become the stop string
    assert held_back("say EN", ["END", "N!"]) == 2
    assert held_back("plain", ["END"]) == 0
    assert find_stop("one two three", ["two", "three"], 0) == 4
    assert find_stop("one two", ["one"], 5) == -1  # ended before the unsent text


@pytest.mark.slow  # prepares and exports a tiny run
def test_prompts_prefill_together_as_alone(run):
    """Several prompts of different lengths in one prefill call (left-padded to the longest)
    write the same keys and values and first tokens as each prompt prefilled alone (unpadded),
    through the one trace of the prefill."""
    codec = Codec(run.tokenizer_path)
    prompts = [codec.encode(p) for p in ("def", "for i in range(3):", "x = 1", "import")]
    together, alone = Engine(run.model, 4, SEQ), Engine(run.model, 4, SEQ)
    outs = together.prefill([3, 0, 2, 1], [(ids, GREEDY) for ids in prompts], echo=False)
    width = max(len(ids) for ids in prompts)
    for slot, ids, out in zip([3, 0, 2, 1], prompts, outs, strict=True):
        [own] = alone.prefill([slot], [(ids, GREEDY)], echo=False)
        assert int(own["token"]) == int(out["token"]) and out["width"] == width
        np.testing.assert_allclose(own["logprob"], out["logprob"], atol=1e-5)
        for (keys, _), (alone_keys, _) in zip(together.cache, alone.cache, strict=True):
            # The prompt's columns: right-aligned at the padded width, at 0 when alone.
            np.testing.assert_allclose(
                keys[slot, :, width - len(ids) : width].numpy(),
                alone_keys[slot, :, : len(ids)].numpy(),
                atol=1e-5,
            )
    assert together.traces["prefill"] == alone.traces["prefill"] == 1


@pytest.mark.slow  # prepares and exports a tiny run
def test_prompt_prefilled_in_chunks_as_whole(run):
    """A prompt prefilled in chunks of 7 ids, each attending to the columns the earlier ones
    wrote into its slot, gives the keys, values and first token of one prefill of the whole
    prompt, through the same trace."""
    codec = Codec(run.tokenizer_path)
    ids = codec.encode("class A:\n    x = 1\n    def f(self):\n        return self.x + 2\n")
    assert len(ids) > 3 * 7
    whole, chunked = Engine(run.model, 3, SEQ), Engine(run.model, 3, SEQ)
    [expected] = whole.prefill([1], [(ids, GREEDY)], echo=False)
    for done in range(0, len(ids), 7):
        [out] = chunked.prefill([1], [(ids[done : done + 7], GREEDY)], echo=False, offset=done)
    assert int(out["token"]) == int(expected["token"]) and out["width"] == len(ids)
    np.testing.assert_allclose(out["logprob"], expected["logprob"], atol=1e-5)
    for pair, chunked_pair in zip(whole.cache, chunked.cache, strict=True):
        for tensor, chunked_tensor in zip(pair, chunked_pair, strict=True):
            np.testing.assert_allclose(tensor.numpy(), chunked_tensor.numpy(), atol=1e-5)
    assert chunked.traces["prefill"] == 1


@pytest.mark.parametrize("kv_heads", [4, 2], ids=["heads", "grouped"])
@pytest.mark.parametrize("rows", [1, MATMUL_ROWS, 16])
def test_one_query_attention_both_ways(rows, kv_heads):
    """The decode step's attention, as multiplies and sums (few rows) or batched matmuls (many
    rows), equals the last query row of full attention, with grouped queries too and rows
    that start with padding columns."""
    rng = np.random.default_rng(rows)
    heads, width, size = 4, 24, 8
    query = tf.constant(rng.normal(size=(rows, heads, width, size)), tf.float32)
    key, value = (
        tf.constant(rng.normal(size=(rows, kv_heads, width, size)), tf.float32) for _ in range(2)
    )
    mask = np.broadcast_to(np.tril(np.ones((width, width), bool)), (rows, width, width)).copy()
    mask[::2, :, :3] = False  # every other row starts with 3 padding columns
    repeat = heads // kv_heads
    full = attend(query, tf.repeat(key, repeat, 1), tf.repeat(value, repeat, 1), mask).numpy()
    last = tf.function(attend_one_query)(query[:, :, -1:], key, value, mask[:, -1:]).numpy()
    np.testing.assert_allclose(last[:, :, 0], full[:, :, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "family, name, eos",
    [("llama3", "tokenizer.json", "<|eot_id|>"), ("llama2", "tokenizer.model", "</s>")],
)
def test_imported_tokenizer_codec(tmp_path, family, name, eos):
    """An imported model's Hugging Face tokenizer in the server: the ids of the `tokenizers`
    (or `sentencepiece`) library with the model's BOS first, text back, and the EOS text that
    /tokenizer_info reports (tokenizer_config.json's, as transformers reads it)."""
    directory = write_tokenizer(tmp_path / family, family)
    codec = Codec(str(directory / name))
    text = "Hello world, it's 2024"
    if family == "llama3":
        from tokenizers import Tokenizer

        expected = Tokenizer.from_file(str(directory / name)).encode(text).ids
    else:
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(directory / name))
        expected = [processor.bos_id(), *processor.encode(text)]
    ids = codec.encode(text)
    assert ids == expected and codec.specials.start == (expected[0],)
    assert codec.decode(ids[1:]) == text
    assert codec.eos_token == eos
