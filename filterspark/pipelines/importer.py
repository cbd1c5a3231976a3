"""Spark orchestration of the CNN Filter DB import: ``dataset.h5`` -> Delta ``filters``, ``layers``, ``models``.

The driver reads only ``meta`` and the header of ``filters`` (:mod:`filterspark.sources.filterdb_h5`)
and cuts the layers into work units of consecutive rows. Each Spark task opens the HDF5
file itself (a path every executor can read: NFS, Lustre, a FUSE mount such as
``/dbfs/...``), reads its units one layer at a time with h5py and computes the layer's
quality metrics from those weights; a task holds at most one layer in memory and no
filter passes through the driver. The rows reach ``filters`` as extraction's do
(:mod:`filterspark.pipelines.writes`): on a local or shared file system the task writes
them as Parquet files itself and the driver commits all files in one Delta transaction
(the files path); elsewhere (object stores, Spark Connect) they stream as Arrow batches
into one Delta ``replaceWhere`` write, the small per-layer results (metrics, sha256 of
the weights) riding beside them. Then ``layers`` is replaced and ``models`` merged last,
exactly as extraction does, so ``analyze``, ``quality`` and the report work unchanged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from pyspark.sql import SparkSession

from filterspark.delta.capabilities import set_job_description
from filterspark.delta.registry import register_tables
from filterspark.delta.schemas import FILTER_METADATA, KERNELS
from filterspark.delta.tables import ensure_tables, id_predicate, table_detail
from filterspark.delta.warehouse import WarehouseOptions
from filterspark.engine.runner import run_tasks
from filterspark.errors import OptionsError
from filterspark.kernels.quality import LayerQuality, QualityThresholds
from filterspark.kernels.shapes import parse_kernel_sizes
from filterspark.pipelines.model_rows import fingerprint, layer_row, quality_rollup
from filterspark.pipelines.writes import (
    ROW_TABLES, check_write_mode, commit_layers_and_models, commit_task_files, driver_may_rewrite,
    existing_fingerprints, remove_model_rows, stream_filters, write_path,
)
from filterspark.sources.filterdb_h5 import FORMAT_NAME, FilterDB, ImportModel, LayerRange, plan_units

log = logging.getLogger("filterspark.import")

#: Bump when the import's output for the same file changes, so old rows get recomputed.
IMPORTER_VERSION = "1"
#: Default filters per Spark task (~144 MB of float32 read sequentially per task).
DEFAULT_ROWS_PER_TASK = 4_000_000


@dataclass
class ImportOptions(WarehouseOptions):
    """Settings of one import run."""

    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    normalise_tasks: bool = False
    rows_per_task: int = DEFAULT_ROWS_PER_TASK
    force: bool = False
    #: kernel sizes for ``kernels``, parsed as extraction's; dataset.h5 holds 3x3 filters
    #: only, so no selection finds any: an imported model has no ``kernels`` rows
    kernels: str | tuple[int, ...] | None = "all"
    #: how filter rows reach Delta: auto | files | spark, as extraction's (:func:`writes.write_path`)
    write: str = "auto"

    def __post_init__(self) -> None:
        self.kernels = parse_kernel_sizes(self.kernels)
        check_write_mode(self.write)
        if self.rows_per_task < 1:
            raise OptionsError(f"rows_per_task must be at least 1, not {self.rows_per_task}")
        super().__post_init__()

    def settings_json(self) -> str:
        return json.dumps(
            {"v": IMPORTER_VERSION, "thresholds": asdict(self.thresholds), "normalise_tasks": self.normalise_tasks},
            sort_keys=True,
        )


@dataclass
class ImportReport:
    """What one import did, for the console summary, the benchmark and tests."""

    path: str = ""
    models_total: int = 0
    imported: int = 0
    skipped: int = 0
    layers: int = 0
    filters_written: int = 0
    tasks: int = 0
    seconds: float = 0.0
    write_seconds: float = 0.0
    write: str = ""  # files | spark: the path the filter rows took
    write_reason: str = ""  # why the spark path was taken
    warnings: list[str] = field(default_factory=list)

    @property
    def filters_per_second(self) -> float:
        return self.filters_written / self.write_seconds if self.write_seconds > 0 else 0.0

    def lines(self) -> list[str]:
        out = [
            f"file: {self.path}",
            f"models: {self.models_total} in the file, {self.imported} imported, {self.skipped} unchanged",
            f"layers: {self.layers:,}; filters written: {self.filters_written:,} in {self.tasks} task(s)",
            f"wall time: {self.seconds:.1f} s (filters stage {self.write_seconds:.1f} s, "
            f"{self.filters_per_second:,.0f} filters/s)",
        ]
        if self.write:
            out.append(f"filters written by: {self.write}" + (f" ({self.write_reason})" if self.write_reason else ""))
        out += [f"  warning: {w}" for w in self.warnings]
        return out


def _unit_payload(layers: list[LayerRange], by_id: dict[int, ImportModel]) -> str:
    return json.dumps(
        [
            {
                "model_id": l.model_id,
                "layer_index": l.layer_index,
                "start": l.start,
                "stop": l.stop,
                "depth": l.conv_depth,
                "depth_norm": l.conv_depth_norm,
                "meta": [by_id[l.model_id].known.get(c) for c in FILTER_METADATA],
            }
            for l in layers
        ]
    )


def _read_layer(dataset, layer: dict, thresholds: QualityThresholds):
    """One work-unit layer: its weights (float32 ``(n, 9)``) and a function that gives its
    result for the driver (rows, sha256, seconds, quality) once its rows are written."""
    import torch

    from filterspark.kernels.quality import layer_quality
    from filterspark.sources.filterdb_h5 import read_rows

    started = time.perf_counter()
    weights = read_rows(dataset, layer["start"], layer["stop"])
    n = weights.shape[0]
    digest = hashlib.sha256(weights.data).hexdigest()
    quality = layer_quality(torch.from_numpy(weights).reshape(n, 1, 3, 3), thresholds)

    def result() -> dict:
        return {"model_id": layer["model_id"], "layer_index": layer["layer_index"], "n": n, "sha256": digest,
                "seconds": time.perf_counter() - started, "quality": quality.as_dict()}

    return weights, result


def _layer_batches(layer: dict, weights):
    """The ``filters`` rows of one work-unit layer, as Arrow batches."""
    from filterspark.pipelines.extract_task import MAX_BATCH_ROWS, filter_batch

    for s in range(0, weights.shape[0], MAX_BATCH_ROWS):
        yield filter_batch(layer["model_id"], layer["layer_index"], s, weights[s : s + MAX_BATCH_ROWS],
                           layer["meta"], layer["depth"], layer["depth_norm"])


def _unit_batches(dataset, layers: list[dict], thresholds: QualityThresholds, results: list[dict]):
    """The ``filters`` rows of one work unit's layers, one layer in memory at a time; each
    layer's result is appended to ``results`` once its rows are out."""
    for layer in layers:
        weights, result = _read_layer(dataset, layer, thresholds)
        yield from _layer_batches(layer, weights)
        del weights
        results.append(result())


