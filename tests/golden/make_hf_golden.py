"""Writes hf_golden.json: what `transformers` computes on the tiny Hugging Face directories of
tests/hub_fixtures.py (every family and variant, seed 0, float32).

    pip install transformers torch && PYTHONPATH=tests:. python tests/golden/make_hf_golden.py

Per variant: the float32 logits of one prompt of 7 token ids, and 10 greedy tokens after it
(argmax of a full forward pass per token, no stop ids). tests/test_hub_transformers.py rebuilds
the same directories, imports them with `tfllm.convert`, and checks both without transformers
installed. Rerun this when hub_fixtures.py changes what it writes.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import torch
import transformers
from hub_fixtures import VARIANTS, write_hf_dir

PROMPT = [5, 17, 99, 3, 64, 8, 120]
NEW_TOKENS = 10


def reference(directory: str) -> dict:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        logits = model(ids).logits[0]
        for _ in range(NEW_TOKENS):
            next_id = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return {
        "logits": [[round(float(x), 6) for x in row] for row in logits],
        "greedy": ids[0, len(PROMPT) :].tolist(),
    }


def main() -> None:
    golden = {"prompt": PROMPT, "transformers": transformers.__version__, "variants": {}}
    for variant in sorted(VARIANTS):
        with tempfile.TemporaryDirectory() as tmp:
            write_hf_dir(tmp, variant, "float32")
            golden["variants"][variant] = reference(tmp)
        print(variant, golden["variants"][variant]["greedy"])
    path = pathlib.Path(__file__).with_name("hf_golden.json")
    path.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
