"""An imported Llama-shaped model (GQA, RMSNorm, SwiGLU, rotary, untied head): training
tokens/s against keras-hub and PyTorch, cached decoding ms/token against keras-hub.

    python -m benchmarks llama-train [--rounds 3] [--quick]
    python -m benchmarks llama-paired [--rounds 6] [--quick]
    python -m benchmarks llama-generate [--rounds 5] [--quick]

One random Llama checkpoint is written as a Hugging Face directory (tfllm's exporter), and every
contender starts from it through its own importer: tfllm `tfllm.convert --from_hf` then
`Steps.train_loop`; keras-hub `Llama3Backbone.from_preset(dir)` (its HF converter) + reverse
embedding head + `fit(jit_compile=True)`; PyTorch `transformers.LlamaForCausalLM.from_pretrained`
(sdpa attention) with a plain loop. Same AdamW (lr 1e-3, betas 0.9/0.95, decay 0.1), clip 1.0,
float32, the same 8 random token batches (`shapes.token_batches`); keras-hub's `fit` timed per
step (`common.keras_hub_fit`). Training: every repetition
is a fresh process per contender, contenders alternate A B C A B C (`paired`: all three in one
process, timed alternately chunk by chunk, per-round ratios); generation: batch 1, greedy,
the EOS row of the head zeroed off, all contenders in one process timed alternately.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import shapes
from benchmarks.common import emit, has_torch, keras_hub_fit, paired_training, run_worker, summarize
from benchmarks.train_bench import measure

SHAPE = shapes.model_keys(shapes.LLAMA)
SEQ_LEN, BATCH = shapes.LLAMA["seq_len"], shapes.LLAMA["batch"]
STEPS, QUICK_STEPS, CHUNKS = 10, 2, 3


def write_checkpoint(root: str) -> str:
    """The random HF Llama directory every contender imports, and tfllm's workdir from it."""
    import tensorflow as tf

    from tfllm.config import ModelConfig
    from tfllm.hub import convert, hf_config, weights
    from tfllm.model.lm import build_model

    source = os.path.join(root, "hf")
    os.makedirs(source)
    tf.keras.utils.set_random_seed(0)
    cfg = ModelConfig(**SHAPE)
    model = build_model(cfg)
    base = {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2}
    with open(os.path.join(source, "config.json"), "w") as f:
        json.dump(hf_config.from_model_config("llama", vars(cfg), base), f)
    weights.write_weights(source, "llama", model, "float32", 1 << 30)
    convert.from_hf(source, os.path.join(root, "run"))
    return source


def batches() -> np.ndarray:
    return shapes.token_batches(shapes.LLAMA)


