"""Spark orchestration of extraction: catalog → executors → Delta ``filters``, ``layers``, ``models``.

Stage 1 (executors): checksum every catalog file; the driver keeps only models whose
fingerprint (checksum + catalog row + settings) changed, so re-running a catalog
commits nothing. Stage 2 (executors, one model per task by default, on the task's GPU
when Spark assigned one): load the model and compute its layer metrics, then write its
filter rows, one of two ways:

* **files** (the fast path, for tables on a local or shared file system): each task
  writes its models' rows as Parquet files into their ``model_id=`` partition
  directories with pyarrow (:mod:`filter_files`) and returns the files' Delta ``add``
  actions; the driver commits them all in one Delta transaction that also removes
  those models' previous files (:func:`delta_files.replace_files`). No row passes
  through the JVM.
* **spark**: tasks stream Arrow batches through ``mapInArrow`` into one Delta
  ``replaceWhere`` write (tables on object stores, or with Delta features that plain
  Parquet files cannot satisfy; ``--write spark`` forces it).

Either way the filters commit is one transaction for all models of the run; then
``layers`` is replaced and ``models`` merged, last, as the commit record.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field

from pyspark.sql import SparkSession

from filterspark.delta import jvm
from filterspark.delta.capabilities import default_parallelism, session_conf
from filterspark.delta.registry import register_tables
from filterspark.delta.schemas import KERNELS
from filterspark.delta.tables import ensure_tables, id_predicate, table_detail
from filterspark.delta.warehouse import TableRef, WarehouseOptions
from filterspark.engine.phases import Phases
from filterspark.engine.resources import CPU, STAGE, GpuPlan, max_model_bytes, plan_gpus, too_large_reason
from filterspark.engine.runner import run_tasks
from filterspark.errors import OptionsError
from filterspark.kernels.balance import balanced_groups
from filterspark.kernels.quality import QualityThresholds
from filterspark.kernels.shapes import parse_kernel_sizes, selected_sizes
from filterspark.pipelines.model_rows import fingerprint, kernels_material
from filterspark.pipelines.writes import (
    ROW_TABLES, check_write_mode, commit_layers_and_models, commit_task_files, driver_may_rewrite,
    existing_fingerprints, remove_model_rows, stream_filters, stream_rows, write_path,
)
from filterspark.sources.catalog import CatalogEntry

log = logging.getLogger("filterspark.extract")

#: Bump when extraction output for the same file changes, so old rows get recomputed.
EXTRACTOR_VERSION = "2"  # 2: ONNX weights folded from constants, If/Loop bodies, graph-input convs listed


@dataclass
class ExtractOptions(WarehouseOptions):
    """Settings of one extraction run."""

    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    #: catalog rows per Spark task; None: about four tasks per core (see plan_tasks)
    models_per_task: int | None = None
    #: GPUs per extraction task; None: one when executors have GPUs (see devices.plan_gpus)
    gpus_per_task: float | None = None
    force: bool = False
    #: largest checkpoint a task loads; None: from the Spark conf (devices.max_model_bytes); 0: no limit
    max_model_bytes: int | str | None = None
    #: how filter rows reach Delta: auto | files | spark (see the module docstring)
    write: str = "auto"
    #: square kernel sizes (k != 3) written to ``kernels``: "all", "none", "5,7" or ints
    #: (:func:`kernels.shapes.parse_kernel_sizes`); parsed to a sorted tuple
    kernels: str | tuple[int, ...] | None = "all"

    def __post_init__(self) -> None:
        self.kernels = parse_kernel_sizes(self.kernels)
        check_write_mode(self.write)
        if self.models_per_task is not None and self.models_per_task < 1:
            raise OptionsError(f"models_per_task must be at least 1, not {self.models_per_task}")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise OptionsError(f"gpus_per_task must be >= 0, not {self.gpus_per_task}")
        super().__post_init__()

    def settings_json(self) -> str:
        return json.dumps({"v": EXTRACTOR_VERSION, "thresholds": asdict(self.thresholds)}, sort_keys=True)


@dataclass
class ExtractReport:
    """What one run did, for the console summary and tests."""

    models_total: int = 0
    extracted: int = 0
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    filters_written: int = 0
    kernels_written: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)
    gpu_plan: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per phase
    write: str = ""  # files | spark: the path the filter rows took
    write_reason: str = ""  # why the spark path was taken

    def lines(self) -> list[str]:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items())
        out = [
            f"models: {self.models_total} in catalog, {self.extracted} extracted "
            f"({self.ok} ok, {self.failed} failed), {self.skipped} unchanged",
            f"filters written: {self.filters_written:,}, kernels written: {self.kernels_written:,}",
            f"wall time: {self.seconds:.1f} s" + (f" ({phases})" if phases else ""),
        ]
        if self.gpu_plan:
            out.append(self.gpu_plan)
        if self.write:
            out.append(f"filters written by: {self.write}" + (f" ({self.write_reason})" if self.write_reason else ""))
        out += [f"  failed: {name}: {reason}" for name, reason in self.failures]
        return out


def _checksum_task(_: int, pairs: list[tuple[str, str]]):
    from filterspark.pipelines.extract_task import checksum_or_error

    return [(name, checksum_or_error(path)) for name, path in pairs]


def _checksums(spark: SparkSession, entries: list[CatalogEntry], parallelism: int) -> dict[str, dict]:
    """Stage 1: executors checksum the files (they, not the driver, see the model storage)."""
    pairs = [(e.name, e.path) for e in entries]
    slices = max(1, min(len(pairs), parallelism * 2))
    chunks = [pairs[i::slices] for i in range(slices)]
    return dict(run_tasks(spark, chunks, _checksum_task, "filterspark: checksum model files"))


def extraction_profile(gpus_per_task: float):
    """Task-level ResourceProfile asking ``gpus_per_task`` GPUs per extraction task (or None).

    Task-level (no executor requests): with dynamic allocation off, Spark 4 accepts it on
    standalone (and local-cluster), YARN and Kubernetes and runs it on the default
    executors; ``local[N]`` refuses it, and profiles with executor requests would need
    dynamic allocation.
    """
    if gpus_per_task <= 0:
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    requests = TaskResourceRequests().cpus(1).resource("gpu", gpus_per_task)
    return ResourceProfileBuilder().require(requests).build


def _gpu_scheduling(spark: SparkSession, conf: dict[str, str], requested: float | None) -> tuple[GpuPlan, object]:
    """The GPU plan and the extraction stage's profile, falling back when Spark refuses it.

    The profile is tried up front on a one-row ``mapInArrow`` with no task work, so a
    cluster manager without stage-level scheduling degrades to the CPU with a warning
    instead of failing the write.
    """
    plan = plan_gpus(conf, requested)
    if plan.mode != STAGE:
        return plan, None
    profile = extraction_profile(plan.gpus_per_task)
    refusal = _profile_refusal(spark, profile)
    if refusal:
        reason = refusal
        log.warning(
            "stage-level scheduling is unavailable (%s); extracting on the CPU. To give every task a GPU "
            "instead, set spark.task.resource.gpu.amount (conf/gpu-cluster.conf)", reason.strip()
        )
        return GpuPlan(CPU, 0.0, "stage-level scheduling unavailable; set spark.task.resource.gpu.amount"), None
    return plan, profile


def _profile_refusal(spark: SparkSession, profile) -> str | None:
    """None when Spark schedules a stage with ``profile``, else its refusal (one line).
    Spark refuses a profile when the stage is planned, so an empty stage is enough."""
    def nothing(batches):
        return iter(())

    try:
        spark.range(0, 0, 1, 1).mapInArrow(nothing, "id long", profile=profile).collect()
        return None
    except jvm.spark_errors() as err:
        text = str(err)
        if "ResourceProfile" not in text and "resource profile" not in text.lower():  # a real failure
            raise
        return next((line for line in text.splitlines() if "supported" in line or "Exception" in line),
                    text.splitlines()[0]).strip()


#: Test hook: seconds each extraction task sleeps before every model (set through
#: ``spark.executorEnv.FILTERSPARK_TEST_TASK_DELAY_S``), so tests can act mid-stage.
TEST_DELAY_ENV = "FILTERSPARK_TEST_TASK_DELAY_S"


#: Extraction tasks per core when ``models_per_task`` is not set: enough to balance
#: uneven models, few enough that per-task overhead (~0.1 s) stays small.
TASKS_PER_CORE = 4


def plan_tasks(jobs: list[tuple[str, int | None]], cores: int, models_per_task: int | None = None) -> list[list[str]]:
    """Group ``(payload, file size)`` jobs into tasks: ``len(jobs) / models_per_task`` tasks, or about
    :data:`TASKS_PER_CORE` tasks per core; largest file first onto the lightest task, so
    tasks carry similar bytes and one big model does not start last."""
    if not jobs:
        return []
    if models_per_task:
        n_tasks = -(-len(jobs) // max(1, models_per_task))
    else:
        n_tasks = min(len(jobs), max(1, cores) * TASKS_PER_CORE)
    return balanced_groups([(payload, size or 0) for payload, size in jobs], n_tasks)


def _extract_job(payload: str, device, note: str, thresholds: QualityThresholds, delay: float):
    """One model of a task: the payload built by the driver → its ``ModelExtraction``. Its
    fingerprint adds the kernel sizes it holds of the selection (known once it is loaded)."""
    from filterspark.pipelines.extract_task import extract_model

    job = json.loads(payload)
    entry = CatalogEntry.from_dict(job["entry"])
    if delay:
        time.sleep(delay)
    result = extract_model(entry, device=device, thresholds=thresholds, checksum=job["checksum"])
    counts = result.summary.get("kernel_shape_counts")
    result.summary["fingerprint"] = fingerprint(*job["material"], *kernels_material(tuple(job["kernels"]), counts))
    result.summary["device_note"] = note
    result.summary["kernels_written"] = sum(
        counts[f"{k}x{k}"] for k in selected_sizes(tuple(job["kernels"]), counts)
    ) if result.loaded is not None else 0
    return result


def _task_extractions(groups, thresholds: QualityThresholds):
    """The models of a task's groups (JSON lists of payloads), extracted one after the other
    on the task's device."""
    from filterspark.engine.resources import task_device

    device, note = task_device()
    delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
    for payload in (p for group in groups for p in json.loads(group)):
        yield _extract_job(payload, device, note, thresholds, delay)


