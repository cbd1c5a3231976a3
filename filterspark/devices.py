"""Which torch device a Spark task may use: exactly the GPU Spark assigned, else the CPU."""
from __future__ import annotations

import logging
import os

log = logging.getLogger("filterspark.devices")


def assigned_gpu_addresses() -> list[str]:
    """GPU addresses Spark gave the current task (``[]`` outside a task or without GPUs)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None:
        return []
    gpu = ctx.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def cuda_index_for(address: str) -> int:
    """Map a Spark GPU address to a CUDA ordinal, honouring ``CUDA_VISIBLE_DEVICES``.

    Resource managers that isolate GPUs (YARN, Kubernetes) expose only the assigned
    device, so address "3" may be ``cuda:0`` inside the container.
    """
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if address in visible:
        return visible.index(address)
    return int(address)


def task_device() -> tuple[str, str | None]:
    """(device, warning): ``cuda:<i>`` for the assigned GPU, or ``cpu`` with a reason.

    A task never picks a GPU it was not given: without a GPU resource it runs on the CPU
    even when CUDA devices are visible.
    """
    addresses = assigned_gpu_addresses()
    if not addresses:
        return "cpu", None
    address = addresses[0]
    import torch

    if not torch.cuda.is_available():
        warning = f"Spark assigned GPU {address} but CUDA is not available in this executor; using the CPU"
        log.warning(warning)
        return "cpu", warning
    try:
        index = cuda_index_for(address)
    except ValueError:
        warning = f"GPU address {address!r} is not a CUDA ordinal; using the CPU"
        log.warning(warning)
        return "cpu", warning
    if index >= torch.cuda.device_count():
        warning = f"GPU {address} is not visible (only {torch.cuda.device_count()} CUDA devices); using the CPU"
        log.warning(warning)
        return "cpu", warning
    return f"cuda:{index}", None


def default_gpus_per_task(spark) -> float:
    """GPUs the extraction stage should ask for when the user did not say.

    1 when executors have GPUs (``spark.executor.resource.gpu.amount`` > 0) and tasks do
    not already get them cluster-wide (``spark.task.resource.gpu.amount``); 0 in local
    mode, where tasks that ask for a GPU would never be scheduled.
    """
    conf = spark.sparkContext.getConf()
    if conf.get("spark.master", "local").startswith("local["):
        return 0.0
    executor_gpus = float(conf.get("spark.executor.resource.gpu.amount", "0") or 0)
    task_gpus = float(conf.get("spark.task.resource.gpu.amount", "0") or 0)
    return 1.0 if executor_gpus > 0 and task_gpus == 0 else 0.0
