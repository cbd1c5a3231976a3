"""Delta table plumbing: create, replace one model's rows, upsert, retry on write conflicts.

Delta has no multi-table transactions, so extraction writes ``filters`` and ``layers``
first and ``models`` last: a ``models`` row is the commit record of a model. Each
table's replacement of a set of models is one Delta transaction (``replaceWhere``).
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from typing import Callable, Iterable, TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from filterspark.delta import jvm
from filterspark.delta.files import file_write_blockers, local_path
from filterspark.delta.registry import register_tables
from filterspark.delta.schemas import ALL_TABLES, PARTITION_COLUMNS, TABLES
from filterspark.delta.warehouse import DEFAULT_DATABASE, TableRef, Warehouse, as_warehouse, id_predicate, quote
from filterspark.errors import TableBeingCreated

__all__ = [
    "append_rows", "ensure_table", "ensure_tables", "id_predicate", "is_write_conflict", "replace_rows",
    "rows_frame", "table_detail", "table_exists", "upsert_rows", "with_conflict_retry",
]

log = logging.getLogger("filterspark.delta.tables")
T = TypeVar("T")

_CONFLICT_MARKERS = (
    "ConcurrentAppendException",
    "ConcurrentWriteException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DELTA_CONCURRENT",
    "DELTA_METADATA_CHANGED",
    "DELTA_PROTOCOL_CHANGED",
    "already exists",
    "TABLE_OR_VIEW_ALREADY_EXISTS",
    "TableBeingCreated",
)


def is_write_conflict(err: BaseException) -> bool:
    """True for Delta optimistic-concurrency conflicts, which are safe to retry."""
    text = f"{type(err).__name__}: {err}"
    return any(marker in text for marker in _CONFLICT_MARKERS)


def with_conflict_retry(action: Callable[[], T], what: str, attempts: int = 12) -> T:
    """Run ``action``; on a Delta write conflict wait (jittered backoff) and run it again."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - filtered below
            if attempt == attempts or not is_write_conflict(err):
                raise
            delay = min(0.5 * 2 ** (attempt - 1), 10.0) * (0.5 + random.random())
            log.warning("%s: concurrent Delta write (%s); retry %d in %.1fs", what, type(err).__name__, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _column_ddl(schema: StructType) -> str:
    """The columns of ``schema`` as a ``CREATE TABLE`` column list (types, NOT NULL, comments)."""
    parts = []
    for f in schema.fields:
        ddl = f"{quote(f.name)} {f.dataType.simpleString()}"
        if not f.nullable:
            ddl += " NOT NULL"
        comment = f.metadata.get("comment") if f.metadata else None
        if comment:
            ddl += " COMMENT '" + comment.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(ddl)
    return ", ".join(parts)


def table_detail(spark: SparkSession, table: TableRef) -> dict:
    """``location``, ``properties``, ``tableFeatures`` and ``numFiles`` of ``table``: from the
    snapshot on the driver's JVM where that works (no Spark job), else ``DESCRIBE DETAIL``."""
    if table.location is not None and jvm.unavailable_reason(spark) is None:
        return jvm.snapshot_detail(spark, table.location)
    return spark.sql(f"DESCRIBE DETAIL {table.sql}").first().asDict()


def table_exists(spark: SparkSession, table: TableRef) -> bool:
    """Whether ``table`` exists (a Delta table at its location, or a name in the catalog)."""
    from pyspark.errors import AnalysisException

    if table.managed:
        return spark.catalog.tableExists(table.sql)
    if jvm.unavailable_reason(spark) is None:
        try:
            jvm.snapshot_detail(spark, table.location)
            return True
        except ValueError:
            return False
    try:
        spark.sql(f"DESCRIBE DETAIL {table.sql}").collect()
        return True
    except AnalysisException:
        return False


def _foreign_files(spark: SparkSession, location: str) -> bool:
    """Whether anything is at ``location`` (where that can be seen: a local path, or any
    file system through the classic session's JVM)."""
    root = local_path(location)
    if root is not None:
        return os.path.isdir(root) and bool(os.listdir(root))
    if jvm.unavailable_reason(spark) is None:
        return jvm.location_exists(spark, location)
    return False


def _with_location(spark: SparkSession, table: TableRef) -> TableRef:
    """A managed table's ref with its storage location from the catalog."""
    if table.location is not None:
        return table
    location = spark.sql(f"DESCRIBE DETAIL {table.sql}").first()["location"]
    return TableRef(table.name, table.sql, location, managed=True)


def ensure_table(spark: SparkSession, warehouse: Warehouse | str, database: str = DEFAULT_DATABASE,
                 name: str = "", schema: StructType | None = None) -> TableRef:
    """Create the Delta table ``name`` (empty, with its schema and partitioning) unless it
    exists; return its :class:`TableRef` (with its location)."""
    wh = as_warehouse(warehouse, database)
    table = wh.table(name)
    schema = schema or ALL_TABLES[name]
    if table_exists(spark, table):
        return _with_location(spark, table)
    partitions = PARTITION_COLUMNS.get(name)
    statement = (
        f"CREATE TABLE IF NOT EXISTS {table.sql} ({_column_ddl(schema)}) USING DELTA"
        + (f" PARTITIONED BY ({', '.join(quote(c) for c in partitions)})" if partitions else "")
    )
    if wh.managed:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {wh.schema_sql}")

    def create() -> None:
        if not table.managed and _foreign_files(spark, table.location):
            if table_exists(spark, table):
                return  # a concurrent job finished creating it meanwhile
            # Most likely another job half-way through creating it (its first files exist,
            # its first commit not yet): retried. Foreign files that never become a table
            # fail after the retries; a table is never created over them (VACUUM would
            # delete them).
            raise TableBeingCreated(
                f"{table.location} is not empty and not a Delta table: another job creating it, or foreign files"
            )
        spark.sql(statement)

    with_conflict_retry(create, f"create {name}", attempts=4)
    return _with_location(spark, table)


def ensure_tables(spark: SparkSession, warehouse: Warehouse | str, database: str = DEFAULT_DATABASE,
                  names: Iterable[str] = TABLES) -> dict[str, TableRef]:
    """Create the listed tables if needed and register the warehouse's tables by name."""
    wh = as_warehouse(warehouse, database)
    refs = {name: ensure_table(spark, wh, name=name) for name in names}
    register_tables(spark, wh)
    return refs


def _save(writer, table: TableRef) -> None:
    if table.managed:
        writer.saveAsTable(table.sql)
    else:
        writer.save(table.location)


def replace_rows(df: DataFrame, table: TableRef, predicate: str, what: str) -> None:
    """Atomically replace the rows matching ``predicate`` with ``df`` (one Delta commit)."""
    with_conflict_retry(
        lambda: _save(df.write.format("delta").mode("overwrite").option("replaceWhere", predicate), table),
        what,
    )


def append_rows(df: DataFrame, table: TableRef, what: str, merge_schema: bool = False) -> None:
    """Append ``df`` to ``table`` (one commit; for rows with new keys); ``merge_schema``:
    columns the table lacks are added to it (a newer version's columns)."""
    writer = df.write.format("delta").mode("append")
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    with_conflict_retry(lambda: _save(writer, table), what)


def upsert_rows(spark: SparkSession, df: DataFrame, table: TableRef, keys: Iterable[str], what: str) -> None:
    """MERGE ``df`` into ``table`` on ``keys`` (update all / insert all), through SQL so that
    it runs on classic and Connect sessions alike."""
    view = f"filterspark_merge_{uuid.uuid4().hex}"
    condition = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in keys)
    df.createOrReplaceTempView(view)
    try:
        with_conflict_retry(
            lambda: spark.sql(
                f"MERGE INTO {table.sql} t USING {view} s ON {condition} "
                "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
            ).collect(),
            what,
        )
    finally:
        spark.catalog.dropTempView(view)


