"""Direct preference optimization (`train.objective: dpo`), as TRL's `DPOTrainer` computes it.

For a pair (prompt x, chosen y_c, rejected y_r), pi(y) is the policy's log-probability of the
completion's tokens given the prompt (a sum over the completion tokens), ref(y) the reference
model's, and

    d = (pi(y_c) - ref(y_c)) - (pi(y_r) - ref(y_r))
    sigmoid  -(1 - e) log sigmoid(b d) - e log sigmoid(-b d)        (e: label smoothing, cDPO)
    ipo      (d' - 1 / (2 b))^2, d' from log-probabilities averaged over each completion's tokens
    hinge    relu(1 - b d)
    robust   (-(1 - e) log sigmoid(b d) + e log sigmoid(-b d)) / (1 - 2 e)

With `train.dpo_sft_weight` w > 0 each pair's loss adds w times the chosen completion's negative
log-likelihood per token, -pi(y_c) / |y_c| (RPO, Pang et al. 2024; TRL's loss_type
["sigmoid", "sft"] with loss_weights [1, w], whose sft term is a mean over the batch's chosen
tokens: the same number when chosen completions are equally long). It keeps the chosen answer's
probability from falling while DPO pushes the pair apart.

The loss is the mean over the global batch's pairs. Logged as TRL logs them: rewards/chosen
and rewards/rejected (b (pi - ref), summed log-probabilities), rewards/margins (their
difference), rewards/accuracies (the share of pairs whose chosen reward is the larger),
logps/chosen and logps/rejected (pi).

Chosen and rejected run through the model as one batch of 2B rows ([chosen; rejected], as TRL
concatenates them). The reference: with LoRA, the same model with its adapters switched off,
in the same compiled step (no gradient); without LoRA, a table computed once before training
(`tfllm.training.reference`) that the input pipeline hands in with each batch.
"""

from __future__ import annotations

import tensorflow as tf

from tfllm.data.reader import IGNORE
from tfllm.model import lora

METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def sequence_logps(model, inputs, targets, segment_ids, training: bool):
    """(B, 2, T) pairs -> per-sequence log-probability sums and target counts, each (B, 2).
    The two sides run as one (2B, T) batch, chosen rows first."""
    both = [tf.concat([t[:, 0], t[:, 1]], axis=0) for t in (inputs, targets, segment_ids)]
    logits = model(both[0], segment_ids=both[2], training=training)  # (2B, T, V) float32
    counted = both[1] != IGNORE
    logps = -tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.where(counted, both[1], 0), logits=logits
    )
    sums = tf.reduce_sum(tf.where(counted, logps, 0.0), axis=-1)  # (2B,)
    counts = tf.reduce_sum(tf.cast(counted, tf.float32), axis=-1)
    pairs = tf.shape(inputs)[0]
    return tf.stack([sums[:pairs], sums[pairs:]], 1), tf.stack([counts[:pairs], counts[pairs:]], 1)


def losses(policy, reference, counts, loss: str, beta: float, smoothing: float, sft: float = 0.0):
    """Per-pair losses (B,) from (B, 2) policy and reference log-probability sums (chosen,
    rejected) and completion token counts, by the formulas in the module docstring."""
    per_pair = preference_losses(policy, reference, counts, loss, beta, smoothing)
    if sft:
        per_pair += sft * -policy[:, 0] / tf.maximum(counts[:, 0], 1.0)
    return per_pair


def preference_losses(policy, reference, counts, loss: str, beta: float, smoothing: float):
    """The variant's per-pair loss (B,), without the SFT term."""
    ratios = policy - reference  # (B, 2)
    if loss == "ipo":
        averaged = ratios / tf.maximum(counts, 1.0)
        return (averaged[:, 0] - averaged[:, 1] - 1.0 / (2.0 * beta)) ** 2
    d = beta * (ratios[:, 0] - ratios[:, 1])
    if loss == "hinge":
        return tf.nn.relu(1.0 - d)
    if loss == "robust":
        return (
            -(1.0 - smoothing) * tf.math.log_sigmoid(d) + smoothing * tf.math.log_sigmoid(-d)
        ) / (1.0 - 2.0 * smoothing)
    return -(1.0 - smoothing) * tf.math.log_sigmoid(d) - smoothing * tf.math.log_sigmoid(-d)


def metric_sums(policy, reference, beta: float) -> dict[str, tf.Tensor]:
    """TRL's logged values as sums over the pairs (the step divides by the global count)."""
    rewards = beta * (policy - reference)
    return {
        "rewards/chosen": tf.reduce_sum(rewards[:, 0]),
        "rewards/rejected": tf.reduce_sum(rewards[:, 1]),
        "rewards/margins": tf.reduce_sum(rewards[:, 0] - rewards[:, 1]),
        "rewards/accuracies": tf.reduce_sum(tf.cast(rewards[:, 0] > rewards[:, 1], tf.float32)),
        "logps/chosen": tf.reduce_sum(policy[:, 0]),
        "logps/rejected": tf.reduce_sum(policy[:, 1]),
    }


class DPO:
    """The DPO objective for `tfllm.training.steps.Steps`: a batch is (inputs, targets,
    segment_ids[, reference]) of preference pairs (`tfllm.data.pairs`)."""

    metric_names = METRICS

    def __init__(self, train_cfg):
        self.loss = train_cfg.dpo_loss
        self.beta = train_cfg.dpo_beta
        self.smoothing = train_cfg.dpo_label_smoothing
        self.sft = train_cfg.dpo_sft_weight

    def count(self, batch) -> tf.Tensor:
        return tf.cast(tf.shape(batch[0])[0], tf.float32)

    def reference(self, model, batch):
        if len(batch) > 3:  # precomputed
            return batch[3]
        # LoRA: the base, i.e. the starting checkpoint, under the same weights.
        with lora.adapters_off(model):
            reference, _ = sequence_logps(model, *batch[:3], training=False)
        return tf.stop_gradient(reference)

    def loss_sum(self, model, batch, training: bool):
        policy, counts = sequence_logps(model, *batch[:3], training=training)
        reference = self.reference(model, batch)
        per_pair = losses(policy, reference, counts, self.loss, self.beta, self.smoothing, self.sft)
        return tf.reduce_sum(per_pair), metric_sums(policy, reference, self.beta)
