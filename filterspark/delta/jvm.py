"""Delta tables at the level of their data files: where they are, which Delta features a
plain Parquet reader or writer can honour, and one-transaction file replacement.

The analysis scans read the snapshot's Parquet files with pyarrow; extraction writes
``filters`` files with pyarrow on the executors and commits them here, through Delta's
own transaction (``DeltaLog.startTransaction`` → ``commit``) on the driver's JVM. So the
log, its conflict checks, checkpoints and history stay Delta's; we only supply the
``add`` actions (with exact per-file statistics, which Delta uses for data skipping and
metadata-only counts) and say which partitions they replace.
"""
from __future__ import annotations

import json
import os
from typing import Iterable
from urllib.parse import unquote, urlparse

from pyspark.sql import SparkSession

from filterspark.delta.tables import id_predicate

#: Delta table features a raw Parquet *read* cannot honour.
UNREADABLE_FEATURES = ("deletionVectors", "columnMapping")
#: Table features whose tables plain Parquet files plus add/remove actions keep valid
#: (Delta itself assigns what they need at commit time, or they only concern readers).
WRITABLE_FEATURES = frozenset(
    {"appendOnly", "invariants", "deletionVectors", "timestampNtz", "v2Checkpoint", "vacuumProtocolCheck",
     "checkpointProtection", "inCommitTimestamp", "domainMetadata"}
)