def append_arrow(spark: SparkSession, table: TableRef, data, what: str, schema: StructType) -> None:
    """Append ``data`` (a pyarrow Table in ``schema``'s Arrow schema) to ``table``, one commit.

    On a classic session, for a local table whose columns are ``schema``'s and which the
    files path may write (:func:`files.file_write_blockers`), the driver writes the
    Parquet file with pyarrow and commits it as a blind append (no Spark job: a Spark
    write of a local relation is single-threaded, ~4 s for 400k rows); otherwise Spark's
    writer appends it, adding columns the table lacks (an older version's table).
    """
    from filterspark.delta.parquet_files import committed_paths, remove_files, write_partition

    root = local_path(table.location) if table.location else None
    if root is not None and jvm.unavailable_reason(spark) is None:
        detail = table_detail(spark, table)
        names = [f["name"] for f in json.loads(detail.get("schemaString") or "{}").get("fields", [])]
        if names == schema.fieldNames() and not file_write_blockers(detail):
            actions = write_partition(root, {}, data.to_batches(), f"driver-{uuid.uuid4().hex[:12]}")
            try:
                with_conflict_retry(lambda: jvm.append_files(spark, table, actions), what)
            except BaseException:
                remove_files(root, committed_paths(actions))
                raise
            return
    append_rows(spark.createDataFrame(data, schema=schema), table, what, merge_schema=True)


def rows_frame(spark: SparkSession, rows: list[dict], schema: StructType) -> DataFrame:
    """A DataFrame of dict rows in ``schema``'s column order (missing keys become null)."""
    names = schema.fieldNames()
    return spark.createDataFrame([tuple(row.get(n) for n in names) for row in rows], schema=schema)
