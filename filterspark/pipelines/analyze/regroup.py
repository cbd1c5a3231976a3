"""Any grouping of layers from a run's ``layer_histograms`` (no filter scan).

A group's counts are the sum of its layers' counts on the run's basis, range and bins,
so a grouping is a SQL aggregation over ``layer_histograms`` joined with the
``layer_groups`` view (every column of ``models`` and ``layers``, and ``depth_decile``),
followed by the shift formula of :mod:`filterspark.kernels.shifts` on the driver. For a
dimension the run analysed this gives that run's ``shifts`` rows exactly (the same
counts, the same code); for a ``where`` predicate it keeps the run's basis and range
(the published method refits the basis on the subset: that is ``analyze --where``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from filterspark.delta.schemas import VIEWS
from filterspark.delta.tables import table_exists
from filterspark.delta.warehouse import Warehouse, WarehouseOptions
from filterspark.errors import AnalyzeError, OptionsError
from filterspark.kernels.coefficients import GroupSummary
from filterspark.kernels.pca import N_WEIGHTS, PCABasis
from filterspark.kernels.shapes import DEFAULT_KERNEL, kernel_name, parse_kernel
from filterspark.pipelines.analyze.inputs import group_label_sql
from filterspark.pipelines.analyze.options import ALL
from filterspark.pipelines.analyze.rows import shift_rows

#: The note every regrouped result carries (printed by the command, in the README).
BASIS_NOTE = ("computed on the run's basis and coefficient range; the published method refits the basis "
              "on a subset: for that, run analyze --where")


@dataclass(frozen=True)
class RunSettings:
    """What a regrouping reuses of one complete analysis run."""

    run_id: str
    scope: str
    run_at: object
    bins: int
    lo: float
    hi: float
    evr: np.ndarray
    min_group_filters: int
    dimensions: tuple[str, ...]
    n_filters: int
    kernel: str = DEFAULT_KERNEL
    components: int = N_WEIGHTS  # components with coefficients (the first of evr's)

    @property
    def fields(self) -> dict:
        return {"run_id": self.run_id, "scope": self.scope, "run_at": self.run_at, "kernel": self.kernel}

    @property
    def coefficient_evr(self) -> np.ndarray:
        """The explained-variance ratios of the components the histograms are of."""
        return self.evr[: self.components]


def find_run(spark: SparkSession, wh: Warehouse, run_id: str | None = None, scope: str | None = None,
             kernel: str | None = None) -> RunSettings:
    """The run ``run_id``, else the latest complete run of ``kernel`` (default 3x3) and
    ``scope`` (default: ``all`` if there is one, else the latest of any scope). Runs of
    an older version (no ``kernel`` recorded) are 3x3 runs."""
    runs = wh.table("analysis_runs")
    if not table_exists(spark, runs):
        raise AnalyzeError(f"no analysis runs in {wh.describe()}: run the analysis first")
    df = runs.read(spark)
    if "kernel" not in df.columns:
        df = df.withColumn("kernel", F.lit(None).cast("string"))
    if "components" not in df.columns:
        df = df.withColumn("components", F.lit(None).cast("int"))
    df = df.withColumn("kernel", F.coalesce(F.col("kernel"), F.lit(DEFAULT_KERNEL)))
    kernel = kernel_name(parse_kernel(kernel)) if kernel else None
    if run_id:
        df = df.where(F.col("run_id") == run_id)
    else:
        df = df.where(F.col("kernel") == (kernel or DEFAULT_KERNEL))
        if scope is not None:
            df = df.where(F.col("scope") == scope)
    rows = df.orderBy(F.col("run_id").desc()).collect()
    if not run_id and scope is None:
        rows = [r for r in rows if r["scope"] == ALL] or rows
    if not rows:
        what = run_id or " ".join(p for p in (f"of kernel {kernel or DEFAULT_KERNEL}",
                                              f"of scope {scope!r}" if scope else "") if p)
        raise AnalyzeError(f"no analysis run {what} in {wh.describe()}")
    r = rows[0]
    if run_id and kernel and r["kernel"] != kernel:
        raise AnalyzeError(f"run {run_id} analysed {r['kernel']} kernels, not {kernel}")
    evr = np.asarray(r["explained_variance_ratio"], np.float64)
    return RunSettings(
        r["run_id"], r["scope"], r["run_at"], int(r["bins"]), float(r["range_lo"]), float(r["range_hi"]),
        evr, int(r["min_group_filters"]), tuple(r["dimensions"] or ()), int(r["n_filters"]), r["kernel"],
        int(r["components"]) if r["components"] is not None else len(evr),
    )


def run_basis(spark: SparkSession, wh: Warehouse, run: RunSettings) -> PCABasis:
    """The run's whole PCA basis (all k² components), read back from ``pca_basis``
    (``vector``; ``v0..v8`` for the rows of an older version)."""
    rows = sorted(wh.table("pca_basis").read(spark).where(F.col("run_id") == run.run_id).collect(),
                  key=lambda r: r["component"])
    d = parse_kernel(run.kernel) ** 2
    if len(rows) != d:
        raise AnalyzeError(f"run {run.run_id} has {len(rows)} basis rows, not {d}")
    vector = lambda r: r["vector"] if "vector" in r.__fields__ and r["vector"] is not None else [r[f"v{i}"] for i in range(N_WEIGHTS)]  # noqa: E731
    return PCABasis(
        mean=np.asarray(rows[0]["mean"], np.float64),
        components=np.asarray([vector(r) for r in rows], np.float64),
        explained_variance=np.asarray([r["explained_variance"] for r in rows], np.float64),
        explained_variance_ratio=np.asarray([r["explained_variance_ratio"] for r in rows], np.float64),
        n_filters=int(rows[0]["n_filters"]),
    )


def layer_groups(spark: SparkSession, wh: Warehouse) -> DataFrame:
    """The ``layer_groups`` view's rows (its :data:`schemas.VIEWS` query over the tables'
    own identifiers, so it needs no registration)."""
    query, _ = VIEWS["layer_groups"]
    return spark.sql(query.format(db=wh.schema_sql, models=wh.table("models").sql, layers=wh.table("layers").sql))


def layer_labels(spark: SparkSession, wh: Warehouse, by: dict[str, str], where: str | None = None) -> DataFrame:
    """``(model_id, layer_index, dimension, group_value)``: each layer's label in every
    dimension of ``by`` (name → SQL expression over ``layer_groups``), after ``where``."""
    frame = layer_groups(spark, wh)
    try:
        if where and where.strip():
            frame = frame.where(F.expr(where))
        parts = [frame.select("model_id", "layer_index", F.lit(name).alias("dimension"),
                              F.expr(group_label_sql(expr)).alias("group_value")) for name, expr in by.items()]
        out = parts[0]
        for part in parts[1:]:
            out = out.unionByName(part)
        out.schema  # resolve now: a bad expression is the user's error
    except PySparkException as err:
        raise OptionsError(f"bad grouping: {str(err).splitlines()[0]}") from err
    return out


def grouped_counts(histograms: DataFrame, labels: DataFrame, names: list[str], bins: int,
                   stats: bool = False, components: int = N_WEIGHTS) -> dict[tuple[int, str], GroupSummary]:
    """Sum ``histograms`` (``layer_histograms`` rows of one run) per group of ``labels``
    (one Spark aggregation; the labels, one row per layer and dimension, are broadcast).

    Returns per (index of the dimension in ``names``, label) a :class:`GroupSummary`
    whose ``hist`` is the in-range counts (components, bins) and ``n`` the filters; with
    ``stats`` also the per-component sum, sum of squares, min and max of the
    coefficients (``total``, ``total_sq``, ``lo``, ``hi``). A layer-component's sums
    repeat on each of its bin rows, so each row contributes ``count / n_filters`` of them.
    """
    share = F.col("count") / F.col("n_filters")
    counts = histograms.join(F.broadcast(labels), ["model_id", "layer_index"]).groupBy(
        "dimension", "group_value", "component", "bin"
    ).agg(
        F.sum("count").alias("count"), F.sum(share * F.col("coef_sum")).alias("s"),
        F.sum(share * F.col("coef_sumsq")).alias("ss"), F.min("coef_min").alias("lo"), F.max("coef_max").alias("hi"),
    ).toArrow()
    index = {name: i for i, name in enumerate(names)}
    keys = list(zip(counts.column("dimension").to_pylist(), counts.column("group_value").to_pylist()))
    uniq = sorted(set(keys))
    code = {key: j for j, key in enumerate(uniq)}
    g_idx = np.fromiter((code[key] for key in keys), np.intp, len(keys))
    column = lambda name, dtype: counts.column(name).to_numpy(zero_copy_only=False).astype(dtype)  # noqa: E731
    comp, b, c = column("component", np.intp), column("bin", np.intp), column("count", np.int64)
    hist = np.zeros((len(uniq), components, bins), np.int64)
    inside = (b >= 0) & (b < bins)
    np.add.at(hist, (g_idx[inside], comp[inside], b[inside]), c[inside])
    n = np.bincount(g_idx[comp == 0], weights=c[comp == 0], minlength=len(uniq)).astype(np.int64)
    out = {(index[d], label): GroupSummary(int(n[j]), hist[j]) for j, (d, label) in enumerate(uniq)}
    if stats:
        shape = (len(uniq), components)
        total, total_sq = np.zeros(shape), np.zeros(shape)
        low, high = np.full(shape, np.inf), np.full(shape, -np.inf)
        np.add.at(total, (g_idx, comp), column("s", np.float64))
        np.add.at(total_sq, (g_idx, comp), column("ss", np.float64))
        np.minimum.at(low, (g_idx, comp), column("lo", np.float64))
        np.maximum.at(high, (g_idx, comp), column("hi", np.float64))
        for j, (d, label) in enumerate(uniq):
            g = out[(index[d], label)]
            g.total, g.total_sq, g.lo, g.hi = total[j], total_sq[j], low[j], high[j]
    return out


def run_histograms(spark: SparkSession, wh: Warehouse, run_id: str) -> DataFrame:
    """The ``layer_histograms`` rows of one run."""
    table = wh.table("layer_histograms")
    if not table_exists(spark, table):
        raise AnalyzeError(f"no layer_histograms table in {wh.describe()}: run the analysis again (this version writes it)")
    return table.read(spark).where(F.col("run_id") == run_id)


@dataclass
class ShiftsOptions(WarehouseOptions):
    """``filterspark shifts``: the shift matrix of any grouping of a run's layers."""

    by: str = ""
    where: str | None = None
    run_id: str | None = None
    kernel: str | None = None  # the latest run of this kernel (default 3x3); a run_id knows its own

    def __post_init__(self) -> None:
        if not self.by or not self.by.strip():
            raise OptionsError("shifts needs --by: a SQL expression over the columns of models, layers and depth_decile")
        super().__post_init__()


