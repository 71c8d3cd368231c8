"""A LoRA workdir's adapters alone, as PEFT writes them (`tfllm.convert --to_hf OUT --workdir W
--adapter`): `adapter_config.json` and `adapter_model.safetensors`, loadable by `peft` onto the
base's Hugging Face checkpoint.

PEFT names each pair after the HF module it adapts (the family's tensor map gives the module of
every slice of tfllm's fused kernels): `base_model.model.<module>.lora_A.weight` [r, in] and
`...lora_B.weight` [out, r], the transposes of tfllm's A (in, r) and B (r, out).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import numpy as np

from tfllm.hub import families
from tfllm.hub.hf_config import HubError
from tfllm.model import lora
from tfllm.runs.trained import load_trained

logger = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."


def peft_tensors(family: str, trained) -> dict[str, np.ndarray]:
    """{PEFT name: float32 array} of every adapter of a `load_trained(..., merge=False)`."""
    model, adapters = trained.model, trained.adapters
    mapping = families.tensor_map(family, model.config.num_layers)
    tensors = {}
    for i, block in enumerate(model.blocks):
        for layer, scope in ((block.attention, "attention"), (block.mlp, "mlp")):
            for kernel, slices in lora.layer_slices(layer).items():
                names = mapping[f"block_{i}/{scope}/{kernel}"][1]
                for (target, _), name in zip(slices, names, strict=True):
                    if f"block_{i}_{target}" not in adapters.pairs:
                        continue
                    a, b = adapters.pairs[f"block_{i}_{target}"]
                    module = PEFT_PREFIX + name.removesuffix(".weight")
                    tensors[f"{module}.lora_A.weight"] = np.ascontiguousarray(a.numpy().T)
                    tensors[f"{module}.lora_B.weight"] = np.ascontiguousarray(b.numpy().T)
    return tensors


def adapter_config(cfg, modules: list[str], base: str) -> dict:
    t = cfg.train
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": t.lora_rank,
        "lora_alpha": t.lora_alpha,
        "lora_dropout": t.lora_dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def write_adapter(workdir: str, out: str, family: str, base: str) -> str:
    """Writes the adapters of LoRA workdir `workdir` into a new directory `out`."""
    from safetensors.numpy import save_file

    trained = load_trained(workdir, merge=False)
    if trained.adapters is None:
        raise HubError(f"{workdir} is not a LoRA run (train.lora_rank is 0): drop --adapter")
    tensors = peft_tensors(family, trained)
    modules = sorted({n.split(".")[-3] for n in tensors})  # q_proj, v_proj, ...
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".adapter-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), {"format": "pt"})
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(adapter_config(trained.cfg, modules, base), f, indent=2)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        f"convert: adapters of {workdir} (step {trained.step}, {len(tensors)} tensors) -> {out}"
    )
    return out
