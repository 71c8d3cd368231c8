"""Knowledge distillation (`train.distill_from`): the student learns from the data and from a
frozen teacher's distribution at every predicted token.

Per counted target (every token of pretraining data; the completion tokens of SFT data):

    loss = (1 - alpha) CE(y, student) + alpha T^2 KL(softmax(teacher / T) || softmax(student / T))

alpha = `train.distill_alpha`, T = `train.distill_temperature` (T^2 keeps the KL term's
gradients on the cross-entropy's scale as T grows, Hinton et al. 2015). The teacher runs in
the same compiled step with no gradient, in bfloat16 where the device computes in it (GPU, TPU)
and float32 on CPU. Teacher and student must share the tokenizer: the KL compares
distributions over the same ids (over the first min(V_teacher, V_student) ids when one
vocabulary is padded larger).

The teacher is a tfllm workdir, a Hugging Face model directory or a keras-hub preset
directory; the last two are imported once with `tfllm.convert` into `<workdir>/teacher`.
"""

from __future__ import annotations

import logging
import os
import posixpath

import tensorflow as tf

from tfllm.data import layout, records
from tfllm.data.reader import IGNORE
from tfllm.errors import ConfigError
from tfllm.model.lm import build_model
from tfllm.runs.trained import load_trained
from tfllm.tokenizers.tokenizer import load_tokenizer
from tfllm.training.steps import target_count

logger = logging.getLogger(__name__)
METRICS = ("distill/cross_entropy", "distill/kl")
# Text whose ids two tokenizers must agree on to count as the same: words, code, digits,
# whitespace runs and non-ASCII letters.
_PROBE = [
    "The quick brown fox jumps over the lazy dog.",
    "def main(argv):\n    return 0  # 12345 67.89",
    "  indented\ttabs and  double  spaces",
    "naïve café, Straße, ελληνικά, 日本語",
]


def teacher_workdir(source: str, workdir: str) -> str:
    """A tfllm workdir holding the teacher: `source` itself, or its import under workdir."""
    if tf.io.gfile.exists(posixpath.join(source, "config.yaml")):
        return source
    if not os.path.isdir(source):
        raise ConfigError(
            f"train.distill_from: {source} is not a tfllm workdir, a Hugging Face model "
            "directory or a keras-hub preset directory"
        )
    imported = posixpath.join(workdir, "teacher")
    if not tf.io.gfile.exists(posixpath.join(imported, "config.yaml")):
        from tfllm.hub import convert, preset

        if preset.is_preset(source):
            convert.from_keras_hub(source, imported)
        else:
            convert.from_hf(source, imported)
    return imported


def _tokenizer_file(path: str) -> str:
    for name in ("tokenizer.json", "tokenizer.model"):
        if tf.io.gfile.isdir(path) and tf.io.gfile.exists(posixpath.join(path, name)):
            return posixpath.join(path, name)
    return path


def check_same_tokenizer(student: str, teacher: str) -> None:
    """Refuses two tokenizers that give different ids (the same file passes at once)."""
    if records.file_sha256(_tokenizer_file(student)) == records.file_sha256(
        _tokenizer_file(teacher)
    ):
        return
    a, b = load_tokenizer(student), load_tokenizer(teacher)
    ids_a = a.tokenize(tf.constant(_PROBE)).to_list()
    ids_b = b.tokenize(tf.constant(_PROBE)).to_list()
    if ids_a != ids_b:
        raise ConfigError(
            f"train.distill_from: the teacher's tokenizer ({teacher}) is not the student's "
            f"({student}); distillation compares distributions over the same token ids"
        )


def load_teacher(cfg, strategy):
    """The frozen teacher model of `cfg.train.distill_from`, its variables under `strategy`."""
    source = teacher_workdir(cfg.train.distill_from, cfg.runtime.workdir)
    trained = load_trained(source)
    check_same_tokenizer(layout.tokenizer_path(cfg), trained.tokenizer_path)
    if trained.cfg.model.max_sequence_length < cfg.data.seq_len:
        raise ConfigError(
            f"train.distill_from: the teacher reads at most {trained.cfg.model.max_sequence_length}"
            f" tokens, data.seq_len is {cfg.data.seq_len}"
        )
    accelerated = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU")
    with strategy.scope():
        teacher = build_model(trained.cfg.model, "bfloat16" if accelerated else "float32")
    for target, value in zip(teacher.weights, trained.model.weights, strict=True):
        target.assign(tf.cast(value, target.dtype))
    teacher.trainable = False
    logger.info(
        "distilling from %s (%s parameters)", trained.checkpoint, f"{teacher.count_params():,}"
    )
    return teacher


class Distillation:
    """The objective for `tfllm.training.steps.Steps`: batches as for `lm`."""

    metric_names = METRICS

    def __init__(self, teacher, alpha: float, temperature: float):
        self.teacher, self.alpha, self.temperature = teacher, alpha, temperature

    def count(self, batch) -> tf.Tensor:
        return target_count(batch[1])

    def loss_sum(self, model, batch, training: bool):
        inputs, targets, segment_ids = batch[0], batch[1], (batch[2] if len(batch) > 2 else None)
        logits = model(inputs, segment_ids=segment_ids, training=training)  # (B, T, V)
        teacher = self.teacher(inputs, segment_ids=segment_ids, training=False)
        teacher = tf.stop_gradient(tf.cast(teacher, tf.float32))
        counted = targets != IGNORE
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.where(counted, targets, 0), logits=logits
        )
        kl = token_kl(teacher, logits, self.temperature)
        per_token = (1.0 - self.alpha) * ce + self.alpha * self.temperature**2 * kl
        total = tf.reduce_sum(tf.where(counted, per_token, 0.0))
        metrics = {
            "distill/cross_entropy": tf.reduce_sum(tf.where(counted, ce, 0.0)),
            "distill/kl": tf.reduce_sum(tf.where(counted, kl, 0.0)),
        }
        return total, metrics


def token_kl(teacher_logits, student_logits, temperature: float) -> tf.Tensor:
    """KL(teacher || student) at `temperature` per position, (B, T), over the shared ids."""
    shared = min(teacher_logits.shape[-1], student_logits.shape[-1])
    log_t = tf.nn.log_softmax(teacher_logits[..., :shared] / temperature, axis=-1)
    log_s = tf.nn.log_softmax(student_logits[..., :shared] / temperature, axis=-1)
    return tf.reduce_sum(tf.exp(log_t) * (log_t - log_s), axis=-1)