def local_path(uri: str) -> str | None:
    """A local file system path for a ``file:`` URI (or plain path), else None."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path)
    return None


def table_detail(spark: SparkSession, path: str) -> dict:
    """Location, ``properties``, ``tableFeatures`` and ``numFiles`` (None when unknown) of the
    Delta table at ``path``, as ``DESCRIBE DETAIL`` names them — read from the latest
    snapshot on the driver's JVM, which needs no Spark job (``DESCRIBE DETAIL`` runs
    one: ~0.8 s per table). Falls back to ``DESCRIBE DETAIL`` on another Delta version."""
    try:
        jvm = spark.sparkContext._jvm
        delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
        snapshot = delta_log.update(False, jvm.scala.Option.empty(), jvm.scala.Option.empty())
        if snapshot.version() < 0:
            raise ValueError(f"not a Delta table: {path}")
        converters = jvm.scala.jdk.javaapi.CollectionConverters
        properties = dict(converters.asJava(snapshot.metadata().configuration()).items())
        features = converters.asJava(snapshot.protocol().implicitlyAndExplicitlySupportedFeatures())
        location = delta_log.dataPath().toString()
        return {
            "location": location,
            "properties": properties,
            "tableFeatures": sorted(f.name() for f in features),
            "numFiles": _checksum_file_count(location, int(snapshot.version())),
        }
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - Py4J: internal API changed
        return spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first().asDict()


def _checksum_file_count(location: str, version: int) -> int | None:
    """``numFiles`` from the version's checksum file (``_delta_log/<version>.crc``, written
    after each commit), when it is local and present: the snapshot's own count may run a job."""
    root = local_path(location)
    if root is None:
        return None
    try:
        with open(os.path.join(root, "_delta_log", f"{version:020d}.crc"), encoding="utf-8") as handle:
            return int(json.load(handle)["numFiles"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _uses_column_mapping(detail: dict) -> bool:
    return (detail.get("properties") or {}).get("delta.columnMapping.mode", "none") != "none"


def unreadable_features(detail: dict) -> list[str]:
    """The features of a table (its :func:`table_detail`) that a plain Parquet read would ignore."""
    features = set(detail.get("tableFeatures") or [])
    found = [f for f in UNREADABLE_FEATURES if f in features]
    if _uses_column_mapping(detail) and "columnMapping" not in found:
        found.append("columnMapping")
    return found


def file_write_blockers(detail: dict) -> list[str]:
    """Why executors may not write this table's data files themselves (empty: they may).

    Plain Parquet files with Delta statistics are enough unless the table renames
    columns (column mapping), checks constraints or computes columns on write, is
    append-only, or is not on a local file system (the executors write with pyarrow).
    """
    reasons = []
    location = str(detail.get("location") or "")
    if local_path(location) is None:
        reasons.append(f"its files are not on a local file system ({location.split(':', 1)[0]}:)")
    props = detail.get("properties") or {}
    if _uses_column_mapping(detail):
        reasons.append("it uses column mapping")
    if str(props.get("delta.appendOnly", "false")).lower() == "true":
        reasons.append("it is append-only")
    if any(k.startswith("delta.constraints.") for k in props):
        reasons.append("it has CHECK constraints")
    others = sorted(set(detail.get("tableFeatures") or []) - WRITABLE_FEATURES)
    if others:
        reasons.append(f"it uses the table features {', '.join(others)}")
    return reasons


def _jvm_class(spark: SparkSession, name: str):
    """A JVM class loaded the way Spark loads its packages (``spark.jars.packages``)."""
    jvm = spark.sparkContext._jvm
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    return jvm.java.lang.Class.forName(name, True, loader)


def transaction_api_available(spark: SparkSession) -> bool:
    """Whether open-source Delta's transaction classes are on the driver's JVM (they are
    not on runtimes with their own Delta build): :func:`replace_files` needs them."""
    try:
        _jvm_class(spark, "org.apache.spark.sql.delta.OptimisticTransaction")
        _jvm_class(spark, "org.apache.spark.sql.delta.DeltaLog")
        return True
    except Exception:  # noqa: BLE001 - Py4J wraps ClassNotFoundException
        return False


def _scala_list(spark: SparkSession, items: Iterable):
    jvm = spark.sparkContext._jvm
    java_list = jvm.java.util.ArrayList()
    for item in items:
        java_list.add(item)
    return jvm.scala.jdk.javaapi.CollectionConverters.asScala(java_list).toList()


def _write_operation(spark: SparkSession, partition_columns: list[str], predicate: str):
    """``DeltaOperations.Write(Overwrite, partitionBy, predicate)`` as the history entry
    (its other arguments at their defaults); ``ManualUpdate`` if this Delta's ``Write``
    cannot be built that way."""
    jvm = spark.sparkContext._jvm
    try:
        write_class = _jvm_class(spark, "org.apache.spark.sql.delta.DeltaOperations$Write")
        companion = _jvm_class(spark, "org.apache.spark.sql.delta.DeltaOperations$Write$").getField("MODULE$").get(None)
        constructor = write_class.getConstructors()[0]
        arity = constructor.getParameterCount()
        args = spark.sparkContext._gateway.new_array(jvm.java.lang.Object, arity)
        args[0] = jvm.org.apache.spark.sql.SaveMode.Overwrite
        args[1] = jvm.scala.Option.apply(_scala_list(spark, partition_columns))
        args[2] = jvm.scala.Option.apply(predicate)
        for i in range(3, arity):
            args[i] = getattr(companion, f"$lessinit$greater$default${i + 1}")()
        return constructor.newInstance(args)
    except Exception:  # noqa: BLE001 - another Delta version: a plainer history entry
        manual = _jvm_class(spark, "org.apache.spark.sql.delta.DeltaOperations$ManualUpdate$")
        return manual.getField("MODULE$").get(None)


def _matching_files(spark: SparkSession, txn, predicate: str) -> list:
    """The snapshot's files that may hold rows matching ``predicate`` (JVM ``AddFile``s),
    read through ``txn`` so that Delta checks concurrent commits against it. An empty
    table (by its checksum file) is marked read as a whole instead: same protection,
    without the Spark job that listing its files would run."""
    snapshot = txn.snapshot()
    if _checksum_file_count(snapshot.deltaLog().dataPath().toString(), int(snapshot.version())) == 0:
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
    spark: SparkSession, table: str, predicate: str, add_actions: list[str], partition_columns: list[str]
) -> int:
    """One Delta commit that removes every file of ``table`` matching the partition
    ``predicate`` (SQL over partition columns only) and adds ``add_actions`` (Delta
    ``add`` action JSON, paths relative to the table); returns the new version.

    The transaction reads only the matching partitions, so a concurrent writer of
    other partitions does not conflict; a conflicting one raises Delta's
    ``Concurrent…Exception`` (retry with :func:`tables.with_conflict_retry`).
    """
    txn = _start(spark, table)
    removes = [f.remove() for f in _matching_files(spark, txn, predicate)]
    return _commit(spark, txn, removes + _add_actions(spark, add_actions), predicate, partition_columns)


#: Largest total size of files :func:`rewrite_rows` rewrites on the driver.
REWRITE_MAX_BYTES = 64 << 20


def rewrite_rows(
    spark: SparkSession, table: str, key: str, ids: list[int], rows, file_tag: str, max_bytes: int = REWRITE_MAX_BYTES
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

    root = local_path(table)
    if root is None:
        return None
    txn = _start(spark, table)
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


def referenced_files(spark: SparkSession, table: str, root: str) -> set[str] | None:
    """Paths (relative to ``root``) of the data files the table's latest snapshot
    references; None when the snapshot cannot be read."""
    try:
        uris = spark.read.format("delta").load(table).inputFiles()
    except Exception:  # noqa: BLE001 - cannot tell
        return None
    return {os.path.relpath(p, root) for p in (local_path(u) for u in uris) if p}


def discard_unreferenced(spark: SparkSession, table: str, root: str, relative_paths) -> int:
    """Delete the files among ``relative_paths`` that the latest snapshot does not reference
    (after a failed commit: an error raised after the commit landed must not delete
    committed files); none when the snapshot cannot be read. Returns how many."""
    referenced = referenced_files(spark, table, root)
    if referenced is None:
        return 0
    from filterspark.delta.parquet_files import remove_files

    return remove_files(root, [p for p in relative_paths if p not in referenced])


def file_location(path: str, root: str) -> str | None:
    """The local path of a data file named in the Delta log (relative and URI-encoded, or
    an absolute URI); None when it is not on a local file system."""
    if urlparse(path).scheme:
        return local_path(path)
    return os.path.join(root, unquote(path))
