"""Shared fixtures: ONE SparkSession per test run, one demo zoo, one extracted warehouse."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

REPO = Path(__file__).resolve().parents[1]

TEST_SPARK_CONF = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.sql.adaptive.coalescePartitions.initialPartitionNum": "2",
}


@pytest.fixture(scope="session")
def spark():
    from filterspark.engine.session import build_session

    # the suite's JVM options as one job's (C1 only): the suite runs many small queries
    session = build_session(app_name="filterspark-tests", master="local[2]", conf=TEST_SPARK_CONF, short_lived=True)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def demo_zoo(tmp_path_factory) -> Path:
    """The demo zoo, built once per run; returns the catalog path."""
    from filterspark.demo.zoo import build_demo_zoo

    return Path(build_demo_zoo(tmp_path_factory.mktemp("zoo")))


@pytest.fixture(scope="session")
def demo_warehouse(spark, demo_zoo, tmp_path_factory):
    """A warehouse with the demo zoo extracted into it (database ``filterdb``)."""
    from filterspark.sources.catalog import read_catalog
    from filterspark.pipelines.extract import ExtractOptions, run_extraction

    warehouse = str(tmp_path_factory.mktemp("warehouse"))
    report = run_extraction(spark, read_catalog(demo_zoo), ExtractOptions(warehouse=warehouse))
    return {"warehouse": warehouse, "database": "filterdb", "report": report, "catalog": demo_zoo}


@pytest.fixture
def use_warehouse(spark):
    """Point the session's ``filterdb`` tables at a warehouse (tests share one session)."""
    from filterspark.delta.registry import register_tables

    def _use(warehouse: str, database: str = "filterdb") -> None:
        register_tables(spark, warehouse, database)

    return _use


@pytest.fixture(scope="session")
def analyzed_warehouse(spark, demo_warehouse, tmp_path_factory):
    """A copy of the demo warehouse (``demo_warehouse`` stays untouched) with one analysis
    run (default dimensions) written; ``analysis`` is the run's AnalyzeReport."""
    import shutil

    from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis
    from filterspark.delta.registry import register_tables

    warehouse = str(tmp_path_factory.mktemp("analyzed") / "warehouse")
    shutil.copytree(demo_warehouse["warehouse"], warehouse)
    register_tables(spark, warehouse)
    report = run_analysis(spark, AnalyzeOptions(warehouse=warehouse))
    return {**demo_warehouse, "warehouse": warehouse, "analysis": report}


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    """One Spark Connect server (local[2], Delta, the test settings) for the whole run; the
    Connect tests drive it from separate client processes (``filterspark ... --remote``),
    as users do, since a Connect client switches pyspark in its process to Connect mode."""
    from clusters import ConnectServer

    root = tmp_path_factory.mktemp("connect")
    server = ConnectServer(root, "local[2]", {**TEST_SPARK_CONF, "spark.sql.warehouse.dir": str(root / "spark-warehouse")})
    try:
        server.start()
        print(f"\n[timing] Spark Connect server listening after {server.started_in:.1f} s")
        yield server
    finally:
        server.stop()
