"""Spark orchestration of extraction: catalog → executors → Delta ``filters``, ``layers``, ``models``.

Stage 1 (executors): checksum every catalog file; the driver keeps only models whose
fingerprint (checksum + catalog row + settings) changed, so re-running a catalog
commits nothing. Stage 2 (executors, one model per task by default, on the task's GPU
when Spark assigned one): load the model, stream its filter rows as Arrow batches into
one Delta commit that replaces exactly those models' rows; the small per-model and
per-layer summaries travel back through an accumulator. Then ``layers`` is replaced
and ``models`` merged, last, as the commit record.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

from pyspark.accumulators import AccumulatorParam
from pyspark.sql import SparkSession

from .catalog import CatalogEntry
from .devices import CPU, STAGE, GpuPlan, max_model_bytes, plan_gpus, too_large_reason
from .quality import QualityThresholds
from .schemas import FILTERS, LAYERS, MODELS
from .session import DEFAULT_DATABASE, register_tables
from .tables import ensure_tables, id_predicate, replace_rows, rows_frame, upsert_rows

log = logging.getLogger("filterspark.extract")

#: Bump when extraction output for the same file changes, so old rows get recomputed.
EXTRACTOR_VERSION = "1"


class ListAccumulator(AccumulatorParam):
    """Accumulates lists by concatenation (per-model summaries from tasks)."""

    def zero(self, value):
        return []

    def addInPlace(self, a, b):
        a.extend(b)
        return a


@dataclass
class ExtractOptions:
    """Settings of one extraction run."""

    warehouse: str
    database: str = DEFAULT_DATABASE
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    models_per_task: int = 1
    #: GPUs per extraction task; None: one when executors have GPUs (see devices.plan_gpus)
    gpus_per_task: float | None = None
    force: bool = False
    #: largest checkpoint a task loads; None: from the Spark conf (devices.max_model_bytes); 0: no limit
    max_model_bytes: int | str | None = None

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
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)
    gpu_plan: str = ""

    def lines(self) -> list[str]:
        out = [
            f"models: {self.models_total} in catalog, {self.extracted} extracted "
            f"({self.ok} ok, {self.failed} failed), {self.skipped} unchanged",
            f"filters written: {self.filters_written:,}",
            f"wall time: {self.seconds:.1f} s",
        ]
        if self.gpu_plan:
            out.append(self.gpu_plan)
        out += [f"  failed: {name}: {reason}" for name, reason in self.failures]
        return out


def fingerprint(entry: CatalogEntry, checksum: str | None, settings_json: str) -> str:
    """Identity of everything that determines a model's rows."""
    material = "\n".join([checksum or "<no file>", entry.fingerprint_material(), settings_json])
    return hashlib.sha256(material.encode()).hexdigest()


def _existing_fingerprints(spark: SparkSession, models_path: str, ids: list[int]) -> dict[int, str]:
    df = spark.read.format("delta").load(models_path).where(id_predicate("model_id", ids))
    return {r.model_id: r.fingerprint for r in df.select("model_id", "fingerprint").collect()}