def _streaming_task(thresholds: QualityThresholds):
    """The spark path's task: its task groups → each model's filter batches, then its
    ``(summary, layer rows)`` (see :func:`writes.stream_filters`)."""

    def run(groups):
        for result in _task_extractions(groups, thresholds):
            yield from result.filter_batches()
            yield result.summary, result.layers
            result.loaded = None  # free the weights before the next model

    return run


def _kernel_streaming_task(thresholds: QualityThresholds, sizes: tuple[int, ...]):
    """The spark path's second pass: its task groups → each model's ``kernels`` batches."""

    def run(groups):
        for result in _task_extractions(groups, thresholds):
            yield from result.kernel_batches(sizes)
            result.loaded = None

    return run


def _file_task(thresholds: QualityThresholds, sizes: tuple[int, ...], roots: dict[str, str], file_tag: str):
    """The task of the files path: payloads → ``((summary, layer rows), add actions by
    table)`` per model, its ``filters`` and ``kernels`` rows written as Parquet files into
    the model's partition directory of each table."""

    def extract_partition(index: int, group: str):
        from filterspark.delta.parquet_files import write_partition

        for result in _task_extractions([group], thresholds):
            partition = {"model_id": result.summary["model_id"]}
            batches = {"filters": result.filter_batches(), "kernels": result.kernel_batches(sizes)}
            actions = {name: write_partition(roots[name], partition, batches[name], f"{index:05d}-{file_tag}")
                       for name in ROW_TABLES}
            result.loaded = None
            yield (result.summary, result.layers), actions

    return extract_partition


