"""The classic session's fast paths through Delta's own JVM classes (Py4J): the only
module of the project that touches ``_jvm``/``_jsparkSession``.

* :func:`snapshot_detail`: a table's location, properties, features and file count from
  the latest snapshot on the driver's JVM, with no Spark job (``DESCRIBE DETAIL`` runs
  one: ~0.8 s per table, measured).
* :func:`replace_files` / :func:`rewrite_rows`: one Delta transaction
  (``DeltaLog.startTransaction`` → ``commit``) that adds Parquet files written by
  pyarrow and removes the files they replace. The log, its conflict checks, checkpoints
  and history stay Delta's; we only supply the ``add`` actions (with exact per-file
  statistics) and say which partitions they replace.
* :func:`resolve_packages`, :func:`start_thrift_server` and :func:`context_stopped`:
  what ``filterspark serve`` needs of the driver's JVM (Spark's own package
  resolution, ``HiveThriftServer2.startWithContext``).

Callers ask :func:`unavailable_reason` first: None means these paths work on this
session; otherwise they take the public-API path (``DESCRIBE DETAIL``, Delta's
DataFrame writer, ``MERGE``) and report the reason.
"""
from __future__ import annotations

import os
from typing import Iterable

from py4j.protocol import Py4JError
from pyspark.sql import SparkSession

from filterspark.delta.capabilities import is_connect
from filterspark.delta.files import checksum_file_count, discard_unreferenced, file_location, local_path
from filterspark.delta.warehouse import TableRef, id_predicate

#: Set to ``off`` to make classic sessions take the public-API paths too (tests, comparisons).
JVM_ENV = "FILTERSPARK_JVM"

_REASONS: dict[int, str | None] = {}


def unavailable_reason(spark: SparkSession) -> str | None:
    """None when the JVM fast paths work on this session, else why not (one line).

    They need a classic session and open-source Delta's transaction classes on the
    driver's JVM (runtimes with their own Delta build lack them). Checked once per
    session.
    """
    if is_connect(spark):
        return "a Spark Connect session has no driver JVM in this process"
    if os.environ.get(JVM_ENV, "").lower() in ("off", "0", "false", "no"):
        return f"{JVM_ENV}=off"
    key = id(spark)
    if key not in _REASONS:
        _REASONS[key] = None
        for name in ("org.apache.spark.sql.delta.OptimisticTransaction", "org.apache.spark.sql.delta.DeltaLog"):
            if not _class_exists(spark, name):
                _REASONS[key] = "open-source Delta's transaction classes are not on the driver's JVM"
                break
    return _REASONS[key]


def spark_errors() -> tuple[type[BaseException], ...]:
    """The exception types a failed Spark call raises: pyspark's own (Connect, and classic
    errors pyspark converts), and Py4J's for classic JVM errors it does not convert."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    return (PySparkException, Py4JJavaError)


def _class_exists(spark: SparkSession, name: str) -> bool:
    from py4j.protocol import Py4JJavaError

    try:
        _jvm_class(spark, name)
        return True
    except Py4JJavaError:  # ClassNotFoundException
        return False


def _jvm_class(spark: SparkSession, name: str):
    """A JVM class loaded the way Spark loads its packages (``spark.jars.packages``)."""
    jvm = spark.sparkContext._jvm
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    return jvm.java.lang.Class.forName(name, True, loader)


def delta_on_driver_classpath() -> bool:
    """Under spark-submit the JVM already runs: whether Delta's SQL extension is on it."""
    from py4j.protocol import Py4JJavaError
    from pyspark import SparkContext

    SparkContext._ensure_initialized()
    try:
        SparkContext._jvm.java.lang.Class.forName("io.delta.sql.DeltaSparkSessionExtension")
        return True
    except Py4JJavaError:
        return False


def submitted_conf() -> dict[str, str]:
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


def snapshot_detail(spark: SparkSession, location: str) -> dict:
    """``location``, ``properties``, ``tableFeatures`` and ``numFiles`` (None when unknown) of
    the Delta table at ``location``, as ``DESCRIBE DETAIL`` names them, read from the
    latest snapshot. Raises ValueError when no Delta table is there."""
    jvm = spark.sparkContext._jvm
    delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, location)
    snapshot = delta_log.update(False, jvm.scala.Option.empty(), jvm.scala.Option.empty())
    if snapshot.version() < 0:
        raise ValueError(f"not a Delta table: {location}")
    converters = jvm.scala.jdk.javaapi.CollectionConverters
    properties = dict(converters.asJava(snapshot.metadata().configuration()).items())
    features = converters.asJava(snapshot.protocol().implicitlyAndExplicitlySupportedFeatures())
    data_path = delta_log.dataPath().toString()
    return {
        "location": data_path,
        "properties": properties,
        "tableFeatures": sorted(f.name() for f in features),
        "numFiles": checksum_file_count(data_path, int(snapshot.version())),
        "schemaString": snapshot.metadata().schemaString(),
    }


