"""Table comparisons shared by the cluster and Spark Connect tests: the same tables written
by two runs (another cluster manager, another client), equal row for row."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def tables_root(warehouse: str) -> str:
    """The directory holding the tables: ``<warehouse>/filterdb.db`` for a path-mode
    warehouse, or the directory itself when it holds them (a catalog-mode schema's location)."""
    return warehouse if os.path.isdir(os.path.join(warehouse, "models", "_delta_log")) else f"{warehouse}/filterdb.db"


VOLATILE = {"models": ["device", "device_note", "extracted_at", "extraction_seconds"], "layers": [], "filters": [],
            "kernels": []}


def comparable(spark, warehouse: str, table: str, model_ids: list[int] | None = None):
    """A table with map columns made comparable (sorted entries) and run-specific columns dropped."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import MapType

    df = spark.read.format("delta").load(f"{tables_root(warehouse)}/{table}").drop(*VOLATILE[table])
    if model_ids is not None:
        df = df.where(F.col("model_id").isin(model_ids))
    for f in df.schema.fields:
        if isinstance(f.dataType, MapType):
            df = df.withColumn(f.name, F.array_sort(F.map_entries(F.col(f.name))))
    return df


def assert_same_tables(spark, expected_wh: str, actual_wh: str, model_ids: list[int] | None = None) -> dict[str, int]:
    """Row-for-row equality (duplicates count) of the four extraction tables (optionally
    of the expected warehouse's rows of ``model_ids`` only)."""
    counts = {}
    for table in ("models", "layers", "filters", "kernels"):
        a, b = comparable(spark, expected_wh, table, model_ids), comparable(spark, actual_wh, table)
        na, nb = a.count(), b.count()
        assert na == nb, f"{table}: {nb} rows, expected {na}"
        assert a.exceptAll(b).count() == 0 and b.exceptAll(a).count() == 0, f"{table} differs"
        counts[table] = nb
    for table in ("filters", "kernels"):
        keys = spark.read.format("delta").load(f"{tables_root(actual_wh)}/{table}")
        assert keys.select("model_id", "layer_index", "filter_index").distinct().count() == counts[table], table
    return counts


#: Columns of the analysis tables that differ between two runs of the same analysis.
RUN_VOLATILE = ("run_id", "run_at", "finished_at", "seconds", "extracted_at")
#: Analysis tables and the columns that identify a row within one run.
ANALYSIS_KEYS = {
    "pca_basis": ["component"],
    "coefficient_histograms": ["dimension", "group_value", "component", "bin"],
    "coefficient_stats": ["dimension", "group_value", "component"],
    "shifts": ["dimension", "group_a", "group_b"],
    "model_shifts": ["model_id", "dimension", "group_value"],
    "layer_histograms": ["model_id", "layer_index", "component", "bin"],
    "model_neighbours": ["model_id", "rank"],
    "analysis_runs": [],
}


def latest_run(spark, warehouse: str, table: str):
    """The rows of ``table`` of the warehouse's latest analysis run, as pandas."""
    path = tables_root(warehouse)
    run_id = spark.read.format("delta").load(f"{path}/analysis_runs").agg({"run_id": "max"}).first()[0]
    return spark.read.format("delta").load(f"{path}/{table}").where(f"run_id = '{run_id}'").toPandas()


def assert_same_analysis(spark, expected_wh: str, actual_wh: str, rtol: float = 1e-9) -> dict[str, int]:
    """Every analysis table of the two warehouses' latest runs equal: keys and texts exactly,
    numbers to ``rtol`` (the merge order of partial sums may differ)."""
    counts = {}
    for table, keys in ANALYSIS_KEYS.items():
        a = latest_run(spark, expected_wh, table).drop(columns=list(RUN_VOLATILE), errors="ignore")
        b = latest_run(spark, actual_wh, table).drop(columns=list(RUN_VOLATILE), errors="ignore")
        assert list(a.columns) == list(b.columns), table
        assert len(a) == len(b), f"{table}: {len(b)} rows, expected {len(a)}"
        if keys:
            a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
        for column in a.columns:
            x, y = a[column].tolist(), b[column].tolist()
            _assert_close(x, y, rtol, f"{table}.{column}")
        counts[table] = len(b)
    return counts


def _assert_close(x, y, rtol: float, what: str) -> None:
    for i, (u, v) in enumerate(zip(x, y)):
        if isinstance(u, (float, np.floating)) or isinstance(v, (float, np.floating)):
            if u is None or v is None or (np.isnan(u) and np.isnan(v)):
                assert (u is None) == (v is None) or (np.isnan(u) and np.isnan(v)), f"{what}[{i}]: {u} != {v}"
                continue
            assert np.isclose(u, v, rtol=rtol, atol=1e-12), f"{what}[{i}]: {u} != {v}"
        elif isinstance(u, (list, tuple, np.ndarray)):
            _assert_close(list(u), list(v), rtol, f"{what}[{i}]")
            assert len(u) == len(v), f"{what}[{i}]: lengths differ"
        else:
            assert u == v, f"{what}[{i}]: {u!r} != {v!r}"


def readme_sql(marker: str) -> str:
    """The SQL block of README.md that follows ``<!-- marker -->``."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\s*```sql\n(.*?)```", text, re.S)
    assert match, f"README has no SQL block marked {marker}"
    return match.group(1).strip()