@dataclass
class ShiftsResult:
    run: RunSettings
    rows: list[dict]
    note: str = BASIS_NOTE

    COLUMNS = ("group_a", "group_b", "shift", "kl_components", "n_a", "n_b", "small")


def shifts_by(spark: SparkSession, options: ShiftsOptions) -> ShiftsResult:
    """Both orders of every pair of groups of ``options.by`` (rows as in ``shifts``)."""
    wh = options.tables
    run = find_run(spark, wh, options.run_id, kernel=options.kernel)
    labels = layer_labels(spark, wh, {options.by: options.by}, options.where)
    groups = grouped_counts(run_histograms(spark, wh, run.run_id), labels, [options.by], run.bins,
                            components=run.components)
    if not groups:
        raise AnalyzeError(f"no layer of run {run.run_id} falls in any group of {options.by!r}"
                           + (f" where {options.where}" if options.where else ""))
    rows = shift_rows(run.fields, groups, [options.by], run.coefficient_evr, run.lo, run.hi, run.min_group_filters)
    return ShiftsResult(run, rows)


NEIGHBOUR_COLUMNS = ("rank", "neighbour_name", "shift", "neighbour_id", "neighbour_n_filters")


def nearest_models(spark: SparkSession, options: WarehouseOptions, model: str, run_id: str | None = None,
                   kernel: str | None = None) -> tuple[RunSettings, list]:
    """(the run — ``run_id``, else the latest of ``kernel`` —, ``model_neighbours`` rows of
    ``model`` — a name or a model id — by rank)."""
    wh = options.tables
    run = find_run(spark, wh, run_id, kernel=kernel)
    table = wh.table("model_neighbours")
    if not table_exists(spark, table):
        raise AnalyzeError(f"no model_neighbours table in {wh.describe()}: run the analysis again (this version writes it)")
    rows = table.read(spark).where(F.col("run_id") == run.run_id)
    match = F.col("name") == model
    if model.lstrip("-").isdigit():
        match = match | (F.col("model_id") == int(model))
    found = rows.where(match).orderBy("rank").collect()
    if not found:
        raise AnalyzeError(f"no model {model!r} in run {run.run_id} (names are models.name; the model must be ok "
                           "and in the run's scope)")
    return run, found
