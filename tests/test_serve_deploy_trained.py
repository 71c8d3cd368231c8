"""int8 weights cost a trained model little: bits per byte on held-out text within 2% of
float32, and the same greedy completions on most prompts. The model is conftest's
`trained_workdir`, trained by tfllm's trainer (random weights would only measure rounding, not
a learned model's quality); both exports are scored by `tfllm.eval`'s engine through their
signatures."""

from __future__ import annotations

import math

import pytest
from conftest import TINY_SHAPE

from tfllm.eval import builtin, run
from tfllm.serve import export

pytestmark = pytest.mark.slow  # reads the 300-step trained_workdir (trained once a session)

BPB_DOCS = 4  # the first held-out files of the stdlib_bpb task, 4 KB each
COMPLETIONS = 8  # held-out code prompts, 16 greedy tokens each
SAME_AT_LEAST = 6
VOCAB = TINY_SHAPE["vocabulary_size"]


def prompts() -> list[str]:
    """The first lines of the held-out stdlib files, three lines each."""
    files = builtin.held_out_files()[:COMPLETIONS]
    return ["".join(text.splitlines(keepends=True)[:3]) for _, text in files]


def test_int8_keeps_a_trained_models_bits_per_byte_and_greedy_completions(
    trained_workdir, tmp_path
):
    cfg = trained_workdir
    metrics, completions = {}, {}
    requests = [(prompt, {"until": [], "max_gen_toks": 16}) for prompt in prompts()]
    for weights in ("none", "int8"):
        version_dir = export.export(
            cfg.runtime.workdir,
            str(tmp_path / weights),
            quantize_weights=weights,
        )
        kinds = {"loglikelihood_rolling", "generate_until"}
        engine, _ = run.export_engine(version_dir, kinds, batch_size=8)
        rows = run.evaluate(engine, run.load_tasks("stdlib_bpb"), limit=BPB_DOCS)
        metrics[weights] = {r["metric"]: r["value"] for r in rows}
        scored_tokens = engine.scored_tokens
        completions[weights] = engine.generate_until(requests)
    bpb = {weights: metrics[weights]["bits_per_byte"] for weights in metrics}
    docs = run.load_tasks("stdlib_bpb")[0].docs[:BPB_DOCS]
    utf8 = sum(len(doc["text"].encode("utf-8")) for doc in docs)
    bits_per_token = bpb["none"] * utf8 / scored_tokens
    print(f"bits/byte float32 {bpb['none']:.4f} int8 {bpb['int8']:.4f}")
    print(f"float32: {bits_per_token:.2f} bits/token, uniform {math.log2(VOCAB):.2f}")
    # Learned: well under a uniform model's log2(V) bits per token.
    assert bits_per_token < 0.75 * math.log2(VOCAB)
    assert abs(bpb["int8"] / bpb["none"] - 1) < 0.02
    same = [a == b for a, b in zip(completions["none"], completions["int8"], strict=True)]
    print(f"greedy completions equal: {sum(same)}/{len(same)}")
    assert all(completions["none"])  # not trivially equal: every completion has text
    assert sum(same) >= SAME_AT_LEAST, same