def _write_rows_as_files(
    spark, groups: list[str], profile, options, roots: dict[str, str], tables: dict[str, TableRef], ids,
    phase: Phases,
) -> list[tuple[dict, list]]:
    """The files path (:func:`writes.commit_task_files`): ``filters``, then ``kernels``."""
    run = lambda file_tag: run_tasks(  # noqa: E731
        spark, groups, _file_task(options.thresholds, options.kernels, roots, file_tag), "filterspark: extract models",
        profile,
    )
    return commit_task_files(spark, run, tables, roots, ids, phase)


def _stream_kernels(spark, payloads: dict[int, tuple[str, int | None]], extracted, options, parallelism: int,
                    profile, table: TableRef, predicate: str) -> None:
    """The spark path's ``kernels`` write: a second pass over the models whose first pass
    found selected k x k layers, one ``replaceWhere`` commit (which also removes the
    rows of the other re-extracted models)."""
    wanted = {s["model_id"] for s, _ in extracted if s.get("kernels_written")}
    mine = [payloads[i] for i in sorted(wanted) if i in payloads]
    if not mine:
        if table_detail(spark, table).get("numFiles") != 0:
            remove_model_rows(spark, table, KERNELS, predicate, "write kernels")
        return
    groups = [json.dumps(g) for g in plan_tasks(mine, parallelism, options.models_per_task)]
    writers = 1 + max(len(json.loads(g)) for g in groups)
    stream_rows(spark, groups, _kernel_streaming_task(options.thresholds, options.kernels), table, KERNELS,
                predicate, profile, concurrent_writers=writers)


