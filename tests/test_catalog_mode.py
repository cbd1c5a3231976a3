"""Catalog mode: tables managed by the session's catalog as ``<catalog>.<database>.<table>``
(Unity Catalog's three-level names; ``spark_catalog`` here), created with CREATE TABLE and
found by name, with no path registration."""
from __future__ import annotations

from pathlib import Path

from compare import assert_same_analysis, assert_same_tables

CATALOG, DATABASE = "spark_catalog", "filterdb_managed"


def test_catalog_mode_writes_and_reads_managed_tables(spark, demo_warehouse, analyzed_warehouse, tmp_path, capsys):
    from filterspark import AnalyzeOptions, ExtractOptions, read_catalog, run_analysis, run_extraction
    from filterspark.cli import main

    location = tmp_path / "managed"
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {CATALOG}.{DATABASE} LOCATION '{location}'")
    unused = tmp_path / "no-warehouse"
    try:
        options = ExtractOptions(warehouse=str(unused), database=DATABASE, catalog_name=CATALOG)
        report = run_extraction(spark, read_catalog(demo_warehouse["catalog"]), options)
        assert report.ok == demo_warehouse["report"].ok and report.write == "files"  # the fast path applies too
        run_analysis(spark, AnalyzeOptions(warehouse=str(unused), database=DATABASE, catalog_name=CATALOG))
        assert not unused.exists()  # nothing written under a warehouse directory

        tables = {t.name: t.tableType for t in spark.catalog.listTables(f"{CATALOG}.{DATABASE}")}
        assert {n: k for n, k in tables.items() if k != "VIEW"} == dict.fromkeys(
            ["analysis_runs", "coefficient_histograms", "coefficient_stats", "filters", "kernels", "layer_histograms",
             "layers", "model_neighbours", "model_shifts", "models", "pca_basis", "shifts"], "MANAGED")
        assert tables["shifts_latest"] == "VIEW"
        for name in ("models", "filters", "shifts"):
            detail = spark.sql(f"DESCRIBE DETAIL {CATALOG}.{DATABASE}.{name}").first()
            assert Path(detail["location"].replace("file:", "")) == location / name
        assert_same_tables(spark, demo_warehouse["warehouse"], str(location))
        assert_same_analysis(spark, analyzed_warehouse["warehouse"], str(location))

        capsys.readouterr()
        assert main(["sql", "--catalog-name", CATALOG, "--database", DATABASE,
                     f"SELECT count(*) AS n FROM {CATALOG}.{DATABASE}.filters"]) == 0
        assert f"\n{demo_warehouse['report'].filters_written}" in capsys.readouterr().out
        assert main(["sql", "--catalog-name", CATALOG, "--database", DATABASE,
                     f"SELECT count(*) AS n FROM {CATALOG}.{DATABASE}.kernels WHERE k = 7"]) == 0
        assert "\n272" in capsys.readouterr().out
        again = run_extraction(spark, read_catalog(demo_warehouse["catalog"]), options)
        assert again.extracted == 0 and again.skipped == demo_warehouse["report"].models_total
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS {CATALOG}.{DATABASE} CASCADE")
