"""Spark orchestration of the analysis: ``filters`` → PCA basis, grouped histograms, shifts.

Only aggregates reach the driver. Three scans (:mod:`filter_scan`: Spark tasks read the
Delta snapshot's Parquet files with pyarrow, or a DataFrame through ``mapInArrow`` when
the scope needs filter-level columns), each a numpy function per task:

1. the scaled filters' moments (9 sums + 45 products, float64, about a per-task
   provisional mean, merged exactly) → :func:`pca.pca_from_moments` on the driver;
2. the min/max coefficient → the shared histogram range;
3. a :class:`coefficients.PartitionAccumulator` for all dimensions at once (plus the
   whole scope and each model), merged across tasks with ``treeReduce``; the driver
   computes histograms, stats and shift matrices with :mod:`shifts`.

Group labels never travel per row: model-level labels come from the (small) ``models``
table by model id, ``depth_decile`` from ``conv_depth_norm`` in numpy.

Each table gets one Delta commit per run (``replaceWhere run_id = …``); ``analysis_runs``
is written last, so the ``<table>_latest`` views only ever show complete runs.
"""
from __future__ import annotations

import datetime as _dt
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, MapType, StructType

from filterspark.delta.schemas import ANALYSIS_TABLES, WEIGHT_COLUMNS, arrow_schema
from filterspark.delta.tables import append_rows, ensure_table, rows_frame, table_exists
from filterspark.delta.warehouse import DEFAULT_DATABASE, Warehouse, register_tables, registered_warehouse
from filterspark.engine.phases import Phases
from filterspark.engine.scans import SCAN_MODES, FilterScan, filter_scan
from filterspark.errors import AnalyzeError, OptionsError
from filterspark.kernels import coefficients as co
from filterspark.kernels.pca import N_WEIGHTS, PCABasis, FilterMoments, moments, pca_from_moments, project, provisional_reference, scale_filters
from filterspark.kernels.shifts import N_BINS, bin_edges, combine_ranges, normalised_histogram, shift_matrix

#: ``--by`` default: those of these that exist (``variant`` is a metadata key of the demo zoo).
DEFAULT_BY = ("task", "visual_category", "training_dataset", "family", "depth_decile", "variant")
DEPTH_DIMENSION = "depth_decile"
ALL = "all"  # the dimension (and group) of the whole scope
_MODEL = "__model__"  # internal dimension: one group per model (for model_shifts)


@dataclass
class AnalyzeOptions:
    """Settings of one analysis run."""

    warehouse: str
    database: str = DEFAULT_DATABASE
    by: tuple[str, ...] | None = None  # None: the DEFAULT_BY dimensions that exist
    bins: int = N_BINS
    where: str | None = None  # SQL predicate over filter + model columns
    write_coefficients: bool = False
    scan: str = "auto"  # auto | files | spark (see filter_scan)
    min_group_filters: int | None = None  # None: 10 per bin (700 for 70 bins)
    #: catalog mode: tables managed as ``<catalog_name>.<database>.<table>`` (None: path mode)
    catalog_name: str | None = None

    def __post_init__(self) -> None:
        if self.scan not in SCAN_MODES:
            raise OptionsError(f"scan must be one of {', '.join(SCAN_MODES)}, not {self.scan!r}")
        if self.bins < 1:
            raise OptionsError(f"bins must be at least 1, not {self.bins}")
        if self.min_group_filters is not None and self.min_group_filters < 0:
            raise OptionsError(f"min_group_filters must be >= 0, not {self.min_group_filters}")
        if isinstance(self.by, str):
            self.by = tuple(d.strip() for d in self.by.split(",") if d.strip())
        self.tables  # validates the warehouse names

    @property
    def tables(self) -> Warehouse:
        """Where the analysed and written tables are."""
        return Warehouse(self.warehouse, self.database, self.catalog_name)

    @property
    def scope(self) -> str:
        return self.where.strip() if self.where and self.where.strip() else ALL

    @property
    def min_filters(self) -> int:
        if self.min_group_filters is not None:
            return int(self.min_group_filters)
        return co.default_min_group_filters(self.bins)


