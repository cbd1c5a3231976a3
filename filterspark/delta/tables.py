"""Delta table plumbing: create, replace one model's rows, upsert, retry on write conflicts.

Delta has no multi-table transactions, so extraction writes ``filters`` and ``layers``
first and ``models`` last: a ``models`` row is the commit record of a model. Each
table's replacement of a set of models is one Delta transaction (``replaceWhere``).
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Iterable, TypeVar

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from filterspark.delta.schemas import PARTITION_COLUMNS, TABLES
from filterspark.engine.session import register_tables, table_path

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


class TableBeingCreated(RuntimeError):
    """A concurrent job is half-way through creating the same table (retryable)."""


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


def ensure_table(spark: SparkSession, warehouse: str, database: str, name: str, schema: StructType | None = None) -> str:
    """Create the Delta table ``name`` (empty, with its schema) unless it exists; return its path."""
    from delta.tables import DeltaTable

    path = table_path(warehouse, database, name)
    schema = schema or TABLES[name]
    if DeltaTable.isDeltaTable(spark, path):
        return path

    def create() -> None:
        builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
        partitions = PARTITION_COLUMNS.get(name)
        if partitions:
            builder = builder.partitionedBy(*partitions)
        try:
            builder.execute()
        except Exception as err:  # noqa: BLE001 - Py4J wraps Delta's error
            if DeltaTable.isDeltaTable(spark, path):
                return  # a concurrent job finished creating it meanwhile
            if not _location_exists(spark, path):
                raise
            # Most likely another job half-way through creating it (its first files exist,
            # its first commit not yet; Delta's error then depends on how far it got):
            # retried; foreign files that never become a table fail after the retries.
            raise TableBeingCreated(
                f"{path} is not empty and not a Delta table: another job creating it, or foreign files"
            ) from err

    with_conflict_retry(create, f"create {name}", attempts=4)
    return path


def _location_exists(spark: SparkSession, path: str) -> bool:
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return bool(hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(hpath))


def ensure_tables(spark: SparkSession, warehouse: str, database: str, names: Iterable[str] = TABLES) -> dict[str, str]:
    """Create the listed tables if needed and register the warehouse's tables by name."""
    paths = {name: ensure_table(spark, warehouse, database, name) for name in names}
    register_tables(spark, warehouse, database)
    return paths


def id_predicate(column: str, ids: Iterable[int]) -> str:
    """SQL predicate selecting the given integer ids."""
    values = ",".join(str(int(i)) for i in sorted(set(ids)))
    return f"{column} IN ({values})" if values else "false"


def replace_rows(df: DataFrame, path: str, predicate: str, what: str) -> None:
    """Atomically replace the rows matching ``predicate`` with ``df`` (one Delta commit)."""
    with_conflict_retry(
        lambda: df.write.format("delta").mode("overwrite").option("replaceWhere", predicate).save(path),
        what,
    )


def append_rows(df: DataFrame, path: str, what: str) -> None:
    """Append ``df`` to the Delta table at ``path`` (one commit; for rows with new keys)."""
    with_conflict_retry(lambda: df.write.format("delta").mode("append").save(path), what)


def upsert_rows(spark: SparkSession, df: DataFrame, path: str, keys: Iterable[str], what: str) -> None:
    """MERGE ``df`` into the Delta table at ``path`` on ``keys`` (update all / insert all)."""
    from delta.tables import DeltaTable

    condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)

    def merge() -> None:
        (
            DeltaTable.forPath(spark, path)
            .alias("t")
            .merge(df.alias("s"), condition)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )

    with_conflict_retry(merge, what)


def rows_frame(spark: SparkSession, rows: list[dict], schema: StructType) -> DataFrame:
    """A DataFrame of dict rows in ``schema``'s column order (missing keys become null)."""
    names = schema.fieldNames()
    return spark.createDataFrame([tuple(row.get(n) for n in names) for row in rows], schema=schema)
