"""The `tfllm.convert` stage: a Hugging Face directory <-> a tfllm workdir.

A converted workdir is an ordinary one: `config.yaml` (the model section is the architecture,
`data.tokenizer` the imported tokenizer), a weights-only checkpoint at step 0 that `tfllm.train`
resumes from with a fresh optimizer and `load_trained` reads, and `hf/` holding the source's
config.json, generation_config.json and tokenizer files (export writes them back). Both
directions write into a temporary sibling and rename it at the end: nothing is left on failure.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

from tfllm import resources
from tfllm.config import Config, ModelConfig, load_config, save_config, validate
from tfllm.hub import files as hf_files
from tfllm.hub import hf_config, weights
from tfllm.hub.hf_config import HubError, read_json
from tfllm.model.lm import build_model
from tfllm.observe.flops import count_parameters
from tfllm.runs.checkpoint import Checkpointer
from tfllm.runs.trained import load_trained

logger = logging.getLogger(__name__)

SOURCE = "hf"  # the workdir's copy of the source's non-weight files
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
SHARD_BYTES = 5 << 30  # transformers' default max_shard_size, 5 GB


def _fresh(path: str, what: str) -> None:
    if os.path.exists(path) and os.listdir(path):
        raise HubError(f"{what} {path} exists and is not empty; choose a new one")


def _publish(tmp: str, final: str) -> None:
    if os.path.isdir(final):
        os.rmdir(final)  # empty, checked by _fresh
    os.replace(tmp, final)


def from_hf(source: str, workdir: str) -> Config:
    """Imports the HF directory `source` into a new workdir; returns its config."""
    config_path = os.path.join(source, "config.json")
    if not os.path.isfile(config_path):
        raise HubError(f"{source}: no config.json (is it a Hugging Face model directory?)")
    hf = read_json(config_path)
    if "registered_name" in hf:
        raise HubError(f"{source}: a keras-hub preset directory: use --from_keras_hub")
    ignored = []
    family, model_section = hf_config.to_model_config(hf, config_path, ignored)
    if ignored:
        logger.info(
            f"convert: keys tfllm does not model, set to null or false: {', '.join(ignored)}"
        )
    # A missing or .bin-only checkpoint, a bad index or header fails before any work, and a
    # config that describes more parameters than the files hold before the model is built.
    files = set(weights.weight_files(source).values())
    present = hf_files.data_bytes(files)
    try:
        needed = 2 * count_parameters(ModelConfig(**model_section))  # 16-bit at the least
    except (ValueError, ZeroDivisionError):
        needed = 0  # an inconsistent architecture: validate() names it below
    if needed > present:
        raise HubError(
            f"{config_path} describes at least {needed // 2:,} parameters ({needed:,} bytes in "
            f"16 bits), the weight files of {source} hold {present:,} bytes"
        )

    def populate(hf_dir):
        for name in ("config.json", "generation_config.json", *TOKENIZER_FILES):
            if os.path.isfile(os.path.join(source, name)):
                shutil.copy2(os.path.join(source, name), hf_dir)
        names = ("tokenizer.model", "tokenizer.json")
        return next((n for n in names if os.path.isfile(f"{hf_dir}/{n}")), None)

    def assign(model):
        weights.read_weights(source, family, model)

    return _import(source, workdir, family, model_section, populate, assign)


def from_keras_hub(preset: str, workdir: str) -> Config:
    """Imports the keras-hub preset directory `preset` into a new workdir (its `hf/` holds the
    family's config.json and tokenizer files made from the preset); returns its config."""
    from tfllm.hub import preset as presets

    presets.preset_family(preset)  # a bad directory fails before keras-hub loads anything
    _fresh(workdir, "workdir")
    family, hf, tensors, tokenizer = presets.load(preset)
    model_section = hf_config.to_model_config(hf, os.path.join(preset, "config.json"))[1]

    def populate(hf_dir):
        with open(os.path.join(hf_dir, "config.json"), "w") as f:
            json.dump(hf_config.from_model_config(family, model_section, hf), f, indent=2)
        if tokenizer is None:
            return None
        from tfllm.hub.preset_tokenizer import write_tokenizer

        return write_tokenizer(tokenizer, preset, family, hf_dir)

    def assign(model):
        weights.assign_weights(model, family, tensors, preset)

    return _import(preset, workdir, family, model_section, populate, assign)


def _import(source, workdir, family, model_section, populate, assign) -> Config:
    """Writes the workdir: `populate(hf_dir)` fills hf/ and names the tokenizer file in it,
    `assign(model)` sets the weights."""
    _fresh(workdir, "workdir")
    parent = os.path.dirname(os.path.abspath(workdir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        hf_dir = os.path.join(tmp, SOURCE)
        os.makedirs(hf_dir)
        tokenizer = populate(hf_dir)
        overrides = [f"runtime.workdir={workdir}", f"data.name={os.path.basename(workdir)}"]
        if tokenizer:
            # Absolute: commands that read the workdir may run from another directory.
            path = os.path.abspath(os.path.join(workdir, SOURCE, tokenizer))
            overrides.append(f"data.tokenizer={path}")
        seq_len = min(Config().data.seq_len, model_section["max_sequence_length"])
        cfg = load_config(overrides=[*overrides, f"data.seq_len={seq_len}"])
        cfg.model = ModelConfig(**model_section)
        validate(cfg)
        with resources.guarded(f"the new workdir {workdir}", parent, "everything else"):
            model = build_model(cfg.model, initialize=False)
            assign(model)
            save_config(cfg, os.path.join(tmp, "config.yaml"))
            checkpointer = Checkpointer(tmp, model, model_config=cfg.to_dict()["model"])
            checkpointer.save(0, weights_only=True)
            _publish(tmp, workdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(
        f"convert: {family} ({model.count_params():,} parameters) from {source} -> {workdir} "
        f"(step 0{', tokenizer ' + tokenizer if tokenizer else ', no tokenizer file'})"
    )
    return cfg


def _source_files(cfg: Config, workdir: str) -> tuple[str, dict, dict | None]:
    """(family, base config.json, generation_config.json) of the workdir's source; a model
    trained from scratch is a Llama whose tokenizer is tfllm's SentencePiece model."""
    hf_dir = os.path.join(workdir, SOURCE)
    if os.path.isfile(os.path.join(hf_dir, "config.json")):
        base = read_json(os.path.join(hf_dir, "config.json"))
        generation = os.path.join(hf_dir, "generation_config.json")
        return (
            base["model_type"],
            base,
            read_json(generation) if os.path.isfile(generation) else None,
        )
    from tfllm.tokenizers.tokenizer import EOS_ID, PAD_ID

    base = {
        "architectures": ["LlamaForCausalLM"],
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": "float32",
    }
    return "llama", base, {"eos_token_id": EOS_ID, "pad_token_id": PAD_ID}


def _source_workdir(workdir: str) -> str:
    """The workdir holding the HF source files: a fine-tuned run's (first) base's."""
    while not os.path.isdir(os.path.join(workdir, SOURCE)):
        base = load_config([os.path.join(workdir, "config.yaml")]).train.init_from
        if not base:
            break
        workdir = base
    return workdir


def to_hf(workdir: str, out: str, shard_bytes: int = SHARD_BYTES, adapter: bool = False) -> str:
    """Writes the newest usable checkpoint of `workdir` as an HF directory `out` (a LoRA run's
    adapters merged), or with `adapter` the LoRA adapters alone in PEFT's format."""
    _fresh(out, "output directory")
    source = _source_workdir(workdir)
    if adapter:
        from tfllm.hub.adapter import write_adapter

        family = _source_files(load_config([os.path.join(source, "config.yaml")]), source)[0]
        return write_adapter(workdir, out, family, os.path.abspath(source))
    trained = load_trained(workdir)
    family, base, generation = _source_files(trained.cfg, source)
    model_section = {**trained.cfg.to_dict()["model"], "dropout": 0.0}
    hf = hf_config.from_model_config(family, model_section, base)
    dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if dtype not in weights.DTYPES:
        raise HubError(f"{workdir}: dtype {dtype!r} cannot be written (float32, bfloat16, float16)")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        with resources.guarded(f"the Hugging Face directory {out}", parent, "everything else"):
            weights.write_weights(tmp, family, trained.model, dtype, shard_bytes)
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(hf, f, indent=2)
            if generation is not None:
                with open(os.path.join(tmp, "generation_config.json"), "w") as f:
                    json.dump(generation, f, indent=2)
            hf_dir = os.path.join(source, SOURCE)  # a fine-tuned run's tokenizer is its base's
            copied = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, n))]
            for name in copied:
                shutil.copy2(os.path.join(hf_dir, name), tmp)
            if not os.path.isdir(hf_dir):  # from scratch: tfllm's SentencePiece, as LlamaTokenizer
                shutil.copy2(trained.tokenizer_path, os.path.join(tmp, "tokenizer.model"))
                with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
                    json.dump(_SCRATCH_TOKENIZER, f, indent=2)
            _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info(f"convert: {workdir} (step {trained.step}) -> {out} as {family}, {dtype}")
    return out


def to_keras_hub(workdir: str, out: str) -> str:
    """Writes the workdir's model as a keras-hub preset directory `out`: the family's HF files
    (`to_hf`) read by keras-hub's own converter, saved with `save_to_preset` (and the
    tokenizer's, when keras-hub reads the family's tokenizer files)."""
    _fresh(out, "output directory")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".preset-", dir=parent)
    try:
        hf = to_hf(workdir, os.path.join(tmp, "hf"))
        import keras_hub

        preset = os.path.join(tmp, "preset")
        try:
            backbone = keras_hub.models.Backbone.from_preset(hf)
        except Exception as err:
            first = (str(err).strip() or type(err).__name__).splitlines()[0]
            raise HubError(f"{workdir}: keras-hub cannot read its model: {first}") from None
        backbone.save_to_preset(preset)
        try:
            keras_hub.tokenizers.Tokenizer.from_preset(hf).save_to_preset(preset)
            tokenizer = "with its tokenizer"
        except Exception as err:  # keras-hub reads only its own families' tokenizer files
            first = (str(err).strip() or type(err).__name__).splitlines()[0][:120]
            tokenizer = f"without a tokenizer (keras-hub: {first})"
        if os.path.isdir(out):
            os.rmdir(out)  # empty, checked by _fresh
        os.replace(preset, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"convert: {workdir} -> keras-hub preset {out} {tokenizer}")
    return out


# tfllm's tokenizer: no BOS, EOS id 2, no dummy prefix (tfllm.tokenizers.tokenizer).
_SCRATCH_TOKENIZER = {
    "tokenizer_class": "LlamaTokenizer",
    "add_bos_token": False,
    "add_eos_token": False,
    "add_prefix_space": False,
    "legacy": False,
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
}