@dataclass
class AnalyzeReport:
    """What one run found, for the console summary, the closing note and tests."""

    run_id: str = ""
    scope: str = ALL
    n_filters: int = 0
    n_models: int = 0
    basis: PCABasis | None = None
    range: tuple[float, float] = (0.0, 0.0)
    dimensions: list[str] = field(default_factory=list)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    extremes: dict[str, tuple[tuple, tuple]] = field(default_factory=dict)  # (a, b, shift) largest, smallest
    min_group_filters: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    scan: str = ""  # how the filters were read: files, or spark (why)

    def lines(self) -> list[str]:
        evr = ", ".join(f"{v:.4f}" for v in self.basis.explained_variance_ratio) if self.basis else ""
        out = [
            f"run {self.run_id}  scope: {self.scope}",
            f"filters: {self.n_filters:,} from {self.n_models} models",
            f"explained-variance ratios: {evr}",
            f"coefficient range: [{self.range[0]:.6g}, {self.range[1]:.6g}]",
            f"filters read: {self.scan}",
        ]
        for dim in self.dimensions:
            groups = self.groups.get(dim, {})
            n_small = sum(1 for n in groups.values() if n < self.min_group_filters)
            line = f"  {dim}: {len(groups)} groups ({n_small} small)"
            if dim in self.extremes:
                (a1, b1, s1), (a2, b2, s2) = self.extremes[dim]
                line += f"; largest shift {s1:.4f} ({a1} vs {b1}); smallest {s2:.4f} ({a2} vs {b2})"
            out.append(line)
        phases = ", ".join(f"{k} {v:.1f}" for k, v in self.phases.items())
        out.append(f"wall time: {self.seconds:.1f} s ({phases})")
        return out


# --- input ---------------------------------------------------------------------------------


def depth_decile(column: str = "conv_depth_norm") -> Column:
    """The depth group of a layer: the decile of ``column`` ([0.0,0.1], (0.1,0.2], ...), NULL/NaN → ``(none)``."""
    expr = F.when(F.col(column).isNull() | F.isnan(column), F.lit(co.NONE_LABEL))
    for edge, label in zip(co.DEPTH_EDGES, co.DEPTH_DECILES):
        expr = expr.when(F.col(column) <= F.lit(float(edge)), F.lit(label))
    return expr.otherwise(F.lit(co.DEPTH_DECILES[-1]))


def group_label(value: Column) -> Column:
    """A group label: the value as a string, NULL and '' → ``(none)``."""
    text = value.cast("string")
    return F.when(text.isNull() | (text == ""), F.lit(co.NONE_LABEL)).otherwise(text)


def _is_scalar(dtype: DataType) -> bool:
    return not isinstance(dtype, (ArrayType, MapType, StructType))


def resolve_dimensions(models: DataFrame, by: tuple[str, ...] | None) -> dict[str, Column]:
    """Label expression of each requested dimension (over the joined filter+model rows).

    A dimension is ``depth_decile``, a scalar column of ``models`` or a key of
    ``models.metadata`` (a column wins over a key of the same name).
    """
    columns = {f.name for f in models.schema.fields if _is_scalar(f.dataType)} - {"model_id"}
    requested = list(by) if by else list(DEFAULT_BY)
    keys: set[str] = set()
    if any(d != DEPTH_DIMENSION and d not in columns for d in requested):  # a small job: only if needed
        keys = {r[0] for r in models.select(F.explode(F.map_keys("metadata"))).distinct().collect()}
    wanted = requested if by else [d for d in DEFAULT_BY if d == DEPTH_DIMENSION or d in columns or d in keys]
    out: dict[str, Column] = {}
    for dim in wanted:
        if dim in (ALL, _MODEL):
            raise AnalyzeError(f"'{dim}' is reserved and cannot be a dimension")
        if dim == DEPTH_DIMENSION:
            out[dim] = F.col(DEPTH_DIMENSION)
        elif dim in columns:
            out[dim] = group_label(F.col(dim))
        elif dim in keys:
            out[dim] = group_label(F.col("metadata").getItem(dim))
        else:
            raise AnalyzeError(
                f"unknown dimension '{dim}': use depth_decile, a column of models "
                f"({', '.join(sorted(columns))}) or a metadata key ({', '.join(sorted(keys)) or 'none'})"
            )
    return out


