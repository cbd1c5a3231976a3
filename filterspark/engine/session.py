"""The one SparkSession builder used by every job, notebook and test.

* Delta Lake is configured (SQL extension + catalog); its JARs are resolved from Maven
  (``spark.jars.packages``, as ``delta.configure_spark_with_delta_pip`` does) unless they
  are already on the classpath (Databricks, a cluster image, ``--jars``/``--packages``,
  or the spark-defaults.conf that ``filterspark setup`` writes for spark-submit).
* A master is set only when none was given (``spark-submit --master`` or
  ``spark.master`` in the conf win); the embedded default is ``local[*]``.
* Tables live under the warehouse directory as ``<warehouse>/<database>.db/<table>``
  and are registered by name (``filterdb.filters``) in every new session by
  :func:`register_tables`. No Hive/Derby metastore is needed, so any number of jobs can
  use the same local warehouse at once; on a cluster with a real metastore the same
  ``CREATE ... IF NOT EXISTS`` statements are no-ops once the tables are known.
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Mapping

DEFAULT_DATABASE = "filterdb"
DEFAULT_WAREHOUSE = "warehouse"

#: Spark settings applied when running in local mode and not set by the user.
#: ``conf/local.conf`` carries the same values for ``spark-submit --properties-file``.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": "2g",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
}

DELTA_SETTINGS: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def delta_maven_coordinate() -> str:
    """Maven coordinate of the Delta JAR matching the installed pyspark and delta-spark."""
    from importlib.metadata import version

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


def _delta_class_loadable() -> bool:
    """Under spark-submit the JVM already runs: ask it whether Delta's classes are there."""
    from pyspark import SparkContext

    SparkContext._ensure_initialized()
    try:
        SparkContext._jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension")
        return True
    except Exception:
        return False


def _delta_on_classpath(preset: Mapping[str, str]) -> bool:
    """True when Delta's JARs need no Maven resolution (Databricks or already supplied)."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    for key in ("spark.jars", "spark.jars.packages"):
        if "delta-spark" in preset.get(key, "") or "delta-core" in preset.get(key, ""):
            return True
    homes = [os.environ.get("SPARK_HOME", "")]
    try:
        import pyspark

        homes.append(os.path.dirname(pyspark.__file__))
    except ImportError:  # pragma: no cover
        pass
    return any(glob.glob(os.path.join(h, "jars", "delta-spark*.jar")) for h in homes if h)


def _preset_conf() -> dict[str, str]:
    """Settings already given to this driver (spark-submit flags, properties file).

    Only read when spark-submit started the JVM (``PYSPARK_GATEWAY_PORT`` set): reading a
    ``SparkConf`` otherwise would launch a JVM before the Delta packages are configured.
    """
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return {}
    from pyspark import SparkConf, SparkContext

    # Connect to spark-submit's running JVM first: without a gateway SparkConf() is an
    # empty Python-side conf and would hide --packages/--jars/spark-defaults.conf.
    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def warehouse_uri(warehouse: str) -> str:
    """A warehouse given as a filesystem URI is kept; a plain path is made absolute.

    Plain paths stay scheme-less so Spark resolves them on its default filesystem
    (the local disk in local mode, HDFS/DBFS on a cluster).
    """
    if ":" in warehouse.split("/")[0]:
        return warehouse.rstrip("/")
    return str(Path(warehouse).expanduser().resolve())


def _same_location(a: str, b: str) -> bool:
    """Compare locations written as ``/p``, ``file:/p`` or ``file:///p``."""

    def norm(loc: str) -> str:
        if loc.startswith("file:"):
            loc = "/" + loc[len("file:"):].lstrip("/")
        return loc.rstrip("/")

    return norm(a) == norm(b)


def table_path(warehouse: str, database: str, table: str) -> str:
    """Storage location of one table: ``<warehouse>/<database>.db/<table>``."""
    return f"{warehouse_uri(warehouse)}/{database}.db/{table}"