def _checksums(spark: SparkSession, entries: list[CatalogEntry]) -> dict[str, dict]:
    """Stage 1: executors checksum the files (they, not the driver, see the model storage)."""
    from .extraction import checksum_or_error

    pairs = [(e.name, e.path) for e in entries]
    slices = max(1, min(len(pairs), spark.sparkContext.defaultParallelism * 2))
    spark.sparkContext.setJobDescription("filterspark: checksum model files")
    rdd = spark.sparkContext.parallelize(pairs, slices)
    return dict(rdd.map(lambda p: (p[0], checksum_or_error(p[1]))).collect())


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

    The profile is registered up front (``withResources`` on an empty RDD runs no job),
    so a cluster manager without stage-level scheduling degrades to the CPU with a
    warning instead of failing the write.
    """
    plan = plan_gpus(conf, requested)
    if plan.mode != STAGE:
        return plan, None
    profile = extraction_profile(plan.gpus_per_task)
    try:
        spark.sparkContext.emptyRDD().withResources(profile)
    except Exception as err:  # noqa: BLE001 - Py4J wraps Spark's refusal
        reason = next((l for l in str(err).splitlines() if "Exception:" in l), str(err).splitlines()[0])
        log.warning(
            "stage-level scheduling is unavailable (%s); extracting on the CPU. To give every task a GPU "
            "instead, set spark.task.resource.gpu.amount (conf/gpu-cluster.conf)", reason.strip()
        )
        return GpuPlan(CPU, 0.0, "stage-level scheduling unavailable; set spark.task.resource.gpu.amount"), None
    return plan, profile


#: Test hook: seconds each extraction task sleeps before every model (set through
#: ``spark.executorEnv.FILTERSPARK_TEST_TASK_DELAY_S``), so tests can act mid-stage.
TEST_DELAY_ENV = "FILTERSPARK_TEST_TASK_DELAY_S"


def _make_task(accumulator, thresholds: QualityThresholds):
    """The mapInArrow function: one input row per model → its filter rows."""

    def extract_partition(batches):
        from .devices import task_device
        from .extraction import extract_model

        device, note = task_device()
        delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
        for batch in batches:
            for payload in batch.column(0).to_pylist():
                job = json.loads(payload)
                entry = CatalogEntry.from_dict(job["entry"])
                if delay:
                    time.sleep(delay)
                result = extract_model(entry, device=device, thresholds=thresholds, checksum=job["checksum"])
                result.summary["fingerprint"] = job["fingerprint"]
                result.summary["device_note"] = note
                yield from result.filter_batches()
                accumulator.add([(result.summary, result.layers)])
                result.loaded = None  # free the weights before the next model

    return extract_partition


def run_extraction(spark: SparkSession, entries: list[CatalogEntry], options: ExtractOptions) -> ExtractReport:
    """Extract every new or changed catalog model into the warehouse's Delta tables."""
    started = time.perf_counter()
    report = ExtractReport(models_total=len(entries))
    paths = ensure_tables(spark, options.warehouse, options.database)
    settings = options.settings_json()

    checks = _checksums(spark, entries)
    known = _existing_fingerprints(spark, paths["models"], [e.model_id for e in entries])
    todo = []
    for entry in entries:
        fp = fingerprint(entry, checks[entry.name]["checksum"], settings)
        if options.force or known.get(entry.model_id) != fp:
            todo.append((entry, fp))
    report.skipped = len(entries) - len(todo)
    if not todo:
        report.seconds = time.perf_counter() - started
        return report

    conf = dict(spark.sparkContext.getConf().getAll())
    plan, profile = _gpu_scheduling(spark, conf, options.gpus_per_task)
    report.gpu_plan = plan.line()
    log.info(report.gpu_plan)
    # A checkpoint the executors cannot hold fails alone, before any task loads it. Its
    # row keeps no fingerprint, so the next run (with more memory) tries it again.
    limit, limit_source = max_model_bytes(conf, options.max_model_bytes)
    results: dict[int, tuple[dict, list[dict]]] = {}
    runnable = []
    for entry, fp in todo:
        reason = too_large_reason(checks[entry.name]["file_size"], limit, limit_source)
        if reason:
            from .extraction import failed_summary  # torch: imported only when needed

            file_fields = {k: checks[entry.name][k] for k in ("checksum", "file_size")}
            results[entry.model_id] = (failed_summary(entry, reason, **file_fields), [])
        else:
            runnable.append((entry, fp))

    # Largest files first, so one big model does not start last and stretch the stage.
    runnable.sort(key=lambda t: -(checks[t[0].name]["file_size"] or 0))
    payloads = [
        (json.dumps({"entry": e.to_dict(), "fingerprint": fp, "checksum": checks[e.name]}),) for e, fp in runnable
    ]
    slices = max(1, math.ceil(len(payloads) / max(1, options.models_per_task)))
    sc = spark.sparkContext
    accumulator = sc.accumulator([], ListAccumulator())
    jobs = spark.createDataFrame(sc.parallelize(payloads, slices), "job string")
    task = _make_task(accumulator, options.thresholds)
    filters = jobs.mapInArrow(task, FILTERS, profile=profile) if profile else jobs.mapInArrow(task, FILTERS)

    ids = [e.model_id for e, _ in todo]
    predicate = id_predicate("model_id", ids)
    sc.setJobDescription(f"filterspark: extract {len(todo)} models")
    replace_rows(filters, paths["filters"], predicate, "write filters")

    # A retried write (conflict or lost executor) re-runs tasks: keep one result per model.
    for summary, layers in accumulator.value:
        results[summary["model_id"]] = (summary, layers)
    missing = [e for e, _ in todo if e.model_id not in results]
    if missing:
        raise RuntimeError(f"no extraction result for {len(missing)} models, e.g. {missing[0].name}")

    sc.setJobDescription("filterspark: write layers and models")
    layer_rows = [row for _, layers in results.values() for row in layers]
    replace_rows(rows_frame(spark, layer_rows, LAYERS), paths["layers"], predicate, "write layers")
    summaries = [summary for summary, _ in results.values()]
    upsert_rows(spark, rows_frame(spark, summaries, MODELS), paths["models"], ["model_id"], "write models")
    register_tables(spark, options.warehouse, options.database)

    report.extracted = len(summaries)
    for s in summaries:
        report.devices[s["name"]] = s.get("device")
        if s["status"] == "ok":
            report.ok += 1
            report.filters_written += s.get("filters_3x3") or 0
        else:
            report.failed += 1
            report.failures.append((s["name"], s.get("error") or ""))
    report.seconds = time.perf_counter() - started
    return report
