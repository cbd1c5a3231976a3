"""What an extraction task may use: the GPU Spark assigned it (else the CPU), and memory.

* :func:`task_device` — inside a task: ``cuda:<i>`` for exactly the GPU Spark gave the
  task, the CPU otherwise (with a note when a GPU was given but CUDA is missing).
* :func:`plan_gpus` — on the driver: how the extraction stage gets its GPUs — a
  stage-level ``ResourceProfile`` (only that stage holds GPUs), cluster-wide
  ``spark.task.resource.gpu.amount`` (every task holds one), or none (CPU).
* :func:`max_model_bytes` — on the driver: the largest checkpoint a task may load,
  from ``spark.filterspark.maxModelBytes`` or the executors' Python memory.
"""
from __future__ import annotations

import logging
import math
import os
import re
import socket
from dataclasses import dataclass
from typing import Mapping

from filterspark.delta.capabilities import session_conf
from filterspark.errors import OptionsError

log = logging.getLogger("filterspark.engine.resources")

# --- the task's device ------------------------------------------------------------------------


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
    """(device, note): ``cuda:<i>`` for the assigned GPU, or ``cpu`` with a reason when a
    GPU was assigned but cannot be used (the note is logged and stored in ``models``).

    A task never picks a GPU it was not given: without a GPU resource it runs on the CPU
    even when CUDA devices are visible.
    """
    addresses = assigned_gpu_addresses()
    if not addresses:
        return "cpu", None
    address = addresses[0]
    import torch

    where = f"Spark assigned GPU {address} on {socket.gethostname()}"
    if not torch.cuda.is_available():
        note = f"{where} but CUDA is not available in this executor; ran on the CPU"
    else:
        try:
            index = cuda_index_for(address)
        except ValueError:
            index, note = None, f"{where} but {address!r} is not a CUDA ordinal; ran on the CPU"
        else:
            if index < torch.cuda.device_count():
                return f"cuda:{index}", None
            note = f"{where} but only {torch.cuda.device_count()} CUDA devices are visible; ran on the CPU"
    log.warning(note)
    return "cpu", note


# --- how the extraction stage asks for GPUs ---------------------------------------------------

STAGE, CLUSTER, CPU = "stage", "cluster", "cpu"


@dataclass(frozen=True)
class GpuPlan:
    """How extraction tasks get GPUs.

    ``mode``: ``stage`` — a task-level ResourceProfile on the extraction stage only asks
    ``gpus_per_task``; ``cluster`` — every task already holds
    ``spark.task.resource.gpu.amount`` GPUs; ``cpu`` — no task gets a GPU.
    """

    mode: str
    gpus_per_task: float
    reason: str

    def line(self) -> str:
        return f"GPU scheduling: {self.mode} ({self.reason})"


def _amount(conf: Mapping[str, str], key: str) -> float:
    try:
        return float(conf.get(key) or 0)
    except ValueError:
        return 0.0


def is_local_master(master: str) -> bool:
    """``local``/``local[N]``/``local[N,F]`` — but not ``local-cluster[...]``."""
    return master == "local" or master.startswith("local[")


def plan_gpus(conf: Mapping[str, str], requested: float | None = None) -> GpuPlan:
    """Decide how the extraction stage gets GPUs from the application's Spark conf.

    ``requested`` None means: one GPU per task when the executors have GPUs. A request
    that could never be scheduled (local mode, executors without GPUs, more GPUs than an
    executor has) becomes ``cpu``/a smaller request with a warning, never a hung stage.
    """
    master = conf.get("spark.master", "local[*]")
    executor_gpus = _amount(conf, "spark.executor.resource.gpu.amount")
    task_gpus = _amount(conf, "spark.task.resource.gpu.amount")
    if requested is not None and requested < 0:
        raise OptionsError(f"gpus_per_task must be >= 0, got {requested}")
    if task_gpus > 0:
        reason = f"spark.task.resource.gpu.amount={task_gpus:g} gives every task its GPU share"
        if requested not in (None, task_gpus):
            reason += f"; the requested {requested:g} is ignored"
        return GpuPlan(CLUSTER, task_gpus, reason)
    if requested == 0:
        return GpuPlan(CPU, 0.0, "no GPUs requested")
    if is_local_master(master):
        plan = GpuPlan(CPU, 0.0, "local mode has no GPU scheduling")
    elif executor_gpus <= 0:
        plan = GpuPlan(CPU, 0.0, "executors have no GPUs (spark.executor.resource.gpu.amount unset)")
    else:
        wanted = 1.0 if requested is None else requested
        if wanted > executor_gpus:
            log.warning("asked %g GPUs per task but executors have %g; asking %g", wanted, executor_gpus, executor_gpus)
            wanted = executor_gpus
        return GpuPlan(STAGE, wanted, f"{wanted:g} GPU per extraction task through a stage-level ResourceProfile")
    if requested:
        log.warning("%g GPUs per task requested, but %s: extracting on the CPU", requested, plan.reason)
    return plan


