"""Spark side of the figures: small pandas frames of aggregates for :mod:`filterspark.outputs.plots`.

Everything here reads registered tables (``<database>.<table>``, see
``session.register_tables``) and returns at most thousands of rows: analysis-table rows of
one run, layer quality rows, the first filters of each layer of ONE model, and the 2-D
coefficient histogram, whose counts are computed by the executors (only non-empty cells
reach the driver; filters never do).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from filterspark.delta.capabilities import set_job_description
from filterspark.delta.schemas import WEIGHT_COLUMNS
from filterspark.delta.warehouse import Warehouse
from filterspark.errors import ReportError
from filterspark.kernels.pca import PCABasis, project, scale_filters
from filterspark.kernels.shapes import DEFAULT_KERNEL
from filterspark.kernels.shifts import bin_edges
from filterspark.outputs.plots import basis_vectors

#: Tiles shown per layer in a filter grid (the first ``filter_index`` values).
MAX_TILES_PER_LAYER = 128

#: Model group of the quality figures: degenerated (any 3x3 layer flagged) or healthy.
HEALTH = "health"


def _q(database: str, table: str) -> str:
    return f"`{database}`.`{table}`"


def sql_literal(value) -> str:
    """A Python int/float/str as a Spark SQL literal. (Values are inlined: pyspark 4.2.0's
    ``spark.sql(query, args={...})`` leaves named markers unbound.)"""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def table_exists(spark, database: str, table: str) -> bool:
    return spark.catalog.tableExists(f"{database}.{table}")


def _runs(spark, database: str):
    """``analysis_runs`` with ``kernel`` never NULL (an older version's runs: 3x3)."""
    from pyspark.sql import functions as F

    runs = spark.table(f"{database}.analysis_runs")
    kernel = F.col("kernel") if "kernel" in runs.columns else F.lit(None).cast("string")
    return runs.withColumn("kernel", F.coalesce(kernel, F.lit(DEFAULT_KERNEL)))


def analysis_run(spark, database: str, run_id: str | None = None, scope: str = "all") -> dict | None:
    """The ``analysis_runs`` row to draw: ``run_id`` if given, else the latest 3x3 run of
    ``scope`` (for the default scope ``all``: else the latest 3x3 run of any scope); None
    when the warehouse has no 3x3 run at all. A requested run or scope that does not exist
    is a ValueError."""
    if not table_exists(spark, database, "analysis_runs"):
        if run_id or scope != "all":
            raise ReportError(f"no {database}.analysis_runs table: run the analysis first")
        return None
    runs = _runs(spark, database)
    if run_id:
        rows = runs.where(runs.run_id == run_id).collect()
        if not rows:
            raise ReportError(f"no analysis run {run_id!r} in {database}.analysis_runs")
        if rows[0]["kernel"] != DEFAULT_KERNEL:
            raise ReportError(f"run {run_id} analysed {rows[0]['kernel']} kernels: the report draws their basis with "
                              f"--kernel {rows[0]['kernel']} (its latest run)")
        return rows[0].asDict()
    runs = runs.where(runs.kernel == DEFAULT_KERNEL)
    row = runs.where(runs.scope == scope).orderBy(runs.run_id.desc()).first()
    if row is None and scope == "all":
        row = runs.orderBy(runs.run_id.desc()).first()
    elif row is None:
        raise ReportError(f"no analysis run of scope {scope!r} in {database}.analysis_runs")
    return None if row is None else row.asDict()


def kernel_runs(spark, database: str, scope: str = "all", kernels: Sequence[str] | None = None) -> list[dict]:
    """The latest run of ``scope`` of each kernel other than 3x3 that has one (``kernels``:
    only those), by kernel size."""
    if not table_exists(spark, database, "analysis_runs"):
        return []
    runs = _runs(spark, database)
    rows = runs.where((runs.scope == scope) & (runs.kernel != DEFAULT_KERNEL)).orderBy(runs.run_id.desc()).collect()
    latest: dict[str, dict] = {}
    for r in rows:
        latest.setdefault(r["kernel"], r.asDict())
    wanted = set(kernels) if kernels else set(latest)
    return [latest[k] for k in sorted(latest, key=lambda k: int(k.split("x")[0])) if k in wanted]


def run_frame(spark, database: str, table: str, run_id: str, columns: str = "*", where: str = "") -> pd.DataFrame:
    """Rows of one analysis table for one run (``where``: an extra SQL predicate)."""
    extra = f" AND ({where})" if where else ""
    return spark.sql(f"SELECT {columns} FROM {_q(database, table)} WHERE run_id = {sql_literal(run_id)}{extra}").toPandas()


def basis_from_frame(basis: pd.DataFrame) -> PCABasis:
    """The :class:`PCABasis` stored in ``pca_basis`` rows of one run."""
    b = basis.sort_values("component")
    return PCABasis(
        mean=np.asarray(b["mean"].iloc[0], dtype=np.float64),
        components=basis_vectors(b),
        explained_variance=b["explained_variance"].to_numpy(np.float64),
        explained_variance_ratio=b["explained_variance_ratio"].to_numpy(np.float64),
        n_filters=int(b["n_filters"].iloc[0]),
    )


def pair_counts(coeffs: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray) -> np.ndarray:
    """Joint counts (len(y_edges)-1, len(x_edges)-1) of coefficient pairs (n, 2), rows = y.

    Bin membership equals ``np.histogram``'s with the same edges (last bin closed, values
    outside dropped), so the marginals equal the per-component histograms.
    """
    counts, _, _ = np.histogram2d(coeffs[:, 1], coeffs[:, 0], bins=[y_edges, x_edges])
    return counts.astype(np.int64)


def coefficient_pair_histogram(
    spark, warehouse: Warehouse, run: dict, basis: PCABasis,
    components: tuple[int, int] = (0, 1), bins: int | None = None,
) -> pd.DataFrame:
    """2-D histogram of two components' coefficients over the run's scope, in Spark.

    The scope's filters (``analyze_job.analysis_input``: ok models, finite weights, the
    run's ``--where``) are projected per Arrow batch with the run's basis exactly as the
    analysis job projects them; each task emits its non-empty cells, Spark sums them.
    Default grid: the run's bins over its shared range, so the marginals equal the run's
    ``coefficient_histograms`` counts of group ``all``. Columns: see
    :func:`plots.coefficient_density`.
    """
    from filterspark.pipelines.analyze import ALL, AnalyzeOptions, analysis_input

    bins = int(bins or run["bins"])
    lo, hi = float(run["range_lo"]), float(run["range_hi"])
    edges = bin_edges(lo, hi, bins)
    cx, cy = components
    options = AnalyzeOptions(warehouse=warehouse.location, database=warehouse.database, catalog_name=warehouse.catalog,
                             where=None if run["scope"] == ALL else run["scope"])
    joined, _ = analysis_input(spark, options)

    def task(batches):
        import pyarrow as pa

        total = np.zeros((bins, bins), np.int64)
        for batch in batches:
            if batch.num_rows:
                w = np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in WEIGHT_COLUMNS])
                c = project(scale_filters(w.astype(np.float64)), basis)
                total += pair_counts(c[:, [cx, cy]], edges, edges)
        iy, ix = np.nonzero(total)
        yield pa.RecordBatch.from_arrays(
            [pa.array(ix.astype(np.int32)), pa.array(iy.astype(np.int32)), pa.array(total[iy, ix])],
            names=["ix", "iy", "count"],
        )

    set_job_description(spark, f"filterspark report: 2-D histogram c{cx} x c{cy}")
    cells = (
        joined.select(*WEIGHT_COLUMNS)
        .mapInArrow(task, "ix int, iy int, count long")
        .groupBy("ix", "iy").sum("count").withColumnRenamed("sum(count)", "count")
        .toPandas()
    )
    set_job_description(spark, None)
    cells = cells.sort_values(["iy", "ix"]).reset_index(drop=True)
    cells["count"] = cells["count"].astype(np.int64)
    return cells.assign(bins_x=bins, bins_y=bins, x_min=lo, x_max=hi, y_min=lo, y_max=hi)


