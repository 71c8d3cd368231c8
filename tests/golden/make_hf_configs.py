"""Writes hf_configs.json: the config.json that the current `transformers` release writes for
each family tfllm imports (`tfllm.hub.families.FAMILIES`), with transformers' own defaults.

    pip install transformers && PYTHONPATH=. python tests/golden/make_hf_configs.py

No torch is needed: only the configuration classes run (`save_pretrained` of a config).
tests/test_hostile_hub.py imports each of them with `tfllm.convert`'s reader, without
transformers installed. Rerun this when a new transformers release changes what it writes.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import transformers

from tfllm.hub.families import FAMILIES

# A small model of each family: the sizes tfllm reads, the rest left at transformers' defaults.
SIZES = {
    "gpt2": {
        "vocab_size": 256,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "n_positions": 64,
    },
}
DECODER = {
    "vocab_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
}


def written(family: str) -> dict:
    config_class = transformers.AutoConfig.for_model(family).__class__
    config = config_class(**SIZES.get(family, DECODER))
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        return json.loads(pathlib.Path(tmp, "config.json").read_text())


def main() -> None:
    golden = {"transformers": transformers.__version__, "configs": {}}
    for family in sorted(FAMILIES):
        golden["configs"][family] = written(family)
        print(family, len(golden["configs"][family]), "keys")
    path = pathlib.Path(__file__).with_name("hf_configs.json")
    path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