def build_session(
    app_name: str = "filterspark",
    warehouse: str | None = None,
    database: str = DEFAULT_DATABASE,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    extra_packages: list[str] | None = None,
):
    """Return a Delta-enabled SparkSession with the warehouse's tables registered.

    An already running session is reused (notebooks, Databricks, tests); its Delta and
    warehouse settings are then taken as they are.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        if warehouse:
            register_tables(active, warehouse, database)
        return active

    preset = _preset_conf()
    settings: dict[str, str] = {}
    given_master = master or preset.get("spark.master")
    if not given_master:
        given_master = "local[*]"
        settings["spark.master"] = given_master
    elif master:
        settings["spark.master"] = master
    if given_master.startswith("local"):
        for key, value in LOCAL_DEFAULTS.items():
            if key not in preset:
                settings[key] = value
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Local executors must run the interpreter that has this project installed
        # (pyspark takes the workers' interpreter from PYSPARK_PYTHON, default python3).
        os.environ.setdefault("PYSPARK_PYTHON", preset.get("spark.pyspark.python", sys.executable))
    settings.update(DELTA_SETTINGS)
    if warehouse:
        settings["spark.sql.warehouse.dir"] = warehouse_uri(warehouse)
    settings.update(conf or {})

    builder = SparkSession.builder.appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    if not _delta_on_classpath({**preset, **settings}):
        if os.environ.get("PYSPARK_GATEWAY_PORT") and not _delta_class_loadable():
            raise RuntimeError(
                "Delta Lake is not on this spark-submit's classpath. Run `filterspark setup` once "
                f"(adds it to this Spark's spark-defaults.conf) or pass --packages {delta_maven_coordinate()}"
            )
        packages = ",".join([delta_maven_coordinate(), *(extra_packages or [])])
        builder = builder.config("spark.jars.packages", packages)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("FILTERSPARK_LOG_LEVEL", "WARN"))
    if warehouse:
        register_tables(spark, warehouse, database)
    return spark


def _list_table_dirs(spark, db_location: str) -> list[str]:
    """Sub-directories of ``db_location`` that hold a Delta log (any Hadoop filesystem)."""
    jvm = spark._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(db_location)
    fs = hpath.getFileSystem(spark._jsc.hadoopConfiguration())
    if not fs.exists(hpath):
        return []
    names = []
    for status in fs.listStatus(hpath):
        if status.isDirectory():
            child = status.getPath()
            if fs.exists(jvm.org.apache.hadoop.fs.Path(child, "_delta_log")):
                names.append(child.getName())
    return sorted(names)


#: (Spark application id, database) → the warehouse URI its names were last registered for.
_REGISTERED: dict[tuple[str, str], str] = {}


def registered_warehouse(spark, database: str = DEFAULT_DATABASE) -> str | None:
    """The warehouse (URI) whose tables :func:`register_tables` last named in ``database``
    in this Spark application, or None."""
    return _REGISTERED.get((spark.sparkContext.applicationId, database))


def register_tables(spark, warehouse: str, database: str = DEFAULT_DATABASE) -> list[str]:
    """Register every Delta table under ``<warehouse>/<database>.db`` as ``database.table``."""
    db_location = f"{warehouse_uri(warehouse)}/{database}.db"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}` LOCATION '{db_location}'")
    names = _list_table_dirs(spark, db_location)
    for name in names:
        location = f"{db_location}/{name}"
        qualified = f"`{database}`.`{name}`"
        current = _registered_location(spark, database, name)
        if current is not None and not _same_location(current, location):
            # Registered for another warehouse earlier in this session: re-point it. The
            # table is external (LOCATION), so dropping the registration keeps its data.
            spark.sql(f"DROP TABLE {qualified}")
        spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified} USING DELTA LOCATION '{location}'")
    _drop_stale_names(spark, database, db_location, names)
    _register_views(spark, database, names)
    _REGISTERED[(spark.sparkContext.applicationId, database)] = warehouse_uri(warehouse)
    return names


def _drop_stale_names(spark, database: str, db_location: str, names: list[str]) -> None:
    """Unregister the external tables of ``database`` that point outside ``db_location``
    and have no table there: names left from another warehouse (a reused session, or a
    persistent metastore) must not answer for this one. Their data is kept."""
    for table in spark.catalog.listTables(database):
        if table.isTemporary or table.tableType != "EXTERNAL" or table.name in names:
            continue
        location = _registered_location(spark, database, table.name)
        if location is not None and not _same_location(location.rsplit("/", 1)[0], db_location):
            spark.sql(f"DROP TABLE `{database}`.`{table.name}`")


def _register_views(spark, database: str, tables: list[str]) -> None:
    """Create the views of ``schemas.VIEWS`` whose tables exist (views are session-scoped
    without a metastore, so every session defines them again; a no-op change with one),
    and drop those whose tables do not."""
    from filterspark.delta.schemas import VIEWS

    for view, (query, needs) in VIEWS.items():
        if all(t in tables for t in needs):
            spark.sql(f"CREATE OR REPLACE VIEW `{database}`.`{view}` AS {query.format(db=database)}")
        else:
            spark.sql(f"DROP VIEW IF EXISTS `{database}`.`{view}`")


def _registered_location(spark, database: str, name: str) -> str | None:
    """Location of ``database.name`` in this session's catalog, or None if not registered."""
    if not spark.catalog.tableExists(f"{database}.{name}"):
        return None
    for row in spark.sql(f"DESCRIBE TABLE EXTENDED `{database}`.`{name}`").collect():
        if row[0] == "Location":
            return row[1]
    return None


def install_spark_defaults(spark_home: str | None = None) -> Path:
    """Add Delta Lake to ``<SPARK_HOME>/conf/spark-defaults.conf`` so plain ``spark-submit``
    (which starts its JVM before any Python runs) gets the Delta JARs and SQL settings.

    Keeps every existing line; adds only the missing keys. Returns the file's path.
    """
    import pyspark

    home = Path(spark_home or os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__))
    conf_dir = Path(os.environ.get("SPARK_CONF_DIR") or home / "conf")
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "spark-defaults.conf"
    lines = path.read_text().splitlines() if path.exists() else []
    present = {line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")}
    wanted = {"spark.jars.packages": delta_maven_coordinate(), **DELTA_SETTINGS}
    added = [f"{k} {v}" for k, v in wanted.items() if k not in present]
    if added:
        lines += ["# added by `filterspark setup`: Delta Lake for spark-submit", *added]
        path.write_text("\n".join(lines) + "\n")
    log_config = conf_dir / "log4j2.properties"
    if not log_config.exists():
        # spark-submit otherwise logs at INFO; keep job output readable like pyspark's.
        log_config.write_text(
            "# added by `filterspark setup`\n"
            "rootLogger.level = warn\n"
            "rootLogger.appenderRef.stdout.ref = console\n"
            "appender.console.type = Console\n"
            "appender.console.name = console\n"
            "appender.console.target = SYSTEM_ERR\n"
            "appender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex\n"
        )
    return path