def analysis_input(spark: SparkSession, options: AnalyzeOptions) -> tuple[DataFrame, DataFrame]:
    """(filters of ``ok`` models joined with their model row and ``depth_decile``, after
    ``--where``; the ``ok`` models). Filters with a non-finite weight are left out."""
    tables = {t: options.tables.table(t) for t in ("filters", "models")}
    for name, table in tables.items():
        if not table_exists(spark, table):
            raise AnalyzeError(f"no {name} table ({table.location or table.sql}): run the extraction first")
    models = tables["models"].read(spark).where(F.col("status") == "ok")
    filters = tables["filters"].read(spark).select(
        "model_id", "layer_index", "filter_index", *WEIGHT_COLUMNS, "conv_depth", "conv_depth_norm"
    )
    joined = filters.join(F.broadcast(models), "model_id").withColumn(DEPTH_DIMENSION, depth_decile())
    peak = F.greatest(*[F.abs(F.col(c).cast("double")) for c in WEIGHT_COLUMNS])
    joined = joined.where(~F.isnan(peak) & (peak < F.lit(float("inf"))))
    if options.where and options.where.strip():
        try:
            joined = joined.where(F.expr(options.where))
            joined.schema  # resolve now: a bad predicate is the user's error
        except Exception as err:  # noqa: BLE001 - AnalysisException / ParseException
            raise AnalyzeError(f"bad where predicate {options.where!r}: {str(err).splitlines()[0]}") from err
    return joined, models


# --- the scans -----------------------------------------------------------------------------


def _weights(batch) -> np.ndarray:
    """The batch's weights as a (9, n) float32 array (one contiguous row per weight)."""
    return np.stack([batch.column(c).to_numpy(zero_copy_only=False) for c in WEIGHT_COLUMNS])


def _scaled_rows(batch) -> tuple[np.ndarray, np.ndarray]:
    """(scaled filters (n, 9) float64, kept-row mask) of a scan batch: rows with a
    non-finite weight are left out, as :func:`analysis_input` leaves them out.

    The values of :func:`pca.scale_filters`, computed weight-major (the result is the
    transposed view of a (9, n) array: contiguous per weight, which the moments and
    :func:`pca.project` stream fastest). The peak |w| is exact in float32, and a NaN or
    inf weight makes it non-finite, so one test on the peaks finds those rows.
    """
    w32 = _weights(batch)
    peak = np.abs(w32).max(axis=0)
    keep = np.isfinite(peak)
    if not keep.all():
        w32, peak = w32[:, keep], peak[keep]
    w = w32.astype(np.float64)
    np.divide(w, peak, out=w, where=peak > 0)
    return w.T, keep


def _moments_task(batches) -> FilterMoments:
    """Scan 1 (per task): moments of the scaled filters about the task's first batch mean."""
    total: FilterMoments | None = None
    for batch in batches:
        x, _ = _scaled_rows(batch)
        if x.shape[0] == 0:
            continue
        if total is None:
            total = FilterMoments.zeros(provisional_reference(x))
        total = total.merge(moments(x, total.ref))
    return total if total is not None else FilterMoments.zeros()


def _range_task(basis: PCABasis):
    """Scan 2 (per task): (min, max) of all coefficients."""

    def task(batches) -> tuple[float, float]:
        lo, hi = float("inf"), float("-inf")
        for batch in batches:
            x, _ = _scaled_rows(batch)
            if x.shape[0]:  # finite rows only, so every coefficient is finite
                c = project(x, basis)
                lo, hi = min(lo, float(c.min())), max(hi, float(c.max()))
        return lo, hi

    return task


@dataclass(frozen=True)
class GroupLabels:
    """How a scan row gets its group in each dimension: model-level dimensions from the
    model's row (``models[model_id][j]``), ``depth_decile`` from ``conv_depth_norm``."""

    dims: tuple[str, ...]  # user dimensions, in order
    models: dict[int, tuple[str, ...]]  # model id → labels of the model-level dimensions

    def codes(self, model_ids: np.ndarray, depth: np.ndarray) -> list[tuple[np.ndarray, list[str]]]:
        """Per dimension (the user's, then ``all``, then the model): (codes, code → label)."""
        uniq, inv = np.unique(model_ids, return_inverse=True)
        out, j = [], 0
        for dim in self.dims:
            if dim == DEPTH_DIMENSION:
                codes = np.searchsorted(_DEPTH_EDGES, depth, side="left")
                codes[np.isnan(depth)] = len(co.DEPTH_DECILES)
                out.append((codes, [*co.DEPTH_DECILES, co.NONE_LABEL]))
            else:
                out.append((inv, [self.models[int(m)][j] for m in uniq]))
                j += 1
        out.append((np.zeros(model_ids.size, np.intp), [ALL]))
        out.append((inv, [str(int(m)) for m in uniq]))
        return out


