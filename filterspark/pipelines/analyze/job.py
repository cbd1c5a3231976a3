"""One analysis run: ``filters`` → PCA basis, grouped histograms, shifts, as Delta tables.

Only aggregates reach the driver. Three scans (:mod:`filterspark.engine.scans`: Spark tasks
read the Delta snapshot's Parquet files with pyarrow, or a DataFrame through
``mapInArrow`` when the scope needs filter-level columns), each a numpy function per task
(:mod:`.tasks`), their partial results merged on the driver:

1. the scaled filters' moments (9 sums + 45 products, float64, about a per-task
   provisional mean, merged exactly) → :func:`kernels.pca.pca_from_moments`;
2. the min/max coefficient → the shared histogram range;
3. a :class:`kernels.coefficients.PartitionAccumulator` for all dimensions at once (plus
   the whole scope and each model); the driver computes histograms, stats and shift
   matrices (:mod:`.rows`).

Each table gets one Delta append per run (its new ``run_id``); ``analysis_runs`` is
written last, so the ``<table>_latest`` views only ever show complete runs.
"""
from __future__ import annotations

import datetime as _dt
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from pyspark.sql import DataFrame, SparkSession

from filterspark.delta.registry import register_tables, registered_warehouse
from filterspark.delta.schemas import ANALYSIS_TABLES, WEIGHT_COLUMNS
from filterspark.delta.tables import append_rows, ensure_table, rows_frame
from filterspark.engine.phases import Phases
from filterspark.kernels import coefficients as co
from filterspark.kernels.pca import pca_from_moments, provisional_reference
from filterspark.kernels.shifts import combine_ranges
from filterspark.pipelines.analyze.inputs import analysis_input, plan_scan, resolve_dimensions
from filterspark.pipelines.analyze.options import ALL, AnalyzeOptions, AnalyzeReport, DEPTH_DIMENSION
from filterspark.pipelines.analyze.rows import basis_rows, extremes, histogram_table, model_shift_rows, run_fields, shift_rows, stats_rows, with_run, without_run
from filterspark.pipelines.analyze.tasks import GroupLabels, coefficient_task, partials_task, range_task, scan_moments


# --- the job -----------------------------------------------------------------------------------


def _registered(spark: SparkSession, options: AnalyzeOptions, tables: list[str]) -> bool:
    """Whether the names already point at this warehouse and every table written has its
    ``_latest`` view (registration re-reads every table's log: seconds, so skipped)."""
    wh = options.tables
    if wh.managed:
        return all(spark.catalog.tableExists(f"{wh.catalog}.{wh.database}.{t}_latest") for t in tables)
    return registered_warehouse(spark, wh.database) == wh.uri and all(
        spark.catalog.tableExists(f"{wh.database}.{t}_latest") for t in tables
    )