def list_table_dirs(spark: SparkSession, db_location: str) -> list[str]:
    """Sub-directories of ``db_location`` that hold a Delta log (any Hadoop filesystem)."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(db_location)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(hpath):
        return []
    names = []
    for status in fs.listStatus(hpath):
        if status.isDirectory():
            child = status.getPath()
            if fs.exists(jvm.org.apache.hadoop.fs.Path(child, "_delta_log")):
                names.append(child.getName())
    return sorted(names)


def location_exists(spark: SparkSession, location: str) -> bool:
    """Whether anything exists at ``location`` (any Hadoop filesystem)."""
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(location)
    return bool(hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(hpath))


def _scala_list(spark: SparkSession, items: Iterable):
    jvm = spark.sparkContext._jvm
    java_list = jvm.java.util.ArrayList()
    for item in items:
        java_list.add(item)
    return jvm.scala.jdk.javaapi.CollectionConverters.asScala(java_list).toList()


def _write_operation(spark: SparkSession, partition_columns: list[str], predicate: str | None):
    """``DeltaOperations.Write(Overwrite, partitionBy, predicate)`` as the history entry
    (``Append`` without a predicate; its other arguments at their defaults);
    ``ManualUpdate`` if this Delta's ``Write`` cannot be built that way."""
    jvm = spark.sparkContext._jvm
    try:
        write_class = _jvm_class(spark, "org.apache.spark.sql.delta.DeltaOperations$Write")
        companion = _jvm_class(spark, "org.apache.spark.sql.delta.DeltaOperations$Write$").getField("MODULE$").get(None)
        constructor = write_class.getConstructors()[0]
        arity = constructor.getParameterCount()
        args = spark.sparkContext._gateway.new_array(jvm.java.lang.Object, arity)
        mode = jvm.org.apache.spark.sql.SaveMode
        args[0] = mode.Overwrite if predicate is not None else mode.Append
        args[1] = jvm.scala.Option.apply(_scala_list(spark, partition_columns))
        args[2] = jvm.scala.Option.apply(predicate) if predicate is not None else jvm.scala.Option.empty()
        for i in range(3, arity):
            args[i] = getattr(companion, f"$lessinit$greater$default${i + 1}")()
        return constructor.newInstance(args)
    except (Py4JError, IndexError):  # another Delta version's constructor: a plainer history entry
        manual = _jvm_class(spark, "org.apache.spark.sql.delta.DeltaOperations$ManualUpdate$")
        return manual.getField("MODULE$").get(None)


def _matching_files(spark: SparkSession, txn, predicate: str) -> list:
    """The snapshot's files that may hold rows matching ``predicate`` (JVM ``AddFile``s),
    read through ``txn`` so that Delta checks concurrent commits against it. An empty
    table (by its checksum file) is marked read as a whole instead: same protection,
    without the Spark job that listing its files would run."""
    snapshot = txn.snapshot()
    if checksum_file_count(snapshot.deltaLog().dataPath().toString(), int(snapshot.version())) == 0:
        txn.readWholeTable()
        return []
    condition = spark._jsparkSession.sessionState().sqlParser().parseExpression(predicate)
    found = txn.filterFiles(_scala_list(spark, [condition]), False).iterator()
    files = []
    while found.hasNext():
        files.append(found.next())
    return files


def _commit(spark: SparkSession, txn, actions: list, predicate: str, partition_columns: list[str]) -> int:
    return int(txn.commit(_scala_list(spark, actions), _write_operation(spark, partition_columns, predicate)))


def _start(spark: SparkSession, table: str):
    jvm = spark.sparkContext._jvm
    return jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, table).startTransaction()


def _add_actions(spark: SparkSession, add_actions: list[str]) -> list:
    parse = spark.sparkContext._jvm.org.apache.spark.sql.delta.actions.Action.fromJson
    return [parse(a) for a in add_actions]


def replace_files(
    spark: SparkSession, table: TableRef, predicate: str, add_actions: list[str], partition_columns: list[str]
) -> int:
    """One Delta commit that removes every file of ``table`` matching the partition
    ``predicate`` (SQL over partition columns only) and adds ``add_actions`` (Delta
    ``add`` action JSON, paths relative to the table); returns the new version.

    The transaction reads only the matching partitions, so a concurrent writer of
    other partitions does not conflict; a conflicting one raises Delta's
    ``Concurrent…Exception`` (retry with :func:`tables.with_conflict_retry`).
    """
    txn = _start(spark, table.location)
    removes = [f.remove() for f in _matching_files(spark, txn, predicate)]
    return _commit(spark, txn, removes + _add_actions(spark, add_actions), predicate, partition_columns)