_DEPTH_EDGES = np.asarray(co.DEPTH_EDGES, dtype=np.float64)


def _partials_task(basis: PCABasis, lo: float, hi: float, bins: int, ref: np.ndarray, labels: GroupLabels):
    """Scan 3 (per task): a :class:`coefficients.PartitionAccumulator` for every dimension
    at once, ``all`` and each model (counts only)."""
    n_dims = len(labels.dims)
    full = frozenset(range(n_dims + 1))  # user dims and "all"; not the per-model one
    known = np.fromiter(labels.models, dtype=np.int64)

    def task(batches) -> co.PartitionAccumulator:
        acc = co.PartitionAccumulator(lo, hi, bins, ref, full)
        for batch in batches:
            x, finite = _scaled_rows(batch)
            model_ids = batch.column("model_id").to_numpy(zero_copy_only=False).astype(np.int64)[finite]
            depth = batch.column("conv_depth_norm").to_numpy(zero_copy_only=False).astype(np.float64)[finite]
            known_rows = np.isin(model_ids, known)
            if not known_rows.all():
                x, model_ids, depth = x[known_rows], model_ids[known_rows], depth[known_rows]
            if x.shape[0]:
                acc.add(x, project(x, basis), labels.codes(model_ids, depth))
        return acc

    return task


def _coefficient_task(basis: PCABasis):
    """mapInArrow function: filter keys + weights → keys + coefficients ``c0..c8``."""
    from filterspark.delta.schemas import COEFFICIENTS

    def task(batches):
        import pyarrow as pa

        schema = arrow_schema(_without_run(COEFFICIENTS))
        for batch in batches:
            c = project(scale_filters(_weights(batch).T), basis)
            keys = [batch.column(k) for k in ("model_id", "layer_index", "filter_index")]
            yield pa.RecordBatch.from_arrays([*keys, *[pa.array(c[:, i]) for i in range(N_WEIGHTS)]], schema=schema)

    return task


def scan_moments(scan: FilterScan) -> FilterMoments:
    """Scan 1: the scaled filters' moments (a :class:`pca.FilterMoments`), all tasks merged."""
    total = FilterMoments.zeros()
    for m in scan.map(_moments_task, "moments"):
        total = total.merge(m)
    if total.n == 0:
        raise AnalyzeError("no filters in scope (no ok models, or --where matches nothing)")
    if total.n < 2:
        raise AnalyzeError(f"PCA needs at least 2 filters in scope, found {total.n}")
    return total


def _is_model_level(models: DataFrame, where: str | None) -> bool:
    """Whether ``where`` can be decided from the model rows alone."""
    if not (where and where.strip()):
        return True
    try:
        models.where(F.expr(where)).schema
        return True
    except Exception:  # noqa: BLE001 - AnalysisException: a filter-level column
        return False


def plan_scan(spark: SparkSession, options: AnalyzeOptions, joined: DataFrame, models: DataFrame,
              ok_ids: set[int] | None = None) -> FilterScan:
    """The filters scan of one run: whole models' data files when the scope allows it.
    ``ok_ids``: the ok models' ids when the caller has them already."""
    model_level = _is_model_level(models, options.where)
    ids: set[int] = set()
    if options.scan != "spark" and model_level:
        if options.scope == ALL and ok_ids is not None:
            ids = set(ok_ids)
        else:
            in_scope = models.where(F.expr(options.where)) if options.scope != ALL else models
            ids = {int(r[0]) for r in in_scope.select("model_id").collect()}
    return filter_scan(spark, options.tables.table("filters"), ids, lambda: joined, options.scan, model_level)


# --- driver-side results --------------------------------------------------------------------