def model_filters(spark, database: str, model_id: int, max_per_layer: int = MAX_TILES_PER_LAYER) -> pd.DataFrame:
    """The first ``max_per_layer`` filters of each layer of ONE model, with each layer's
    peak |w| over all its filters (``layer_peak``): bounded by the model's layer count."""
    peak = "greatest(" + ", ".join(f"abs({c})" for c in WEIGHT_COLUMNS) + ")"
    weights = ", ".join(f"f.{c}" for c in WEIGHT_COLUMNS)
    m, k = sql_literal(int(model_id)), sql_literal(int(max_per_layer))
    return spark.sql(
        f"""SELECT f.layer_index, f.filter_index, {weights}, p.layer_peak
            FROM {_q(database, 'filters')} f
            JOIN (SELECT layer_index, max({peak}) AS layer_peak FROM {_q(database, 'filters')}
                  WHERE model_id = {m} GROUP BY layer_index) p ON p.layer_index = f.layer_index
            WHERE f.model_id = {m} AND f.filter_index < {k}
            ORDER BY f.layer_index, f.filter_index"""
    ).toPandas()


def model_layers(spark, database: str, model_id: int) -> pd.DataFrame:
    """The 3x3 layers of one model (titles of its filter grid)."""
    return spark.sql(
        f"""SELECT layer_index, layer_name, out_channels, in_channels, n_filters FROM {_q(database, 'layers')}
            WHERE model_id = {sql_literal(int(model_id))} AND kernel_h = 3 AND kernel_w = 3 ORDER BY layer_index"""
    ).toPandas()


