"""The one SparkSession builder used by every job, notebook and test.

* Delta Lake is configured (SQL extension + catalog); its JARs come from the class path
  (``filterspark setup`` copies them into the installation's ``jars/``; Databricks, a
  cluster image, ``--jars``/``--packages``), else from Maven (``spark.jars.packages``, as
  ``delta.configure_spark_with_delta_pip`` does), see :mod:`filterspark.engine.delta_jars`.
* A master is set only when none was given (``spark-submit --master`` or
  ``spark.master`` in the conf win); the embedded default is ``local[*]``.
* ``remote``/``SPARK_REMOTE`` gives a Spark Connect session instead (the server owns
  its Delta and warehouse settings).
* The warehouse's tables are named in the new session by
  :func:`filterspark.delta.registry.register_tables` (path or catalog mode).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

from filterspark.delta import jvm
from filterspark.delta.capabilities import set_log_level
from filterspark.delta.registry import register_tables, served_warehouse
from filterspark.delta.sql_functions import register_functions
from filterspark.delta.warehouse import DEFAULT_DATABASE, DEFAULT_WAREHOUSE, Warehouse, warehouse_uri
from filterspark.engine.delta_jars import delta_maven_coordinate, delta_on_classpath, delta_submit_args, spark_home
from filterspark.engine.resources import is_local_master
from filterspark.errors import OptionsError, SessionError

#: JVM options of short-lived local drivers (the jobs, one CLI command): C1 only (no C2
#: compiler threads) and the serial collector (no concurrent GC threads; a 1-2 GB driver
#: heap of a job whose bulk work runs in Python workers). On two cores each cut a cold
#: Delta count's CPU by a quarter or more, and a demo extraction's wall time by 11%; but
#: work that runs long inside a local JVM runs at half speed without C2 (a warm 20M-row
#: aggregate, Spark's Delta writer): benchmarks/README.md, *Whole processes*.
SHORT_LIVED_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
#: ... and of sessions that live long (notebooks, a library session, servers): the JVM's
#: own defaults, C2 and a concurrent collector.
LONG_LIVED_JVM_OPTIONS = "-XX:TieredStopAtLevel=4 -XX:+UseG1GC"

#: Spark settings applied when running in local mode and not set by the user.
#: ``conf/local.conf`` carries the same values for ``spark-submit --properties-file``.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.memory": "2g",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
    # A short-lived local driver is done before C2's compilations pay back; they took
    # a third of a cold Delta count's CPU on two cores (benchmarks/README.md). A session
    # built to live long (build_session's default) takes LONG_LIVED_JVM_OPTIONS instead.
    "spark.driver.defaultJavaOptions": SHORT_LIVED_JVM_OPTIONS,
}

DELTA_SETTINGS: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def remote_url(remote: str | None = None) -> str | None:
    """The Spark Connect URL to use: ``remote``, else Spark's own ``SPARK_REMOTE``, else None."""
    url = remote or os.environ.get("SPARK_REMOTE") or None
    if url and not url.startswith("sc://"):
        raise OptionsError(f"remote must be a Spark Connect URL (sc://host:port), not {url!r}")
    return url


def configure_builder(
    builder,
    warehouse: str | None = None,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    extra_packages: list[str] | None = None,
    preset: Mapping[str, str] | None = None,
    short_lived: bool = True,
):
    """Configure a classic ``SparkSession.Builder`` for filterspark and return it: Delta's SQL
    extension and catalog, its JARs unless they are on the classpath already, the
    warehouse directory, and small-machine settings for local masters that the user's
    own configuration (``preset``: spark-submit flags, properties files) does not set;
    ``short_lived`` False: the JVM's own compiler and collector (a notebook, a server).
    A master is set only when none was given; the embedded default is ``local[*]``."""
    preset = dict(preset or {})
    settings: dict[str, str] = {}
    given_master = master or preset.get("spark.master")
    if not given_master:
        given_master = "local[*]"
        settings["spark.master"] = given_master
    elif master:
        settings["spark.master"] = master
    if is_local_master(given_master):
        settings.update({k: v for k, v in LOCAL_DEFAULTS.items() if k not in preset})
        if not short_lived and "spark.driver.defaultJavaOptions" in settings:
            settings["spark.driver.defaultJavaOptions"] = LONG_LIVED_JVM_OPTIONS
    settings.update(DELTA_SETTINGS)
    if warehouse:
        settings["spark.sql.warehouse.dir"] = warehouse_uri(warehouse)
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    if not delta_on_classpath({**preset, **settings}):
        if os.environ.get("PYSPARK_GATEWAY_PORT") and not jvm.delta_on_driver_classpath():
            raise SessionError(
                "Delta Lake is not on this spark-submit's classpath. Run `filterspark setup` once "
                f"(adds it to this Spark's spark-defaults.conf) or pass --packages {delta_maven_coordinate()}"
            )
        builder = builder.config("spark.jars.packages", ",".join([delta_maven_coordinate(), *(extra_packages or [])]))
    return builder


#: The Spark Connect server's main class (pip's pyspark ships it).
CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