def run_extraction(spark: SparkSession, entries: list[CatalogEntry], options: ExtractOptions) -> ExtractReport:
    """Extract every new or changed catalog model into the warehouse's Delta tables."""
    started = time.perf_counter()
    report = ExtractReport(models_total=len(entries))
    phase = Phases(spark, report.phases, "filterspark")
    tables = ensure_tables(spark, options.tables)
    settings = options.settings_json()
    conf = session_conf(spark)
    parallelism = default_parallelism(spark, conf)
    phase("tables", "checksum model files")

    checks = _checksums(spark, entries, parallelism)
    phase("checksums", "compare fingerprints")
    known = existing_fingerprints(spark, tables["models"], [e.model_id for e in entries], shapes=True)
    todo = []
    for entry in entries:
        material = [checks[entry.name]["checksum"] or "<no file>", entry.fingerprint_material(), settings]
        stored, stored_shapes = known.get(entry.model_id, (None, None))
        # an unchanged file keeps its kernel shapes: the sizes of the selection it holds
        if options.force or stored != fingerprint(*material, *kernels_material(options.kernels, stored_shapes)):
            todo.append((entry, material))
    report.skipped = len(entries) - len(todo)
    if not todo:
        report.seconds = time.perf_counter() - started
        return report

    plan, profile = _gpu_scheduling(spark, conf, options.gpus_per_task)
    report.gpu_plan = plan.line()
    log.info(report.gpu_plan)
    # A checkpoint the executors cannot hold fails alone, before any task loads it. Its
    # row keeps no fingerprint, so the next run (with more memory) tries it again.
    limit, limit_source = max_model_bytes(conf, options.max_model_bytes)
    results: dict[int, tuple[dict, list[dict]]] = {}
    runnable = []
    for entry, material in todo:
        reason = too_large_reason(checks[entry.name]["file_size"], limit, limit_source)
        if reason:
            from filterspark.pipelines.extract_task import failed_summary  # torch: imported only when needed

            file_fields = {k: checks[entry.name][k] for k in ("checksum", "file_size")}
            results[entry.model_id] = (failed_summary(entry, reason, **file_fields), [])
        else:
            runnable.append((entry, material))

    payloads = [
        (json.dumps({"entry": e.to_dict(), "material": material, "kernels": list(options.kernels),
                     "checksum": checks[e.name]}), checks[e.name]["file_size"])
        for e, material in runnable
    ]
    groups = [json.dumps(g) for g in plan_tasks(payloads, parallelism, options.models_per_task)]
    ids = [e.model_id for e, _ in todo]
    predicate = id_predicate("model_id", ids)
    report.write, report.write_reason, roots = write_path(spark, tables, ROW_TABLES, options.write)
    phase("plan", f"extract {len(todo)} models")
    if report.write == "files":
        extracted = _write_rows_as_files(spark, groups, profile, options, roots, tables, ids, phase)
        phase("commit rows", "write layers")
    else:
        writers = 1 + max(len(json.loads(g)) for g in groups) if groups else 2  # the most models (partitions) of a task
        extracted = stream_filters(spark, groups, _streaming_task(options.thresholds), tables["filters"], predicate,
                                   profile, concurrent_writers=writers)
        phase("extract", "write kernels")
        by_model = {e.model_id: payload for (e, _), payload in zip(runnable, payloads)}
        _stream_kernels(spark, by_model, extracted, options, parallelism, profile, tables["kernels"],
                        predicate)
        phase("kernels", "write layers")

    # A retried write (conflict or lost executor) re-runs tasks: keep one result per model.
    for summary, layers in extracted:
        results[summary["model_id"]] = (summary, layers)
    missing = [e for e, _ in todo if e.model_id not in results]
    if missing:
        raise RuntimeError(f"no extraction result for {len(missing)} models, e.g. {missing[0].name}")

    direct = driver_may_rewrite(spark, tables, report.write)
    layer_rows = [row for _, layers in results.values() for row in layers]
    summaries = [summary for summary, _ in results.values()]
    commit_layers_and_models(spark, tables["layers"], tables["models"], layer_rows, summaries, ids, direct, phase)
    phase("models", "register tables")
    register_tables(spark, options.tables)
    phase("register")

    report.extracted = len(summaries)
    for s in summaries:
        report.devices[s["name"]] = s.get("device")
        if s["status"] == "ok":
            report.ok += 1
            report.filters_written += s.get("filters_3x3") or 0
            report.kernels_written += s.get("kernels_written") or 0
        else:
            report.failed += 1
            report.failures.append((s["name"], s.get("error") or ""))
    report.seconds = time.perf_counter() - started
    return report