def append_files(spark: SparkSession, table: TableRef, add_actions: list[str]) -> int:
    """One Delta commit adding ``add_actions`` (files already written into the table's
    directory) as a blind append: it reads nothing, so it never conflicts with another
    writer. Returns the new version."""
    txn = _start(spark, table.location)
    return int(txn.commit(_scala_list(spark, _add_actions(spark, add_actions)), _write_operation(spark, [], None)))


#: Largest total size of files :func:`rewrite_rows` rewrites on the driver.
REWRITE_MAX_BYTES = 64 << 20


def rewrite_rows(
    spark: SparkSession, table: TableRef, key: str, ids: list[int], rows, file_tag: str, max_bytes: int = REWRITE_MAX_BYTES
) -> int | None:
    """Replace the rows of a small unpartitioned table whose ``key`` is in ``ids`` with
    ``rows`` (a pyarrow Table in the table's Arrow schema), in one commit; the new version.

    The files that may hold such rows (by their statistics) are read on the driver, their
    other rows kept and written with ``rows`` into one new file that replaces them — what
    a Spark ``replaceWhere`` does, without a Spark job. Returns None, committing nothing,
    where that does not apply (files with deletion vectors or not local, more than
    ``max_bytes`` to rewrite): the caller then writes through Spark.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from filterspark.delta.parquet_files import write_partition

    root = local_path(table.location)
    if root is None:
        return None
    txn = _start(spark, table.location)
    predicate = id_predicate(key, ids)
    old = _matching_files(spark, txn, predicate)
    if any(f.deletionVector() is not None for f in old) or sum(int(f.size()) for f in old) > max_bytes:
        return None
    paths = [file_location(f.path(), root) for f in old]
    if any(p is None for p in paths):
        return None
    kept = []
    for path in paths:
        part = pq.read_table(path)
        part = part.filter(pc.invert(pc.is_in(part.column(key), value_set=pa.array(ids, part.schema.field(key).type))))
        kept.append(part.select(rows.schema.names).cast(rows.schema))
    combined = pa.concat_tables([*kept, rows]) if kept else rows
    actions = write_partition(root, {}, combined.to_batches(), file_tag)
    try:
        removes = [f.remove() for f in old]
        return _commit(spark, txn, removes + _add_actions(spark, actions), predicate, [])
    except BaseException:
        from filterspark.delta.parquet_files import committed_paths

        discard_unreferenced(spark, table, root, committed_paths(actions))
        raise




# --- serving (``filterspark serve``) --------------------------------------------------------


def resolve_packages(coordinates: list[str]) -> list[str]:
    """The local JAR files of Maven ``coordinates`` and their dependencies, as Spark's own
    Ivy resolution (``spark.jars.packages``) fetches or finds them in its cache, from a
    short-lived gateway JVM started for it."""
    from urllib.parse import urlparse

    from pyspark import SparkConf
    from pyspark.java_gateway import launch_gateway

    gateway = launch_gateway(SparkConf().set("spark.jars.packages", ",".join(coordinates)))
    try:
        jars = gateway.jvm.java.lang.System.getProperty("spark.jars") or ""
    finally:
        gateway.shutdown()
        if gateway.proc is not None:
            gateway.proc.stdin.close()  # the gateway JVM exits when its stdin closes
            gateway.proc.wait(timeout=60)
    return [urlparse(j).path if j.startswith("file:") else j for j in jars.split(",") if j]


def start_thrift_server(spark: SparkSession, scratch_dir: str):
    """Start a HiveServer2-compatible JDBC/ODBC endpoint (Spark's Thrift server) on the
    session's application; returns its handle for :func:`stop_thrift_server`. Its host,
    port and Hive settings come from the session's ``spark.hadoop.hive.server2.*``
    settings; the log of its in-memory Derby metastore goes to ``scratch_dir`` (else to
    ``derby.log`` in the working directory)."""
    jvm = spark.sparkContext._jvm
    jvm.java.lang.System.setProperty("derby.stream.error.file", os.path.join(scratch_dir, "derby.log"))
    server_class = jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2
    return server_class.startWithContext(spark._jsparkSession.sqlContext())


def stop_thrift_server(handle) -> None:
    """Stop the JDBC endpoint; nothing to do when its JVM is gone already."""
    try:
        handle.stop()
    except Py4JError:
        pass


def context_stopped(spark: SparkSession) -> bool:
    """Whether the session's SparkContext has stopped (or its JVM is gone)."""
    try:
        return bool(spark.sparkContext._jsc.sc().isStopped())
    except Py4JError:
        return True


def stop_session(spark: SparkSession) -> None:
    """``spark.stop()``, tolerating a JVM that is gone already (a signal sent to the whole
    process group reaches the JVM too, which then stops by its own shutdown hook)."""
    try:
        spark.stop()
    except Py4JError:
        pass