def run_tfllm(root: str, steps: int):
    import tensorflow as tf

    from tfllm.config import load_config
    from tfllm.runs.trained import load_trained
    from tfllm.training.optim import make_optimizer
    from tfllm.training.steps import Steps

    workdir = os.path.join(root, "run")
    overrides = [
        f"data.seq_len={SEQ_LEN}",
        f"train.global_batch_size={BATCH}",
        "train.learning_rate=1e-3",
        "train.warmup_steps=0",
        "train.jit_compile=true",
    ]
    cfg = load_config([os.path.join(workdir, "config.yaml")], overrides)
    model = load_trained(workdir).model
    optimizer = make_optimizer(cfg.train, model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    steps_fn = Steps(cfg, strategy, model, optimizer)
    windows = tf.constant(batches())
    ds = tf.data.Dataset.from_tensor_slices(windows).repeat()
    iterator = iter(ds.map(lambda w: (w[:, :-1], w[:, 1:])).prefetch(2))
    return (
        lambda: float(steps_fn.train_loop(iterator, tf.constant(1))["loss"]),
        lambda: float(steps_fn.train_loop(iterator, tf.constant(steps))["loss"]),
    )


def run_keras_hub(root: str, steps: int):
    import keras_hub

    backbone = keras_hub.models.Llama3Backbone.from_preset(os.path.join(root, "hf"))
    fit_steps = keras_hub_fit(backbone, batches())
    return lambda: fit_steps(1), lambda: fit_steps(steps)


def torch_steps(model, batches, steps: int):
    """A plain PyTorch training loop over `batches` (AdamW as every contender, clip 1.0): the
    (warm-up, timed) callables of a contender."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    windows = torch.from_numpy(batches).long()

    def steps_from(count: int):
        for i in range(count):
            w = windows[i % shapes.BATCHES]
            logits = model(input_ids=w[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        return float(loss)

    return lambda: steps_from(1), lambda: steps_from(steps)


def run_torch(root: str, steps: int):
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    model = transformers.LlamaForCausalLM.from_pretrained(
        os.path.join(root, "hf"), attn_implementation="sdpa", dtype=torch.float32
    )
    return torch_steps(model, batches(), steps)


TRAINERS = {"tfllm": run_tfllm, "keras-hub-fit": run_keras_hub, "torch-eager": run_torch}


def worker(contender: str, root: str, steps: int, chunks: int) -> dict:
    started = time.perf_counter()
    first, many = TRAINERS[contender](root, steps)
    return {"contender": contender, **measure(first, many, BATCH * SEQ_LEN, steps, chunks, started)}


def contenders() -> list[str]:
    return [c for c in TRAINERS if c != "torch-eager" or has_torch()]


def train_case(rounds: int, quick: bool) -> dict:
    names = contenders()
    steps = QUICK_STEPS if quick else STEPS
    runs = {c: [] for c in names}
    with tempfile.TemporaryDirectory() as root:
        write_checkpoint(root)
        for i in range(rounds):
            for contender in names if i % 2 == 0 else reversed(names):
                argv = [contender, root, str(steps), str(CHUNKS)]
                result = run_worker("benchmarks.llama_bench", argv, timeout=1200)
                runs[contender].append(result)
                print(f"round {i + 1} {contender}: {result}", file=sys.stderr, flush=True)
    figures = {}
    for contender, results in runs.items():
        ok = [r for r in results if "error" not in r]
        figures[contender] = {
            "tokens/s": summarize([r["tokens_per_second"] for r in ok]),
            "first step s": summarize([r["first_step_seconds"] for r in ok])["median"],
            "peak RSS MB": summarize([r["peak_rss_mb"] for r in ok])["median"],
            "errors": "; ".join(r["error"] for r in results if "error" in r)[:120] or None,
        }
    per_round = []
    for i, ours in enumerate(runs["tfllm"]):
        theirs = [runs[c][i].get("tokens_per_second") for c in names if c != "tfllm"]
        if ours.get("tokens_per_second") and any(theirs):
            per_round.append(ours["tokens_per_second"] / max(t for t in theirs if t))
    notes = [f"tfllm / fastest peer per round: {', '.join(f'{x:.2f}' for x in per_round)}"]
    return {"figures": figures, "notes": notes, "runs": runs}


def paired_case(rounds: int, quick: bool) -> dict:
    """Every contender in one process, timed alternately chunk by chunk: each round's ratios
    compare runs a few seconds apart, so they survive the load of a shared machine better than
    medians of separate processes do."""
    steps = QUICK_STEPS if quick else STEPS
    with tempfile.TemporaryDirectory() as root:
        write_checkpoint(root)
        builders = {c: lambda c=c: TRAINERS[c](root, steps) for c in contenders()}
        figures = paired_training(builders, "tfllm", rounds, steps, BATCH * SEQ_LEN)
    return {"figures": figures}


def generate_case(repeats: int, quick: bool) -> dict:
    import keras_hub
    import tensorflow as tf

    from benchmarks.generate_bench import summaries
    from tfllm.runs.trained import load_trained
    from tfllm.serve import generate as tfllm_generate

    n = 16 if quick else 64
    with tempfile.TemporaryDirectory() as root:
        write_checkpoint(root)
        model = load_trained(os.path.join(root, "run")).model
        backbone = keras_hub.models.Llama3Backbone.from_preset(os.path.join(root, "hf"))
    head = model.embedding.head_kernel  # untied: the EOS column never wins
    eos_column = [[i, 2] for i in range(SHAPE["hidden_dim"])]
    head.assign(tf.tensor_scatter_nd_update(head, eos_column, tf.zeros(SHAPE["hidden_dim"])))
    backbone.token_embedding.reverse_embeddings.assign(head)
    prompt = tf.constant(np.random.default_rng(0).integers(3, 4096, (1, 16)), tf.int32)
    start, stop = tf.zeros([1], tf.int32), tf.constant([2])

    def greedy(ids):
        options = (tf.constant(n), tf.constant(0.0), tf.constant(0), tf.constant(1.0))
        return tfllm_generate.decode(model, ids, start, *options, tf.constant(0, tf.int64), stop)

    decode = {jit: tf.function(greedy, jit_compile=jit) for jit in (False, True)}
    causal_lm = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)
    causal_lm.compile(sampler="greedy")
    padded = np.zeros((1, 16 + n), np.int32)
    padded[:, :16] = prompt.numpy()
    mask = np.zeros_like(padded, bool)
    mask[:, :16] = True
    request = {"token_ids": padded, "padding_mask": mask}
    ours = np.asarray(decode[False](prompt)[0])[0, -n:]
    theirs = np.asarray(causal_lm.generate(request, stop_token_ids=None)["token_ids"])[0, 16:]
    per_token = summaries(
        {
            "tfllm cached (graph)": lambda: np.asarray(decode[False](prompt)[0]),
            "tfllm cached (XLA)": lambda: np.asarray(decode[True](prompt)[0]),
            "keras-hub Llama3CausalLM.generate": lambda: causal_lm.generate(
                request, stop_token_ids=None
            ),
        },
        repeats,
        n / 1000,
    )
    same = bool(np.array_equal(ours, theirs))
    return {
        "figures": {name: {"ms/token": value} for name, value in per_token.items()},
        "notes": [
            f"{n} new tokens, batch 1, greedy; tfllm and keras-hub emit the same tokens: "
            f"{'yes' if same else 'no'}"
        ],
    }


if __name__ == "__main__":  # a worker: python -m benchmarks.llama_bench CONTENDER ROOT STEPS CHUNKS
    emit(worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
