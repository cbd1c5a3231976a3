"""What a session can do: classic (a JVM in this process, ``sparkContext``) or Spark Connect
(DataFrame/SQL only). Every classic-only call of the project goes through here or through
:mod:`filterspark.delta.jvm`, so the rest of the code runs unchanged on both."""
from __future__ import annotations

import re

from pyspark.sql import SparkSession


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (Databricks serverless, standard access mode,
    Databricks Connect, ``SparkSession.builder.remote(...)``)."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # the [connect] extras are missing: cannot be a Connect session
        return False
    return isinstance(spark, ConnectSession)


def session_key(spark: SparkSession) -> str:
    """An id of the catalog state names are registered in: the application id of a classic
    session, the session id of a Connect one."""
    return str(spark.session_id) if is_connect(spark) else spark.sparkContext.applicationId


def session_conf(spark: SparkSession) -> dict[str, str]:
    """Every Spark setting the session knows (static ones such as ``spark.master`` and
    ``spark.executor.resource.*`` included)."""
    if is_connect(spark):
        return dict(spark.conf.getAll)
    return dict(spark.sparkContext.getConf().getAll())


def default_parallelism(spark: SparkSession, conf: dict[str, str] | None = None) -> int:
    """The cluster's task slots, as ``sparkContext.defaultParallelism`` gives them; on
    Connect from ``spark.default.parallelism`` or a ``local[N]`` master, else from the
    partitions Spark itself gives a default ``range`` (one small job)."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    conf = conf if conf is not None else session_conf(spark)
    if conf.get("spark.default.parallelism"):
        return int(conf["spark.default.parallelism"])
    match = re.fullmatch(r"local\[(\d+)(?:,\d+)?\]", conf.get("spark.master", ""))
    if match:
        return int(match.group(1))
    from pyspark.sql import functions as F

    return int(spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p")).distinct().count())


def set_job_description(spark: SparkSession, text: str | None) -> None:
    """Name the next Spark jobs in the UI (classic sessions; Connect clients cannot)."""
    if not is_connect(spark):
        spark.sparkContext.setJobDescription(text)


def set_log_level(spark: SparkSession, level: str) -> None:
    """The driver's log level (classic sessions; a Connect server keeps its own)."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel(level)