def new_run(scope: str) -> dict:
    """Run identity: ``run_id`` sorts by start time (UTC, microseconds) then a random suffix."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return {"run_id": now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3), "scope": scope, "run_at": now}


def run_analysis(spark: SparkSession, options: AnalyzeOptions) -> AnalyzeReport:
    """Analyse the warehouse's filters and write the analysis tables (one run)."""
    started = time.perf_counter()
    run = new_run(options.scope)
    report = AnalyzeReport(run_id=run["run_id"], scope=run["scope"], min_group_filters=options.min_filters)
    phase = Phases(spark, report.phases, "filterspark analyze")

    joined, models = analysis_input(spark, options)
    dims = resolve_dimensions(models, options.by)
    names = list(dims)
    report.dimensions = names
    n = len(names)  # label columns: _g0.._g{n-1} dimensions, _g{n} "all", _g{n+1} the model

    model_level = [i for i, name in enumerate(names) if name != DEPTH_DIMENSION]
    exprs = list(dims.values())
    label_rows = models.select("model_id", "name", *[exprs[i].alias(names[i]) for i in model_level]).collect()
    model_labels = {r["model_id"]: r.asDict() for r in label_rows}
    scan = plan_scan(spark, options, joined, models, set(model_labels))
    report.scan = scan.mode if scan.mode == "files" else f"spark ({scan.reason})"
    labels = GroupLabels(tuple(names), {m: tuple(r[names[i]] for i in model_level) for m, r in model_labels.items()})
    phase("plan", "moments")

    m = scan_moments(scan)
    basis = pca_from_moments(m)
    ref = provisional_reference(basis.mean[None, :])
    report.basis, report.n_filters = basis, m.n
    phase("pca", "coefficient range")

    lo, hi = combine_ranges(scan.map(range_task(basis), "coefficient range"))
    report.range = (lo, hi)
    phase("range", f"histograms for {n} dimensions")

    acc = scan.reduce(partials_task(basis, lo, hi, options.bins, ref, labels), co.PartitionAccumulator.merge,
                      f"histograms for {n} dimensions")
    groups = acc.summaries() if acc is not None else {}
    all_names = names + [ALL]
    public = {k: g for k, g in groups.items() if k[0] <= n}
    per_model = {int(label): g for (d, label), g in groups.items() if d == n + 1}
    report.n_models = len(per_model)
    for (d, label), g in public.items():
        report.groups.setdefault(all_names[d], {})[label] = g.n
    phase("histograms", "shifts")

    small, evr = options.min_filters, basis.explained_variance_ratio
    shifts = shift_rows(run, {k: g for k, g in public.items() if k[0] < n}, names, evr, lo, hi, small)
    model_rows = model_shift_rows(run, per_model, public, model_labels, names, model_level, evr, lo, hi, small)
    report.extremes = extremes(shifts)
    phase("shifts", "write tables")

    from filterspark.delta import schemas as S


    def write(name: str, df: DataFrame) -> None:
        table = ensure_table(spark, options.tables, name=name, schema=ANALYSIS_TABLES[name])
        # An append: the run id is new, so no earlier row can match it. (A replaceWhere on
        # the non-partition run_id costs a delete scan: ~10x an append, measured.)
        append_rows(df, table, f"write {name}")
        report.tables.append(name)

    hist = spark.createDataFrame(
        histogram_table(public, all_names, lo, hi, options.bins, small), schema=without_run(S.COEFFICIENT_HISTOGRAMS)
    )
    frames = {
        "pca_basis": rows_frame(spark, basis_rows(run, basis), S.PCA_BASIS),
        "coefficient_histograms": with_run(hist, run, S.COEFFICIENT_HISTOGRAMS),
        "coefficient_stats": rows_frame(spark, stats_rows(run, public, all_names, basis, lo, hi, small), S.COEFFICIENT_STATS),
        "shifts": rows_frame(spark, shifts, S.SHIFTS),
        "model_shifts": rows_frame(spark, model_rows, S.MODEL_SHIFTS),
    }
    if options.write_coefficients:
        coeffs = joined.select("model_id", "layer_index", "filter_index", *WEIGHT_COLUMNS).mapInArrow(
            coefficient_task(basis), without_run(S.COEFFICIENTS)
        )
        frames["coefficients"] = with_run(coeffs, run, S.COEFFICIENTS)
    # Independent tables: commit them concurrently (Delta commits are mostly latency).
    with ThreadPoolExecutor(max_workers=len(frames)) as pool:
        for future in [pool.submit(write, name, df) for name, df in frames.items()]:
            future.result()
    phase("write")

    report.seconds = time.perf_counter() - started
    summary = {
        **run_fields(run), "finished_at": _dt.datetime.now(_dt.timezone.utc), "seconds": report.seconds,
        "dimensions": names, "bins": options.bins, "min_group_filters": small, "n_filters": m.n,
        "n_models": report.n_models, "range_lo": lo, "range_hi": hi,
        "explained_variance_ratio": [float(v) for v in evr], "write_coefficients": options.write_coefficients,
    }
    write("analysis_runs", rows_frame(spark, [summary], S.ANALYSIS_RUNS))
    if not _registered(spark, options, report.tables):
        register_tables(spark, options.tables)
    phase("write")
    report.seconds = time.perf_counter() - started
    return report
