"""The strategy factory: `auto`, `cpu`, `gpu`, `mirrored`, `multiworker`, `tpu`.

One training loop runs under every strategy; this module only decides which one and starts
it. A strategy that cannot start raises `StrategyError` with one line that says what was
looked for, so `python -m tfllm.train` fails before it builds or compiles anything.

Also here: `global_batches`, which hands every strategy the same global batches, sliced per
input pipeline, so that a run gives the same numbers on 1 device, N replicas or N workers.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Callable

import tensorflow as tf

from tfllm.config import RuntimeConfig
from tfllm.errors import StrategyError

logger = logging.getLogger(__name__)

_COLLECTIVES = {
    "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
    "ring": tf.distribute.experimental.CommunicationImplementation.RING,
    "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
}


def _tpu_address(runtime: RuntimeConfig) -> str:
    return runtime.tpu or os.environ.get("TPU_NAME", "")


def _on_tpu_vm() -> bool:
    # TPU VMs expose their chips as /dev/accel* (v2-v4) or /dev/vfio/* (v5 and later).
    return bool(glob.glob("/dev/accel*")) or bool(glob.glob("/dev/vfio/[0-9]*"))


def _tf_config_workers() -> int:
    """Number of tasks that run training in TF_CONFIG (chief + workers); 0 when unset."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return 0
    try:
        config = json.loads(raw)
        cluster = config["cluster"]
        task = config["task"]
        if task["type"] not in cluster or not 0 <= int(task["index"]) < len(cluster[task["type"]]):
            raise KeyError(f"task {task} is not in the cluster")
        return len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError) as err:
        raise StrategyError(
            f"bad TF_CONFIG ({type(err).__name__}: {err}); expected JSON like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        ) from None


def _slurm_tasks() -> int:
    """Number of tasks in the current Slurm job step; 0 outside Slurm."""
    if "SLURM_JOB_ID" not in os.environ:
        return 0
    return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "1")))


def choose(runtime: RuntimeConfig) -> tuple[str, str]:
    """`auto`: the strategy this machine calls for, and why."""
    if _tpu_address(runtime):
        return "tpu", f"a TPU is configured ({_tpu_address(runtime)!r})"
    if _on_tpu_vm():
        return "tpu", "this is a TPU VM (/dev/accel* or /dev/vfio present)"
    workers = _tf_config_workers()
    if workers > 1:
        return "multiworker", f"TF_CONFIG describes {workers} workers"
    if _slurm_tasks() > 1:
        return "multiworker", f"Slurm job with {_slurm_tasks()} tasks"
    gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus > 1:
        return "mirrored", f"{gpus} GPUs on this host"
    if gpus == 1:
        return "gpu", "one GPU on this host"
    return "cpu", "no TPU, no cluster, no GPU"


def configure_cpu_devices(count: int) -> None:
    """Splits the host CPU into `count` logical devices (before TF starts its runtime)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError:  # the runtime is already up: fine if it already has enough devices
        found = len(tf.config.list_logical_devices("CPU"))
        if found < count:
            raise StrategyError(
                f"mirrored on CPU needs {count} logical CPU devices but TensorFlow already "
                f"started with {found}; choose the strategy before running any TensorFlow op"
            ) from None


def _one_gpu(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    if not tf.config.list_physical_devices("GPU"):
        raise StrategyError(
            "--strategy=gpu: no GPU found (tf.config.list_physical_devices('GPU') is empty; "
            "is tensorflow[and-cuda] installed and CUDA_VISIBLE_DEVICES set?)"
        )
    return tf.distribute.OneDeviceStrategy("/gpu:0")


def _mirrored(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    configure_cpu_devices(runtime.num_cpu_devices)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][: runtime.num_cpu_devices]
    return tf.distribute.MirroredStrategy(devices)


def _multiworker(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=_COLLECTIVES[runtime.collective]
    )
    if _tf_config_workers():
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    elif _slurm_tasks():
        try:
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
                gpus_per_node=len(tf.config.list_physical_devices("GPU"))
            )
        except (RuntimeError, ValueError, KeyError) as err:
            raise StrategyError(f"cannot read the Slurm job for multiworker: {err}") from None
    else:
        raise StrategyError(
            "--strategy=multiworker: found neither TF_CONFIG nor a Slurm job (SLURM_JOB_ID); "
            "set TF_CONFIG on every host or start the workers with srun"
        )
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver, communication_options=options
    )


def _tpu(runtime: RuntimeConfig) -> tf.distribute.Strategy:
    address = _tpu_address(runtime)
    if not address and _on_tpu_vm():
        address = "local"
    if not address:
        raise StrategyError(
            "--strategy=tpu: no TPU given; pass --tpu=NAME|grpc://HOST:PORT|local or set TPU_NAME"
        )
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StrategyError(f"--strategy=tpu: no TPU found at {address!r}: {first[:200]}") from None
    return tf.distribute.TPUStrategy(resolver)


_BUILDERS: dict[str, Callable[[RuntimeConfig], tf.distribute.Strategy]] = {
    "cpu": lambda runtime: tf.distribute.OneDeviceStrategy("/cpu:0"),
    "gpu": _one_gpu,
    "mirrored": _mirrored,
    "multiworker": _multiworker,
    "tpu": _tpu,
}


def make_strategy(runtime: RuntimeConfig):
    """Starts the strategy named by `runtime.strategy` (resolving `auto` first)."""
    name = runtime.strategy
    if name == "auto":
        name, why = choose(runtime)
        logger.info(f"strategy: auto chose {name} ({why})")
    if name not in _BUILDERS:
        choices = ", ".join(["auto", *_BUILDERS])
        raise StrategyError(f"unknown strategy {name!r}; choose one of {choices}")
    strategy = _BUILDERS[name](runtime)
    logger.info(
        f"strategy: {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"
    )
    return strategy


def global_batches(
    strategy: tf.distribute.Strategy, make_dataset: Callable[[], tf.data.Dataset], batch: int
):
    """Distributes a stream of *global* batches of `batch` rows: every input pipeline reads the
    whole stream and keeps its own rows, and its replicas split those in order.

    Global replica r then sees rows [r*b, (r+1)*b) of every global batch (b = batch / replicas)
    under any strategy and host count, so one device, N replicas and N workers compute the same
    sums. The price is that each host reads all of the stream: right for evaluation batches and
    in-memory data, not for a large training stream (that one is sharded by file in `data.py`).
    """
    per_replica = batch // strategy.num_replicas_in_sync

    def pipeline(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        rows = batch // ctx.num_input_pipelines
        start = ctx.input_pipeline_id * rows
        ds = make_dataset().map(lambda *t: tuple(x[start : start + rows] for x in t))
        return ds.unbatch().batch(per_replica, drop_remainder=True)

    return strategy.distribute_datasets_from_function(pipeline)