_RUN_COLUMNS = ("run_id", "scope", "run_at")


def _run_fields(run: dict) -> dict:
    return {k: run[k] for k in _RUN_COLUMNS}


def _without_run(schema: StructType) -> StructType:
    return StructType([f for f in schema.fields if f.name not in _RUN_COLUMNS])


def _with_run(df: DataFrame, run: dict, schema: StructType) -> DataFrame:
    """``df`` (the non-run columns of ``schema``) with the run's columns, in ``schema`` order."""
    lits = {"run_id": F.lit(run["run_id"]), "scope": F.lit(run["scope"]), "run_at": F.lit(run["run_at"]).cast("timestamp")}
    return df.select(*[lits[f.name].alias(f.name) if f.name in lits else F.col(f.name) for f in schema.fields])


def _basis_rows(run: dict, basis: PCABasis) -> list[dict]:
    return [
        {
            **_run_fields(run), "component": k,
            **{f"v{i}": float(basis.components[k, i]) for i in range(N_WEIGHTS)},
            "mean": [float(v) for v in basis.mean],
            "explained_variance": float(basis.explained_variance[k]),
            "explained_variance_ratio": float(basis.explained_variance_ratio[k]),
            "n_filters": basis.n_filters,
        }
        for k in range(N_WEIGHTS)
    ]


def _histogram_table(groups: dict, names: list[str], lo: float, hi: float, bins: int, small: int):
    """Arrow table of coefficient_histograms' non-run columns (one row per dimension,
    group, component and bin)."""
    import pyarrow as pa

    from filterspark.delta.schemas import COEFFICIENT_HISTOGRAMS

    edges = bin_edges(lo, hi, bins)
    m = N_WEIGHTS * bins
    cols: dict[str, list] = {f.name: [] for f in _without_run(COEFFICIENT_HISTOGRAMS).fields}
    for (dim, label), g in sorted(groups.items()):
        cols["dimension"].append(np.full(m, names[dim], object))
        cols["group_value"].append(np.full(m, label, object))
        cols["component"].append(np.repeat(np.arange(N_WEIGHTS, dtype=np.int32), bins))
        cols["bin"].append(np.tile(np.arange(bins, dtype=np.int32), N_WEIGHTS))
        cols["bin_lo"].append(np.tile(edges[:-1], N_WEIGHTS))
        cols["bin_hi"].append(np.tile(edges[1:], N_WEIGHTS))
        cols["count"].append(g.hist.reshape(-1))
        cols["probability"].append(normalised_histogram(g.hist, lo, hi).reshape(-1))
        cols["n_filters"].append(np.full(m, g.n, np.int64))
        cols["small_group"].append(np.full(m, g.n < small))
    schema = arrow_schema(_without_run(COEFFICIENT_HISTOGRAMS))
    return pa.Table.from_arrays([pa.array(np.concatenate(cols[f.name]), type=f.type) for f in schema], schema=schema)


def _stats_rows(run: dict, groups: dict, names: list[str], basis: PCABasis, lo: float, hi: float, small: int):
    rows = []
    for (dim, label), g in sorted(groups.items()):
        stats = co.group_stats(g, basis, lo, hi)
        for k in range(N_WEIGHTS):
            row = {**_run_fields(run), "dimension": names[dim], "group_value": label, "component": k,
                   "small_group": g.n < small}
            for name, values in stats.items():
                v = values[k]
                row[name] = int(v) if name == "n_filters" else (None if not np.isfinite(v) else float(v))
            rows.append(row)
    return rows


def _shift_rows(run: dict, groups: dict, names: list[str], evr: np.ndarray, lo: float, hi: float, small: int):
    rows = []
    for dim, name in enumerate(names):
        members = {label: g for (d, label), g in groups.items() if d == dim}
        hists = {label: normalised_histogram(g.hist, lo, hi) for label, g in members.items()}
        for a, b, total, per in shift_matrix(hists, evr):
            na, nb = members[a].n, members[b].n
            rows.append({**_run_fields(run), "dimension": name, "group_a": a, "group_b": b, "shift": float(total),
                         "kl_components": [float(v) for v in per], "n_a": na, "n_b": nb,
                         "small": bool(na < small or nb < small)})
    return rows