def _import_task(path: str, thresholds: QualityThresholds):
    """The streaming task (see :func:`writes.stream_filters`): work units → their filter
    rows, then per unit the list of its layers' results."""

    def import_partition(payloads):
        from filterspark.sources.filterdb_h5 import open_filters

        h5, dataset = open_filters(path)
        try:
            for payload in payloads:
                results: list[dict] = []
                yield from _unit_batches(dataset, json.loads(payload), thresholds, results)
                yield results
        finally:
            h5.close()

    return import_partition


def _import_file_task(path: str, thresholds: QualityThresholds, root: str, file_tag: str):
    """The files-path task (see :func:`writes.commit_task_files`): one work unit (layers of
    one model, :func:`filterdb_h5.plan_units`) → its layers' results and the ``add``
    actions of the ``filters`` files it wrote into that model's partition."""

    def import_unit(index: int, payload: str):
        from filterspark.delta.parquet_files import write_partition
        from filterspark.sources.filterdb_h5 import open_filters

        layers = json.loads(payload)
        results: list[dict] = []
        h5, dataset = open_filters(path)
        try:
            batches = _unit_batches(dataset, layers, thresholds, results)
            actions = write_partition(root, {"model_id": layers[0]["model_id"]}, batches, f"{index:05d}-{file_tag}")
        finally:
            h5.close()
        yield results, {"filters": actions}

    return import_unit


def _layer_row(layer: LayerRange, dtype: str, quality: dict) -> dict:
    return layer_row(
        layer.model_id, layer.layer_index, layer_name=f"filter_ids {layer.filter_ids}",
        op=None,  # the published file does not say (Conv or ConvTranspose)
        conv_depth=layer.conv_depth, conv_depth_norm=layer.conv_depth_norm, out_channels=None, in_channels=None,
        groups=None, kernel_h=3, kernel_w=3, n_filters=layer.n_filters, dtype=dtype, quality=LayerQuality(**quality),
    )