def default_gpus_per_task(spark) -> float:
    """GPUs the extraction stage asks for when the user did not say (see :func:`plan_gpus`)."""
    plan = plan_gpus(session_conf(spark))
    return plan.gpus_per_task if plan.mode == STAGE else 0.0


# --- memory -------------------------------------------------------------------------------------

#: Resident memory of a Python worker once torch and the loaders are imported (measured:
#: 0.72-0.79 GiB with torch 2.x CPU wheels).
PYTHON_WORKER_BYTES = 768 << 20
#: Peak extraction memory over the checkpoint's file size (measured on a 216 MiB
#: checkpoint: pytorch, torchscript and safetensors 1.97x, ONNX 2.23x): the loaded
#: weights, a float32 copy of the largest layer and one Arrow batch of its rows.
PEAK_FACTOR = 2.25
MAX_MODEL_BYTES_CONF = "spark.filterspark.maxModelBytes"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes in a Spark-style size: ``1024``, ``512m``, ``2g``, ``1.5gb`` (binary units)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 1073741824, 512m, 2g)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def python_memory_per_task(conf: Mapping[str, str]) -> tuple[int | None, str]:
    """Memory one extraction task's Python worker may use, and where that number comes from.

    ``spark.executor.pyspark.memory`` when set; on YARN and Kubernetes otherwise the
    executor's memory overhead (Python lives outside the JVM heap, inside the container);
    split over the tasks an executor runs at once (``spark.executor.cores`` /
    ``spark.task.cpus``, as PySpark splits it). Standalone, local and Databricks executors
    have no per-executor limit on Python memory: None.
    """
    master = conf.get("spark.master", "local[*]")
    if conf.get("spark.executor.pyspark.memory"):
        total, source = parse_size(conf["spark.executor.pyspark.memory"]), "spark.executor.pyspark.memory"
    elif master.startswith(("yarn", "k8s://")):
        if conf.get("spark.executor.memoryOverhead"):
            total, source = parse_size(conf["spark.executor.memoryOverhead"]), "spark.executor.memoryOverhead"
        else:
            heap = parse_size(conf.get("spark.executor.memory", "1g"))
            factor = float(conf.get("spark.executor.memoryOverheadFactor", "0.1"))
            total, source = max(384 << 20, int(heap * factor)), "default spark.executor.memoryOverhead"
    else:
        return None, "no per-executor Python memory limit is known"
    cores = int(conf.get("spark.executor.cores", "1") or 1)
    tasks = max(1, cores // max(1, int(float(conf.get("spark.task.cpus", "1") or 1))))
    return total // tasks, f"{source}={format_size(total)} over {tasks} concurrent task(s)"


def max_model_bytes(conf: Mapping[str, str], explicit: int | str | None = None) -> tuple[int | None, str]:
    """Largest checkpoint file an extraction task may load (None: no limit), and why.

    ``explicit`` (the ``--max-model-bytes`` option) wins, then
    ``spark.filterspark.maxModelBytes``; ``0`` means no limit. Otherwise it is derived
    from :func:`python_memory_per_task`: (budget - Python worker) / peak factor.
    """
    for value, source in ((explicit, "--max-model-bytes"), (conf.get(MAX_MODEL_BYTES_CONF), MAX_MODEL_BYTES_CONF)):
        if value not in (None, ""):
            limit = parse_size(value)
            return (limit or None), source
    budget, source = python_memory_per_task(conf)
    if budget is None:
        return None, source
    return max(0, math.floor((budget - PYTHON_WORKER_BYTES) / PEAK_FACTOR)), source


def too_large_reason(file_size: int | None, limit: int | None, source: str) -> str | None:
    """One-line failure reason when a checkpoint exceeds the limit, else None."""
    if limit is None or file_size is None or file_size <= limit:
        return None
    return (
        f"checkpoint too large for the executor: {format_size(file_size)} > {format_size(limit)} "
        f"({source}); extraction needs about {PEAK_FACTOR:g}x the file plus "
        f"{format_size(PYTHON_WORKER_BYTES)} per Python worker, so give executors more memory "
        f"or raise max_model_bytes (--max-model-bytes) / {MAX_MODEL_BYTES_CONF}"
    )