def connect_server_command(
    port: int,
    host: str = "127.0.0.1",
    master: str = "local[*]",
    conf: Mapping[str, str] | None = None,
    properties_file: str | None = None,
) -> list[str]:
    """The ``spark-submit`` command line of a Spark Connect server with Delta configured
    (its JARs from the installation or by Maven coordinate, the SQL extension and catalog), bound to ``host:port``.
    ``conf`` is added last (it wins); clients then connect to ``sc://host:port``."""
    spark_submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    command = [spark_submit if os.path.exists(spark_submit) else "spark-submit", "--class", CONNECT_SERVER_CLASS,
               "--master", master, *delta_submit_args()]
    if properties_file:
        command += ["--properties-file", str(properties_file)]
    settings = {
        **DELTA_SETTINGS,
        "spark.connect.grpc.binding.address": host,
        "spark.connect.grpc.binding.port": str(port),
        "spark.pyspark.python": sys.executable,
        "spark.driver.defaultJavaOptions": LONG_LIVED_JVM_OPTIONS,
        **(conf or {}),
    }
    for key, value in settings.items():
        command += ["--conf", f"{key}={value}"]
    return command + ["spark-internal"]


def build_session(
    app_name: str = "filterspark",
    warehouse: str | None = None,
    database: str = DEFAULT_DATABASE,
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    extra_packages: list[str] | None = None,
    remote: str | None = None,
    catalog: str | None = None,
    default_warehouse: str | None = None,
    short_lived: bool = False,
):
    """Return a Delta-enabled SparkSession with the project's SQL functions and the
    warehouse's tables registered.

    ``short_lived``: a JVM started here for one command (the CLI) gets the fast-starting
    JVM options of :data:`SHORT_LIVED_JVM_OPTIONS` in local mode; otherwise (a notebook,
    a library session) the JVM's defaults, whose C2 compiler pays back in a long session.

    ``remote`` (or ``SPARK_REMOTE``) connects to a Spark Connect server instead of starting
    a driver here; the server's own Delta and warehouse settings then apply. An already
    running classic session is reused (notebooks, Databricks, tests) as it is.
    ``catalog`` selects catalog mode (tables managed as ``catalog.database.table``).
    ``default_warehouse`` is registered when ``warehouse`` is None, except on a Connect
    session to a ``filterspark serve`` server of ``database``: its warehouse is used then.
    Without either, no warehouse is registered.
    """
    from pyspark.sql import SparkSession

    wh = Warehouse(warehouse or DEFAULT_WAREHOUSE, database, catalog) if (warehouse or catalog) else None
    warehouse = warehouse or default_warehouse
    url = remote_url(remote)
    if url:
        spark = SparkSession.builder.remote(url).getOrCreate()
    else:
        spark = SparkSession.getActiveSession()
        if spark is None:
            preset = jvm.submitted_conf()
            master_given = master or preset.get("spark.master") or "local[*]"
            if is_local_master(master_given):
                os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
                # Local executors must run the interpreter that has this project installed
                # (pyspark takes the workers' interpreter from PYSPARK_PYTHON, default python3).
                os.environ.setdefault("PYSPARK_PYTHON", preset.get("spark.pyspark.python", sys.executable))
            builder = configure_builder(
                SparkSession.builder.appName(app_name), None if catalog else warehouse, master, conf,
                extra_packages, preset, short_lived,
            )
            spark = builder.getOrCreate()
            set_log_level(spark, os.environ.get("FILTERSPARK_LOG_LEVEL", "WARN"))
    if wh is None and default_warehouse:
        wh = Warehouse(warehouse_in_use(spark, None, database, default_warehouse), database)
    if wh is not None:
        register_tables(spark, wh)  # registers the functions too
    else:
        register_functions(spark)
    return spark


def warehouse_in_use(spark, warehouse: str | None, database: str = DEFAULT_DATABASE,
                     default: str = DEFAULT_WAREHOUSE) -> str:
    """The warehouse a command works on: ``warehouse`` when given, else the one a
    ``filterspark serve`` server serves as ``database`` to this session, else ``default``."""
    return warehouse or served_warehouse(spark, database) or default


SETUP_MARK = "# added by `filterspark setup`"


def install_spark_defaults(home: str | None = None, local_jars: bool = True) -> Path:
    """Add Delta Lake to ``<SPARK_HOME>/conf/spark-defaults.conf`` so plain ``spark-submit``
    (which starts its JVM before any Python runs) gets the Delta SQL settings, the JVM
    options of a short-lived driver (an installation default: a cluster's own
    configuration or ``--conf`` replaces it), and Delta's Maven package unless
    ``local_jars`` (the JARs are in the installation's ``jars/``: no JVM runs Ivy).

    The lines under its ``# added by `filterspark setup``` comment are rewritten each time;
    every other line is kept, and a key set there is not added again. Returns the file's path.
    """
    conf_dir = Path(os.environ.get("SPARK_CONF_DIR") or spark_home(home) / "conf")
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / "spark-defaults.conf"
    lines = path.read_text().splitlines() if path.exists() else []
    kept, in_block = [], False
    for line in lines:  # the block under setup's comment is setup's own: written anew
        if line.startswith(SETUP_MARK):
            in_block = True
        elif not line.strip() or line.lstrip().startswith("#"):
            in_block = False
            kept.append(line)
        elif not in_block:
            kept.append(line)
    present = {line.split()[0] for line in kept if line.strip() and not line.lstrip().startswith("#")}
    wanted = {**DELTA_SETTINGS, "spark.driver.defaultJavaOptions": SHORT_LIVED_JVM_OPTIONS}
    if not local_jars:
        wanted["spark.jars.packages"] = delta_maven_coordinate()
    added = [f"{k} {v}" for k, v in wanted.items() if k not in present]
    if added:
        kept += [f"{SETUP_MARK}: Delta Lake and driver defaults for spark-submit", *added]
    if kept != lines:
        path.write_text("\n".join(kept) + "\n")
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
