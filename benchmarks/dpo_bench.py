"""DPO training speed: tfllm's compiled DPO step against TRL's `DPOTrainer`, LoRA and full, on
the same tiny Llama model (one Hugging Face directory both load), the same pairs and batch.

    python -m benchmarks dpo [--rounds 2] [--quick]   # 4 timed steps per run (--quick: 1)
    python -m benchmarks.dpo_bench --worker CONTENDER STEPS HF_DIR   # one run (the case's)

Shape: Llama layout, 4 layers, hidden 256, 4 heads, intermediate 704, vocabulary 4096, untied
head, float32. A step: 8 pairs, each a 96-token prompt with a 32-token chosen and a 32-token
rejected completion, so 16 sequences of 128 tokens (2048 tokens) per step, no padding. Sigmoid
loss, beta 0.1, AdamW. LoRA: rank 8 on q and v (PEFT's `q_proj`, `v_proj`), the reference
being the base with adapters off in both. Full: the reference log-probabilities precomputed in
both (TRL's `precompute_ref_log_probs=True`, tfllm's table), so a step is one policy pass
forward and backward. tokens/s counts both sequences' tokens, prompt included.

Each measurement is a fresh process; rounds alternate the contenders. The peers: torch,
transformers, trl and peft (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time

import numpy as np

from benchmarks.common import emit, run_worker, summarize

SHAPE = dict(num_layers=4, hidden_dim=256, num_heads=4, intermediate_dim=704, vocab=4096)
PAIRS, PROMPT, COMPLETION, RANK = 8, 96, 32, 8
SEQ = PROMPT + COMPLETION
TOKENS_PER_STEP = PAIRS * 2 * SEQ
RESULTS = pathlib.Path(__file__).parent / "results"


def pair_ids(count: int = 64) -> list[tuple[list[int], list[int], list[int]]]:
    """Fixed (prompt, chosen, rejected) ids; ids 0-2 are pad, BOS and EOS; completions end in
    EOS."""
    rng = np.random.default_rng(0)

    def ids(n):
        return rng.integers(3, SHAPE["vocab"], size=n).tolist()

    return [
        (ids(PROMPT), ids(COMPLETION - 1) + [2], ids(COMPLETION - 1) + [2]) for _ in range(count)
    ]


def write_model(directory: str) -> None:
    """The tiny Llama as a Hugging Face directory, written by tfllm's exporter."""
    from tfllm.config import ModelConfig
    from tfllm.hub import hf_config, weights
    from tfllm.model.lm import build_model

    s = SHAPE
    cfg = ModelConfig(
        vocabulary_size=s["vocab"],
        num_layers=s["num_layers"],
        num_heads=s["num_heads"],
        hidden_dim=s["hidden_dim"],
        intermediate_dim=s["intermediate_dim"],
        max_sequence_length=SEQ,
        tie_embeddings=False,
    )
    model = build_model(cfg)
    section = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    base = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config.from_model_config("llama", section, base), f)
    weights.write_weights(directory, "llama", model, "float32", 1 << 30)


def run_tfllm(hf_dir: str, lora_rank: int):
    import tensorflow as tf

    from tfllm.config import load_config
    from tfllm.corpus.preference import _window
    from tfllm.data import pairs, records
    from tfllm.hub import convert
    from tfllm.model import lora
    from tfllm.runs.trained import load_trained
    from tfllm.training.dpo import DPO, sequence_logps
    from tfllm.training.optim import make_optimizer
    from tfllm.training.steps import Steps

    workdir = tempfile.mkdtemp() + "/model"
    convert.from_hf(hf_dir, workdir)
    model = load_trained(workdir).model
    overrides = [f"data.seq_len={SEQ}", f"train.global_batch_size={PAIRS}", "train.warmup_steps=0"]
    overrides += ["train.objective=dpo", "data.format=preference", "data.packing=document"]
    overrides += [f"train.init_from={workdir}", f"train.lora_rank={lora_rank}"]
    cfg = load_config([f"{workdir}/config.yaml"], overrides)
    if lora_rank:
        lora.attach(model, cfg.train)
    tokens, segments = [], []
    for number, (prompt, chosen, rejected) in enumerate(pair_ids(), start=1):
        (tc, sc), (tr, sr) = (_window(prompt, x, number, SEQ + 1) for x in (chosen, rejected))
        tokens.append(np.concatenate([tc, tr]))
        segments.append(np.concatenate([sc, sr]))
    serialized = tf.constant(records.serialize_windows(np.stack(tokens), np.stack(segments)))
    data = pairs.decode_pairs(serialized, 2 * (SEQ + 1))
    if not lora_rank:  # the precomputed table, as a run without LoRA has it
        data = (*data, sequence_logps(model, *data, training=False)[0])
    ds = tf.data.Dataset.from_tensor_slices(data).repeat().batch(PAIRS).prefetch(2)
    optimizer = make_optimizer(cfg.train, lora.trainable_variables(model))
    steps = Steps(cfg, tf.distribute.get_strategy(), model, optimizer, DPO(cfg.train))
    iterator = iter(ds)
    return lambda n: float(steps.train_loop(iterator, tf.constant(n))["loss"])


