"""Writes dpo_golden.json: DPO computed by PyTorch on two tiny Hugging Face Llama models (the
policy, seed 0, and the reference, seed 1, from tests/hub_fixtures.py) and a fixed batch of
three preference pairs, with TRL's formulas.

    pip install torch==2.13.0 transformers
    PYTHONPATH=tests:. python tests/golden/make_dpo_golden.py

The formulas are TRL's `DPOTrainer._compute_loss` (trl 1.16, trl/trainer/dpo_trainer.py):
per-sequence log-probabilities summed over the completion tokens, chosen and rejected run as
one concatenated batch [chosen; rejected]; sigmoid `-logsigmoid(b d)`, with label smoothing e
the conservative form TRL used before 1.0 (`-(1-e) logsigmoid(b d) - e logsigmoid(-b d)`);
hinge `relu(1 - b d)`; ipo `(d_avg - 1/(2b))^2` with log-ratios averaged over each completion's
tokens; robust `(-(1-e) logsigmoid(b d) + e logsigmoid(-b d)) / (1 - 2e)`; rewards b (pi - ref).
The SFT term (RPO, tfllm's `train.dpo_sft_weight` w) adds w times each pair's chosen negative
log-likelihood per token; TRL's `sft` loss type averages over all of the batch's chosen tokens
instead, which is the same number when the chosen completions are equally long (here they are
not, so the golden value is tfllm's per-pair mean, written in PyTorch).
TRL's own trainer needs a dataset and accelerate around that code, so the formulas are
restated here line for line rather than imported.

Recorded: per pair the policy and reference log-probabilities of chosen and rejected, and per
variant the loss, the rewards and the gradient of the loss with respect to four named weights
of the policy. tests/test_training_dpo_golden.py rebuilds the same directories, imports them with
`tfllm.convert` and checks every number within 1e-4 without torch installed.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import torch
import torch.nn.functional as F
import transformers
from hub_fixtures import write_hf_dir

# (prompt, chosen, rejected) token ids; the window holds 12 tokens.
PAIRS = [
    ([1, 17, 40, 9], [22, 23, 5, 2], [70, 2]),
    ([1, 99, 3, 64, 8, 120, 7], [11, 2], [12, 13, 14, 2]),
    ([1, 33], [44, 45, 46, 47, 48, 2], [90, 91, 92, 2]),
]
WINDOW = 12
VARIANTS = {  # name -> (loss, beta, label smoothing, SFT weight)
    "sigmoid": ("sigmoid", 0.1, 0.0, 0.0),
    "sigmoid_smoothed": ("sigmoid", 0.1, 0.2, 0.0),
    "ipo": ("ipo", 0.1, 0.0, 0.0),
    "hinge": ("hinge", 0.1, 0.0, 0.0),
    "robust": ("robust", 0.1, 0.2, 0.0),
    "sigmoid_sft": ("sigmoid", 0.1, 0.0, 1.0),
    "ipo_sft": ("ipo", 0.1, 0.0, 0.5),
}
WEIGHTS = [
    "model.norm.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.1.post_attention_layernorm.weight",
    "model.layers.1.mlp.down_proj.weight",
]


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, completion_mask: (6, WINDOW), chosen rows then rejected."""
    rows = [(p, c) for p, c, _ in PAIRS] + [(p, r) for p, _, r in PAIRS]
    ids = torch.zeros(len(rows), WINDOW, dtype=torch.long)
    attention = torch.zeros_like(ids)
    completion = torch.zeros_like(ids)
    for i, (prompt, answer) in enumerate(rows):
        n = len(prompt) + len(answer)
        ids[i, :n] = torch.tensor(prompt + answer)
        attention[i, :n] = 1
        completion[i, len(prompt) : n] = 1
    return ids, attention, completion


def logps(model, ids, attention, completion) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    per_token = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None])[..., 0]
    return (per_token * completion[:, 1:]).sum(-1)


def loss_of(kind, beta, e, sft, pi, ref, completion) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(PAIRS)
    ratios = pi - ref
    d = ratios[:n] - ratios[n:]
    if kind == "sigmoid":
        per = -(1 - e) * F.logsigmoid(beta * d) - e * F.logsigmoid(-beta * d)
    elif kind == "hinge":
        per = torch.relu(1 - beta * d)
    elif kind == "ipo":
        counts = completion.sum(-1).clamp(min=1.0)
        averaged = ratios / counts
        per = (averaged[:n] - averaged[n:] - 1 / (2 * beta)) ** 2
    else:  # robust
        per = (-(1 - e) * F.logsigmoid(beta * d) + e * F.logsigmoid(-beta * d)) / (1 - 2 * e)
    per = per + sft * -pi[:n] / completion[:n].sum(-1).clamp(min=1.0)
    return per.mean(), beta * ratios.detach()


def _short(value):
    """Seven significant digits: far below the test's 1e-4, a third of the file."""
    if isinstance(value, list):
        return [_short(v) for v in value]
    return float(f"{value:.7g}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, seed in (("policy", 0), ("reference", 1)):
            write_hf_dir(f"{tmp}/{name}", "llama", "float32", seed=seed)
        load = transformers.AutoModelForCausalLM.from_pretrained
        policy = load(f"{tmp}/policy", dtype=torch.float32, attn_implementation="eager")
        reference = load(f"{tmp}/reference", dtype=torch.float32, attn_implementation="eager")
    ids, attention, completion = batch()
    with torch.no_grad():
        ref = logps(reference.eval(), ids, attention, completion)
    policy.eval()  # no dropout in these models; eval mode as the test's forward
    params = dict(policy.named_parameters())
    golden = {
        "pairs": PAIRS,
        "window": WINDOW,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "variants": {},
    }
    n = len(PAIRS)
    for name, (kind, beta, e, sft) in VARIANTS.items():
        policy.zero_grad()
        pi = logps(policy, ids, attention, completion)
        loss, rewards = loss_of(kind, beta, e, sft, pi, ref, completion[:, 1:].float())
        loss.backward()
        pi = pi.detach()
        golden["policy_logps"] = [[float(pi[i]), float(pi[n + i])] for i in range(n)]
        golden["reference_logps"] = [[float(ref[i]), float(ref[n + i])] for i in range(n)]
        golden["variants"][name] = {
            "loss": kind,
            "beta": beta,
            "label_smoothing": e,
            "sft_weight": sft,
            "value": float(loss),
            "rewards": [[float(rewards[i]), float(rewards[n + i])] for i in range(n)],
            "grads": {w: _short(params[w].grad.tolist()) for w in WEIGHTS},
        }
        print(name, float(loss))
    path = pathlib.Path(__file__).with_name("dpo_golden.json")
    path.write_text(json.dumps(golden, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
