"""One analysis run: ``filters`` (3x3; ``--kernel KxK``: the ``kernels`` rows of that k)
→ PCA basis, grouped histograms, shifts, as Delta tables.

Only aggregates reach the driver. Three scans (:mod:`filterspark.engine.scans`: Spark tasks
read the Delta snapshot's Parquet files with pyarrow, or a DataFrame through
``mapInArrow`` when the scope needs filter-level columns), each a numpy function per task
(:mod:`.tasks`), their partial results merged on the driver:

1. the scaled filters' moments (d = k² sums + d(d+1)/2 products, float64, about a per-task
   provisional mean, merged exactly) → :func:`kernels.pca.pca_from_moments`;
2. the min/max coefficient → the shared histogram range;
3. a :class:`kernels.coefficients.PartitionAccumulator` for all dimensions at once (plus
   the whole scope, each model and each layer: ``layer_histograms``); the driver
   computes histograms, stats and shift matrices (:mod:`.rows`), and Spark tasks each
   model's nearest models (``model_neighbours``).

An incremental run (:func:`run_incremental`) reuses the latest complete run's basis and
range, scans only new or replaced models (scan 3 alone, per layer), carries the other
models' layer histograms over and sums every grouped table from them (:mod:`.regroup`).

Each table gets one Delta append per run (its new ``run_id``); ``analysis_runs`` is
written last, so the ``<table>_latest`` views only ever show complete runs.
"""
from __future__ import annotations

import datetime as _dt
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

import numpy as np

from filterspark.delta import schemas as S
from filterspark.delta.registry import register_tables, registered_warehouse, views_predate_kernel
from filterspark.delta.schemas import ANALYSIS_TABLES, WEIGHT_COLUMNS
from filterspark.delta.tables import append_arrow, append_rows, ensure_table
from filterspark.delta.warehouse import id_predicate
from filterspark.engine.phases import Phases
from filterspark.engine.runner import run_tasks
from filterspark.engine.scans import filter_scan
from filterspark.errors import AnalyzeError, OptionsError
from filterspark.kernels import coefficients as co
from filterspark.kernels.layer_histograms import LayerAccumulator
from filterspark.kernels.neighbours import block_rows
from filterspark.kernels.pca import pca_from_moments, provisional_reference
from filterspark.kernels.shifts import N_BINS, combine_ranges, normalised_histogram
from filterspark.pipelines.analyze.inputs import analysis_input, is_model_level, kernel_table, plan_scan, resolve_dimensions
from filterspark.pipelines.analyze.options import ALL, AnalyzeOptions, AnalyzeReport, DEPTH_DIMENSION, MODEL_DIMENSION
from filterspark.pipelines.analyze.regroup import find_run, grouped_counts, layer_labels, run_basis, run_histograms
from filterspark.pipelines.analyze.rows import (
    arrow_rows, basis_rows, extremes, histogram_table, layer_histogram_table, model_shift_rows, neighbour_rows, run_fields,
    shift_rows, stats_rows, with_run, without_run,
)
from filterspark.pipelines.analyze.tasks import GroupLabels, coefficient_task, neighbours_task, partials_task, range_task, scan_moments


# --- the job -----------------------------------------------------------------------------------


def _registered(spark: SparkSession, options: AnalyzeOptions, tables: list[str]) -> bool:
    """Whether the names already point at this warehouse and every table written has its
    ``_latest`` view (registration re-reads every table's log: seconds, so skipped)."""
    wh = options.tables
    if views_predate_kernel(spark, wh):
        return False
    if wh.managed:
        return all(spark.catalog.tableExists(f"{wh.catalog}.{wh.database}.{t}_latest") for t in tables)
    return registered_warehouse(spark, wh.database) == wh.uri and all(
        spark.catalog.tableExists(f"{wh.database}.{t}_latest") for t in tables
    )