def model_groups(spark, database: str, group_bys: Sequence[str]) -> pd.DataFrame:
    """``model_id``, ``name`` and one label column per entry of ``group_bys`` for every ok
    model (one query). A group is :data:`HEALTH` (``degenerated`` when any of the model's
    3x3 layers is flagged, else ``healthy``), a column of ``models`` or a key of its
    ``metadata``; labels as the analysis job makes them (NULL and '' are ``(none)``)."""
    from pyspark.sql import functions as F

    from filterspark.pipelines.analyze import group_label_sql

    models = spark.table(f"{database}.models").where("status = 'ok'")
    unknown = [g for g in group_bys if g != HEALTH and g not in models.columns]
    if unknown:
        keys = {r[0] for r in models.select(F.explode(F.map_keys("metadata"))).distinct().collect()}
        missing = [g for g in unknown if g not in keys]
        if missing:
            raise ReportError(f"unknown model group {', '.join(missing)}: use {HEALTH}, a column of models or a "
                             f"metadata key ({', '.join(sorted(keys)) or 'none'})")
    labels = []
    for g in dict.fromkeys(group_bys):
        if g == HEALTH:
            label = F.when(F.col("share_degenerate") > 0, "degenerated").otherwise("healthy")
        elif g in models.columns:
            label = F.expr(group_label_sql(f"`{g}`"))
        else:
            label = F.expr(group_label_sql("metadata['" + g.replace("'", "\\'") + "']"))
        labels.append(label.alias(g))
    return models.select("model_id", "name", *labels).toPandas()


def layer_rows(spark, database: str) -> pd.DataFrame:
    """Quality columns of every 3x3 layer (``model_id``, ``layer_index``, ``layer_name``,
    ``conv_depth_norm``, its ``depth_decile`` as the analysis job labels it, ``n_filters``,
    the metrics and flags): one query; join :func:`model_groups` for the ok models."""
    from filterspark.pipelines.analyze import depth_decile

    layers = spark.table(f"{database}.layers").where("kernel_h = 3 AND kernel_w = 3")
    return layers.select(
        "model_id", "layer_index", "layer_name", "conv_depth_norm", depth_decile().alias("depth_decile"), "n_filters",
        "sparsity", "variance_entropy", "variance_entropy_norm", "variance_entropy_clean_norm",
        "degenerate_random", "degenerate_sparse", "degenerate_low_variety",
    ).toPandas()


def with_group(layers: pd.DataFrame, groups: pd.DataFrame, group_by: str) -> pd.DataFrame:
    """The layers of the ok models with their model's ``name`` and label of ``group_by``
    (a column of ``groups``) as ``group``, ordered by model name and layer."""
    merged = layers.merge(groups[["model_id", "name", group_by]].rename(columns={group_by: "group"}), on="model_id")
    return merged.sort_values(["name", "layer_index"], kind="stable").reset_index(drop=True)


def quality_layers(spark, database: str, group_by: str = HEALTH) -> pd.DataFrame:
    """Every 3x3 layer of the ok models with its model's ``name`` and ``group`` (see
    :func:`model_groups`) and the layer's ``depth_decile``: the frame of the quality figures."""
    return with_group(layer_rows(spark, database), model_groups(spark, database, [group_by]), group_by)