def run_trl(hf_dir: str, lora_rank: int):
    import datasets
    import tokenizers
    import torch
    import transformers
    import trl

    torch.manual_seed(0)
    vocab = {f"w{i}": i for i in range(SHAPE["vocab"])}
    word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    word_level.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=word_level, eos_token="w2", pad_token="w0", bos_token="w1"
    )

    def text(ids):
        return " ".join(f"w{i}" for i in ids)

    rows = [
        {"prompt": text(p), "chosen": " " + text(c), "rejected": " " + text(r)}
        for p, c, r in pair_ids()
    ]
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft_config = None
    if lora_rank:
        import peft

        peft_config = peft.LoraConfig(
            r=lora_rank, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
        )
    marks: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    def run(n: int) -> None:
        marks.clear()
        config = trl.DPOConfig(
            output_dir=tempfile.mkdtemp(),
            per_device_train_batch_size=PAIRS,
            max_steps=n + 2,
            learning_rate=1e-5,
            beta=0.1,
            loss_type=["sigmoid"],
            max_length=None,
            precompute_ref_log_probs=not lora_rank,
            logging_steps=10_000,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
        )
        trainer = trl.DPOTrainer(
            model=model,
            args=config,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[Clock()],
        )
        trainer.train()
        return marks[-1] - marks[1]  # the last n steps: the first two warm up

    return run


def measure(contender: str, steps: int, hf_dir: str) -> dict:
    peer, kind = contender.split("-")
    rank = RANK if kind == "lora" else 0
    if peer == "tfllm":
        run = run_tfllm(hf_dir, rank)
        run(2)  # traces and compiles
        started = time.perf_counter()
        run(steps)
        seconds = time.perf_counter() - started
    else:
        seconds = run_trl(hf_dir, rank)(steps)
    return {"contender": contender, "tokens_per_second": steps * TOKENS_PER_STEP / seconds}


def peer_versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("transformers", "trl", "peft"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


CONTENDERS = ("tfllm-lora", "trl-lora", "tfllm-full", "trl-full")


def _measure_all(rounds: int, steps: int) -> dict[str, list[dict]]:
    """Every contender once per round, alternating, each in a fresh process."""
    runs: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as hf_dir:
        write_model(hf_dir)
        for r in range(rounds):  # alternate: load drifts hit every contender alike
            for name in CONTENDERS if r % 2 == 0 else reversed(CONTENDERS):
                worker = ["--worker", name, str(steps), hf_dir]
                runs[name].append(run_worker("benchmarks.dpo_bench", worker, timeout=1200))
    return runs


def case(rounds: int, quick: bool) -> dict:
    """The harness's case (`python -m benchmarks dpo`)."""
    runs = _measure_all(rounds, 1 if quick else 4)
    figures, medians = {}, {}
    for name, results in runs.items():
        rates = [r["tokens_per_second"] for r in results if "error" not in r]
        figures[name] = {
            "tokens/s": summarize(rates),
            "errors": "; ".join(r["error"] for r in results if "error" in r)[:120] or None,
        }
        medians[name] = figures[name]["tokens/s"]["median"]
    notes = [
        f"tfllm / TRL DPOTrainer, {kind}: {medians[f'tfllm-{kind}'] / medians[f'trl-{kind}']:.2f}"
        for kind in ("lora", "full")
        if medians[f"tfllm-{kind}"] and medians[f"trl-{kind}"]
    ]
    return {"figures": figures, "notes": notes, "runs": runs}


def main() -> None:
    """A worker process of the case: one contender's run, its figures on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--worker", nargs=3, required=True, metavar=("CONTENDER", "STEPS", "HF_DIR")
    )
    args = parser.parse_args()
    emit(measure(args.worker[0], int(args.worker[1]), args.worker[2]))


if __name__ == "__main__":
    main()