def new_run(scope: str, kernel: str) -> dict:
    """Run identity: ``run_id`` sorts by start time (UTC, microseconds) then a random suffix;
    the run's scope and kernel shape."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return {"run_id": now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3), "scope": scope, "run_at": now,
            "kernel": kernel}


def run_analysis(spark: SparkSession, options: AnalyzeOptions) -> AnalyzeReport:
    """Analyse the warehouse's filters and write the analysis tables (one run); with
    ``options.incremental``, on the latest complete run's basis and range, scanning only
    the models extracted or replaced since (:func:`run_incremental`)."""
    if options.incremental:
        return run_incremental(spark, options)
    started = time.perf_counter()
    run = new_run(options.scope, options.kernel)
    report = AnalyzeReport(run_id=run["run_id"], scope=run["scope"], min_group_filters=options.min_filters,
                           kernel=options.kernel, components=options.n_components)
    phase = Phases(spark, report.phases, "filterspark analyze")

    joined, models = analysis_input(spark, options)
    dims = resolve_dimensions(models, options.by)
    names = list(dims)
    report.dimensions = names
    n = len(names)  # label columns: _g0.._g{n-1} dimensions, _g{n} "all", _g{n+1} the model

    model_level, model_labels = _model_labels(models, dims)
    scan = plan_scan(spark, options, joined, models, set(model_labels))
    report.scan = scan.mode if scan.mode == "files" else f"spark ({scan.reason})"
    labels = GroupLabels(tuple(names), {m: tuple(r[names[i]] for i in model_level) for m, r in model_labels.items()})
    phase("plan", "moments")

    m = scan_moments(scan)
    full = pca_from_moments(m)
    basis = full.leading(options.n_components)  # the components the coefficients are on
    ref = provisional_reference(basis.mean[None, :])
    report.basis, report.n_filters = full, m.n
    phase("pca", "coefficient range")

    lo, hi = combine_ranges(scan.map(range_task(basis), "coefficient range"))
    report.range = (lo, hi)
    phase("range", f"histograms for {n} dimensions")

    acc = scan.reduce(partials_task(basis, lo, hi, options.bins, ref, labels), co.PartitionAccumulator.merge,
                      f"histograms for {n} dimensions")
    groups = acc.summaries() if acc is not None else {}
    layers = acc.layers.columns() if acc is not None else LayerAccumulator(options.bins).columns()
    layer_table = layer_histogram_table(layers, run, {i: r["extracted_at"] for i, r in model_labels.items()},
                                        lo, hi, options.bins, basis.explained_variance_ratio, options.min_filters)
    frames = {"layer_histograms": layer_table}
    if options.write_coefficients:
        coeffs = joined.select("model_id", "layer_index", "filter_index", *WEIGHT_COLUMNS).mapInArrow(
            coefficient_task(basis), without_run(S.COEFFICIENTS)
        )
        frames["coefficients"] = with_run(coeffs, run, S.COEFFICIENTS)
    report.models_rescanned = len(model_labels)
    phase("histograms", "shifts")
    return _finish(spark, options, report, run, phase, started, groups, names, model_level, model_labels, full, basis,
                   lo, hi, options.bins, frames, {"n_filters": m.n})


def run_incremental(spark: SparkSession, options: AnalyzeOptions) -> AnalyzeReport:
    """A new complete run on the latest complete run's basis and range (same scope) that
    scans only the models extracted or replaced since that run; the other models' layer
    histograms are carried over, every grouped table is summed from them. Coefficients
    outside the frozen range are left out of the bins and counted."""
    started = time.perf_counter()
    wh = options.tables
    try:
        base = find_run(spark, wh, scope=options.scope, kernel=options.kernel)
    except AnalyzeError as err:
        raise AnalyzeError(f"--incremental needs a complete earlier {options.kernel} run of scope {options.scope!r}: {err}") from err
    if options.bins not in (N_BINS, base.bins):
        raise OptionsError(f"--incremental keeps the base run's {base.bins} bins; --bins {options.bins} needs a full run")
    if options.components not in (None, base.components):
        raise OptionsError(f"--incremental keeps the base run's {base.components} components; "
                           f"--components {options.components} needs a full run")
    run = new_run(options.scope, options.kernel)
    report = AnalyzeReport(run_id=run["run_id"], scope=run["scope"], min_group_filters=options.min_filters,
                           base_run_id=base.run_id, kernel=options.kernel, components=base.components)
    phase = Phases(spark, report.phases, "filterspark analyze --incremental")
    full = run_basis(spark, wh, base)
    basis = full.leading(base.components)
    bins, lo, hi = base.bins, base.lo, base.hi
    report.basis, report.range = full, (lo, hi)

    joined, models = analysis_input(spark, options)
    if not is_model_level(models, options.where):
        raise AnalyzeError("--incremental needs a scope over model columns (the where predicate uses filter-level columns)")
    dims = resolve_dimensions(models, options.by or base.dimensions or None)
    names = list(dims)
    report.dimensions = names
    model_level, model_labels = _model_labels(models.where(F.expr(options.where)) if options.scope != ALL else models, dims)
    current = {i: r["extracted_at"] for i, r in model_labels.items()}
    base_rows = run_histograms(spark, wh, base.run_id)
    before = {int(r[0]): r[1] for r in base_rows.select("model_id", "extracted_at").distinct().collect()}
    kept = {i for i, when in current.items() if i in before and before[i] == when}
    # a model extracted before the base run without rows in it had no kernels of this shape
    # then, and its kernels change only with a new extraction: nothing to read again
    none_then = {i for i, when in current.items()
                 if i not in before and when is not None and base.run_at is not None and when <= base.run_at}
    rescan = set(current) - kept - none_then
    report.models_rescanned = len(rescan)
    phase("plan", "histograms of new models")

    if rescan:
        new_rows = joined.where(F.expr(id_predicate("model_id", rescan)))
        scan = filter_scan(spark, wh.table(kernel_table(options)), rescan, lambda: new_rows, options.scan, True, options.k)
        report.scan = scan.mode if scan.mode == "files" else f"spark ({scan.reason})"
        ref = provisional_reference(basis.mean[None, :])
        acc = scan.reduce(partials_task(basis, lo, hi, bins, ref, None), co.PartitionAccumulator.merge,
                          "histograms of new models")
        layers = acc.layers.columns() if acc is not None else LayerAccumulator(bins).columns()
    else:
        report.scan = "none (no new models)"
        layers = LayerAccumulator(bins).columns()
    table = layer_histogram_table(layers, run, current, lo, hi, bins, basis.explained_variance_ratio, options.min_filters)
    carried = with_run(base_rows.where(F.expr(id_predicate("model_id", kept))).drop("run_id", "scope", "run_at", "kernel")
                       .withColumn("min_group_filters", F.lit(options.min_filters).cast("long")), run, S.LAYER_HISTOGRAMS)
    layer_frame = spark.createDataFrame(table, schema=S.LAYER_HISTOGRAMS).unionByName(carried)
    _write(spark, options, report, "layer_histograms", layer_frame)
    phase("histograms", "grouped counts")

    everything = {**dims, ALL: f"'{ALL}'", MODEL_DIMENSION: "CAST(model_id AS STRING)"}
    groups = grouped_counts(run_histograms(spark, wh, run["run_id"]), layer_labels(spark, wh, everything),
                            names + [ALL, MODEL_DIMENSION], bins, stats=True, components=base.components)
    whole = groups.get((len(names), ALL))
    report.n_filters = whole.n if whole is not None else 0
    if whole is not None and whole.n:
        report.outside_share = float(1.0 - whole.hist.sum() / (whole.n * base.components))
    if report.outside_share > options.outside_threshold:
        report.warnings.append(
            f"{report.outside_share:.3%} of the coefficients fall outside the frozen range (threshold "
            f"{options.outside_threshold:.3%}): a full run (without --incremental) is due")
    phase("grouped counts", "shifts")
    return _finish(spark, options, report, run, phase, started, groups, names, model_level, model_labels, full, basis,
                   lo, hi, bins, {}, {"n_filters": report.n_filters}, written=["layer_histograms"])


def _model_labels(models: DataFrame, dims: dict[str, str]) -> tuple[list[int], dict[int, dict]]:
    """(indices of the model-level dimensions, model id → its name, extraction time and
    model-level labels)."""
    names = list(dims)
    model_level = [i for i, name in enumerate(names) if name != DEPTH_DIMENSION]
    exprs = [F.expr(e) for e in dims.values()]
    rows = models.select("model_id", "name", "extracted_at", *[exprs[i].alias(names[i]) for i in model_level]).collect()
    return model_level, {r["model_id"]: r.asDict() for r in rows}


def _write(spark: SparkSession, options: AnalyzeOptions, report: AnalyzeReport, name: str, data) -> None:
    """Append one table's rows of the run: a DataFrame (executors' rows) or a pyarrow
    Table built on the driver (written here, no Spark job, where the table allows)."""
    schema = ANALYSIS_TABLES[name]
    table = ensure_table(spark, options.tables, name=name, schema=schema)
    # An append: the run id is new, so no earlier row can match it. (A replaceWhere on
    # the non-partition run_id costs a delete scan: ~10x an append, measured.) New
    # columns of a newer version are added to an older warehouse's table (mergeSchema).
    if isinstance(data, DataFrame):
        append_rows(data, table, f"write {name}", merge_schema=True)
    else:
        append_arrow(spark, table, data, f"write {name}", schema)
    report.tables.append(name)


def _finish(spark, options, report, run, phase, started, groups, names, model_level, model_labels, full, basis, lo,
            hi, bins, frames, summary, written=()) -> AnalyzeReport:
    """The run's grouped tables from its summed groups, every table written, then its
    ``analysis_runs`` row (the commit record), then the names registered. ``full``: the
    whole basis (``pca_basis``); ``basis``: its components the coefficients are on."""
    n = len(names)
    all_names = names + [ALL]
    public = {k: g for k, g in groups.items() if k[0] <= n}
    per_model = {int(label): g for (d, label), g in groups.items() if d == n + 1}
    report.n_models = len(per_model)
    for (d, label), g in public.items():
        report.groups.setdefault(all_names[d], {})[label] = g.n
    small, evr = options.min_filters, basis.explained_variance_ratio
    shifts = shift_rows(run, {k: g for k, g in public.items() if k[0] < n}, names, evr, lo, hi, small)
    model_rows = model_shift_rows(run, per_model, public, model_labels, names, model_level, evr, lo, hi, small)
    report.extremes = extremes(shifts)
    phase("shifts", "nearest models")
    neighbours = _neighbours(spark, run, per_model, model_labels, evr, lo, hi, options.neighbours)
    phase("neighbours", "write tables")

    frames = {
        **frames,
        "pca_basis": arrow_rows(basis_rows(run, full), S.PCA_BASIS),
        "coefficient_histograms": histogram_table(run, public, all_names, lo, hi, bins, small),
        "coefficient_stats": arrow_rows(stats_rows(run, public, all_names, basis, lo, hi, small), S.COEFFICIENT_STATS),
        "shifts": arrow_rows(shifts, S.SHIFTS),
        "model_shifts": arrow_rows(model_rows, S.MODEL_SHIFTS),
        "model_neighbours": arrow_rows(neighbours, S.MODEL_NEIGHBOURS),
    }
    # Independent tables: commit them concurrently (Delta commits are mostly latency).
    with ThreadPoolExecutor(max_workers=len(frames)) as pool:
        for future in [pool.submit(_write, spark, options, report, name, df) for name, df in frames.items()]:
            future.result()
    report.tables[:0] = list(written)
    phase("write")

    report.seconds = time.perf_counter() - started
    record = {
        **run_fields(run), "finished_at": _dt.datetime.now(_dt.timezone.utc), "seconds": report.seconds,
        "dimensions": names, "bins": bins, "min_group_filters": small, "n_models": report.n_models,
        "range_lo": lo, "range_hi": hi, "explained_variance_ratio": [float(v) for v in full.explained_variance_ratio],
        "write_coefficients": options.write_coefficients and not options.incremental,
        "base_run_id": report.base_run_id, "models_rescanned": report.models_rescanned,
        "outside_share": report.outside_share, "neighbours_k": options.neighbours,
        "components": len(evr), "kernel": run["kernel"], **summary,
    }
    _write(spark, options, report, "analysis_runs", arrow_rows([record], S.ANALYSIS_RUNS))
    if not _registered(spark, options, report.tables):
        register_tables(spark, options.tables)
    phase("write")
    report.seconds = time.perf_counter() - started
    return report


def _neighbours(spark, run, per_model, model_labels, evr, lo, hi, k) -> list[dict]:
    """Every model's ``k`` nearest models (``model_neighbours`` rows), blocks of models
    one Spark task each."""
    ids = sorted(i for i, g in per_model.items() if g.hist[0].sum() > 0)
    if len(ids) < 2 or k < 1:
        return []
    hists = normalised_histogram(np.stack([per_model[i].hist for i in ids]), lo, hi)
    rows = block_rows(len(ids), hists.shape[1] * hists.shape[2])
    blocks = [list(range(s, min(s + rows, len(ids)))) for s in range(0, len(ids), rows)]
    found = [f for part in run_tasks(spark, blocks, neighbours_task(hists, evr, k), "filterspark analyze: nearest models")
             for f in part]
    names = {i: (model_labels.get(i) or {}).get("name") for i in ids}
    return neighbour_rows(run, found, ids, names, {i: per_model[i].n for i in ids})