def _model_shift_rows(run, per_model, groups, model_labels, names, model_dims, evr, lo, hi, small):
    """Each model against the rest of the population (dimension ``all``) and the rest of
    its group in each model-level dimension."""
    rows = []
    everything = groups[(len(names), ALL)]
    for model_id, g in sorted(per_model.items()):
        info = model_labels.get(model_id, {})
        targets = [(ALL, ALL, everything)]
        for d in model_dims:
            label = info.get(names[d])
            if label is not None and (d, label) in groups:
                targets.append((names[d], label, groups[(d, label)]))
        for dim_name, label, whole in targets:
            res = co.rest_shift(g.hist, whole.hist, evr, lo, hi)
            n_rest = whole.n - g.n
            rows.append({
                **_run_fields(run), "model_id": model_id, "name": info.get("name"), "dimension": dim_name,
                "group_value": label, "shift": None if res is None else float(res[0]),
                "kl_components": None if res is None else [float(v) for v in res[1]],
                "n_filters": g.n, "n_rest": n_rest, "small": bool(g.n < small or n_rest < small),
            })
    return rows


def _extremes(rows: list[dict]) -> dict[str, tuple[tuple, tuple]]:
    out: dict[str, tuple[tuple, tuple]] = {}
    by_dim: dict[str, list[tuple]] = {}
    for r in rows:
        if r["group_a"] < r["group_b"]:
            by_dim.setdefault(r["dimension"], []).append((r["group_a"], r["group_b"], r["shift"]))
    for dim, pairs in by_dim.items():
        pairs.sort(key=lambda p: p[2])
        out[dim] = (pairs[-1], pairs[0])
    return out


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

    lo, hi = combine_ranges(scan.map(_range_task(basis), "coefficient range"))
    report.range = (lo, hi)
    phase("range", f"histograms for {n} dimensions")

    acc = scan.reduce(_partials_task(basis, lo, hi, options.bins, ref, labels), co.PartitionAccumulator.merge,
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
    shifts = _shift_rows(run, {k: g for k, g in public.items() if k[0] < n}, names, evr, lo, hi, small)
    model_rows = _model_shift_rows(run, per_model, public, model_labels, names, model_level, evr, lo, hi, small)
    report.extremes = _extremes(shifts)
    phase("shifts", "write tables")

    from filterspark.delta import schemas as S


    def write(name: str, df: DataFrame) -> None:
        table = ensure_table(spark, options.tables, name=name, schema=ANALYSIS_TABLES[name])
        # An append: the run id is new, so no earlier row can match it. (A replaceWhere on
        # the non-partition run_id costs a delete scan: ~10x an append, measured.)
        append_rows(df, table, f"write {name}")
        report.tables.append(name)

    hist = spark.createDataFrame(
        _histogram_table(public, all_names, lo, hi, options.bins, small), schema=_without_run(S.COEFFICIENT_HISTOGRAMS)
    )
    frames = {
        "pca_basis": rows_frame(spark, _basis_rows(run, basis), S.PCA_BASIS),
        "coefficient_histograms": _with_run(hist, run, S.COEFFICIENT_HISTOGRAMS),
        "coefficient_stats": rows_frame(spark, _stats_rows(run, public, all_names, basis, lo, hi, small), S.COEFFICIENT_STATS),
        "shifts": rows_frame(spark, shifts, S.SHIFTS),
        "model_shifts": rows_frame(spark, model_rows, S.MODEL_SHIFTS),
    }
    if options.write_coefficients:
        coeffs = joined.select("model_id", "layer_index", "filter_index", *WEIGHT_COLUMNS).mapInArrow(
            _coefficient_task(basis), _without_run(S.COEFFICIENTS)
        )
        frames["coefficients"] = _with_run(coeffs, run, S.COEFFICIENTS)
    # Independent tables: commit them concurrently (Delta commits are mostly latency).
    with ThreadPoolExecutor(max_workers=len(frames)) as pool:
        for future in [pool.submit(write, name, df) for name, df in frames.items()]:
            future.result()
    phase("write")

    report.seconds = time.perf_counter() - started
    summary = {
        **_run_fields(run), "finished_at": _dt.datetime.now(_dt.timezone.utc), "seconds": report.seconds,
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