def _model_row(db: FilterDB, model: ImportModel, results: list[dict], fp: str, thresholds: QualityThresholds) -> dict:
    """The ``models`` row: published metadata, quality roll-up, content checksum."""
    qualities = [LayerQuality(**r["quality"]) for r in results]
    checksum = hashlib.sha256("".join(r["sha256"] for r in results).encode()).hexdigest()
    row = {
        "model_id": model.model_id,
        "name": model.name,
        "path": db.path,
        "format": FORMAT_NAME,
        "checksum": checksum,
        "file_size": db.file_size,
        **model.known,
        "metadata": dict(model.metadata),
        "producer": model.producer,
        "opset": model.opset,
        "conv_layers": len(model.layers),
        "conv_levels": model.conv_levels,
        "kernel_shape_counts": dict(model.kernel_shape_counts) or {"3x3": model.filters_3x3},
        "filters_3x3": model.filters_3x3,
        "total_filters": model.total_filters,
        "share_3x3": model.share_3x3,
        "status": "ok",
        "error": None,
        "device": "cpu",
        "fingerprint": fp,
        "extracted_at": datetime.now(timezone.utc),
        "extraction_seconds": sum(r["seconds"] for r in results),
    }
    row.update(quality_rollup(qualities, thresholds))
    return row


def run_import(spark: SparkSession, db: FilterDB, options: ImportOptions) -> ImportReport:
    """Import every new or changed model of ``db`` into the warehouse's Delta tables."""
    started = time.perf_counter()
    report = ImportReport(path=db.path, models_total=len(db.models), warnings=list(db.warnings))
    tables = ensure_tables(spark, options.tables)
    settings = options.settings_json()

    fps = {m.model_id: fingerprint(FORMAT_NAME, m.name, m.fingerprint_material, settings) for m in db.models}
    known = existing_fingerprints(spark, tables["models"], list(fps))
    todo = [m for m in db.models if options.force or known.get(m.model_id) != fps[m.model_id]]
    report.skipped = len(db.models) - len(todo)
    if not todo:
        report.seconds = time.perf_counter() - started
        return report

    by_id = {m.model_id: m for m in todo}
    units = plan_units((l for m in todo for l in m.layers), options.rows_per_task)
    payloads = [_unit_payload(unit, by_id) for unit in units]

    ids = list(by_id)
    predicate = id_predicate("model_id", ids)
    report.write, report.write_reason, roots = write_path(spark, tables, ROW_TABLES, options.write)
    description = f"filterspark: import {len(todo)} models from {db.path}"
    set_job_description(spark, description)
    write_started = time.perf_counter()
    if report.write == "files":
        # the tasks write filters; the kernels commit removes any k x k rows these ids had
        run = lambda file_tag: run_tasks(  # noqa: E731
            spark, payloads, _import_file_task(db.path, options.thresholds, roots["filters"], file_tag), description,
        )
        unit_results = commit_task_files(spark, run, tables, roots, ids)
    else:
        # Each import task writes one model partition at a time: one open file per task.
        unit_results = stream_filters(spark, payloads, _import_task(db.path, options.thresholds), tables["filters"],
                                      predicate, concurrent_writers=2)
        if table_detail(spark, tables["kernels"]).get("numFiles") != 0:
            # a re-imported (or formerly extracted) model id keeps no k x k rows of before
            remove_model_rows(spark, tables["kernels"], KERNELS, predicate, "write kernels")
    report.write_seconds = time.perf_counter() - write_started

    # A retried task re-sends its results: keep one per layer.
    results: dict[tuple[int, int], dict] = {}
    for r in (r for unit in unit_results for r in unit):
        results[(r["model_id"], r["layer_index"])] = r
    missing = [l for m in todo for l in m.layers if (l.model_id, l.layer_index) not in results]
    if missing:
        raise RuntimeError(f"no import result for {len(missing)} layers, e.g. filter_ids {missing[0].filter_ids}")
    wrong = [l for m in todo for l in m.layers if results[(l.model_id, l.layer_index)]["n"] != l.n_filters]
    if wrong:
        raise RuntimeError(f"{len(wrong)} layers read a different number of rows than planned, e.g. {wrong[0].filter_ids}")

    set_job_description(spark, "filterspark: write layers and models")
    layer_rows, model_rows = [], []
    for m in todo:
        mine = [results[(l.model_id, l.layer_index)] for l in m.layers]
        layer_rows += [_layer_row(l, db.filters.dtype, r["quality"]) for l, r in zip(m.layers, mine)]
        model_rows.append(_model_row(db, m, mine, fps[m.model_id], options.thresholds))
    direct = driver_may_rewrite(spark, tables, report.write)
    commit_layers_and_models(spark, tables["layers"], tables["models"], layer_rows, model_rows, ids, direct)
    register_tables(spark, options.tables)

    report.imported = len(todo)
    report.layers = len(layer_rows)
    report.filters_written = sum(m.filters_3x3 for m in todo)
    report.tasks = len(units)
    report.seconds = time.perf_counter() - started
    return report

