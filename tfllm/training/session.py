"""How a training session starts: the prepared data checked against the config (made first
when the caller passes the prepare stage), the model built (a LoRA run's base loaded
and its adapters attached), the optimizer, the checkpointer, the memory estimate checked, and
the newest usable checkpoint restored."""

from __future__ import annotations

import dataclasses
import logging
import math

import keras
import tensorflow as tf

from tfllm.config import Config, save_config
from tfllm.data import layout
from tfllm.errors import ConfigError
from tfllm.model import lora
from tfllm.model.lm import build_model
from tfllm.observe import memory
from tfllm.runs import finetune, trained
from tfllm.runs.checkpoint import Checkpointer
from tfllm.training.optim import completed_steps, make_optimizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Session:
    cfg: Config  # resolved: a fine-tuning run's base and adapter settings filled in
    manifest: dict
    directory: str  # the dataset's
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    counters: dict[str, tf.Variable]
    checkpointer: Checkpointer
    step: int  # where training resumes
    reference: object = None  # DPO without LoRA: the (pairs + 1, 2) reference log-probs
    teacher: keras.Model | None = None  # distillation's frozen teacher


def new_counters() -> dict[str, tf.Variable]:
    """The run's totals that a checkpoint carries besides the model and the optimizer."""
    return {
        "skipped_steps": tf.Variable(0, dtype=tf.int64, trainable=False),
        "rollbacks": tf.Variable(0, dtype=tf.int64, trainable=False),
    }


def make_checkpointer(cfg: Config, model, optimizer, counters: dict, strategy=None, base=None):
    """The trainer's Checkpointer: what `tfllm.train` writes is exactly what this saves
    (`model` is a LoRA run's adapters, `base` its base's identity)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    return Checkpointer(
        cfg.runtime.workdir,
        model,
        optimizer,
        cfg.train.keep_checkpoints,
        model_config=cfg.to_dict()["model"],
        extras=counters,
        chief=strategy.extended.should_checkpoint,
        worker_id=resolver.task_id if resolver is not None and resolver.task_id else 0,
        base=base,
    )


def start(cfg: Config, strategy, build_data=None) -> Session:
    """The session of `cfg`; `build_data(cfg)` makes a missing dataset (`loop.train`)."""
    resolved = finetune.resolve(cfg)
    if resolved.model != cfg.model:
        logger.info(f"fine-tuning: the model section is the base's ({cfg.train.init_from})")
    cfg = resolved
    t = cfg.train
    manifest = layout.ensure_prepared(cfg, build_data)
    tf.keras.utils.set_random_seed(t.seed)
    # A frozen bfloat16 base is held (and computes) in bfloat16; the adapters stay float32.
    precision = "bfloat16" if t.base_precision == "bfloat16" else t.precision
    with strategy.scope():
        model = build_model(cfg.model, precision, t.remat)
    base = None
    if t.init_from:
        base = trained.load_base(cfg, model)
        logger.info(
            f"fine-tuning from {base['workdir']}/checkpoints/{base['checkpoint']} "
            "(weights only; fresh optimizer, step 0)"
        )
    directory = layout.data_dir(cfg)
    reference_logps = None
    if t.objective == "dpo" and not t.lora_rank:  # while the model holds the reference weights
        from tfllm.training import reference

        reference_logps = reference.ensure(
            model, directory, manifest, base, t, chief=strategy.extended.should_checkpoint
        )
    teacher = None
    if t.distill_from:
        from tfllm.training.distill import load_teacher

        teacher = load_teacher(cfg, strategy)
    with strategy.scope():
        adapters = lora.attach(model, t) if t.lora_rank else None
        optimizer = make_optimizer(t, lora.trainable_variables(model))
    counters = new_counters()
    checkpointer = make_checkpointer(
        cfg, adapters or model, optimizer, counters, strategy, base=base if adapters else None
    )
    check_memory(cfg, model, strategy.num_replicas_in_sync, teacher)
    restored = checkpointer.restore_latest()
    # Only now, with the checkpoint accepted for this model: a refused resume must leave the
    # workdir's config.yaml describing the checkpoints that are there. The chief alone writes
    # it: two workers renaming one temporary file race, and the loser crashes.
    if strategy.extended.should_checkpoint:
        save_config(cfg, f"{cfg.runtime.workdir}/config.yaml")
    step = completed_steps(optimizer)
    logger.info(
        f"model: {model.count_params():,} parameters; "
        + (f"resumed from {restored} at step {step}" if restored else "starting from scratch")
    )
    if restored is None and t.on_nonfinite == "rollback":
        checkpointer.save(step)  # something to roll back to before the first one
    return Session(
        cfg, manifest, directory, model, optimizer, counters, checkpointer, step,
        reference_logps, teacher,
    )  # fmt: skip


def check_memory(cfg: Config, model, replicas: int, teacher=None) -> None:
    """Logs the memory estimate; refuses a run whose estimate exceeds the device's."""
    trained_params = sum(math.prod(v.shape) for v in lora.trainable_variables(model))
    extra = {}
    if teacher is not None:
        extra = {
            "teacher_params": teacher.count_params(),
            "teacher_bytes": 2 if teacher.compute_dtype == "bfloat16" else 4,
        }
    sizes = memory.estimate(cfg, model.count_params(), trained_params, replicas, **extra)
    logger.info(memory.describe(cfg, sizes, trained_params))
    limit = memory.device_limit(cfg.runtime.device_memory_gb)
    if limit is not None and sizes["total"] > limit:
        raise ConfigError(
            f"the run needs at least {sizes['total'] / memory.GIB:.3g} GiB per replica, the "
            f"device has {limit / memory.GIB:.3g} GiB: lower train.global_batch_size or "
            "data.seq_len, raise train.grad_accum_steps, set train.remat=true, or use LoRA"
        )
