"""Where the tables live, and the one place that names each of them.

Two modes:

* **path** (the local default): every table is a Delta table under
  ``<warehouse>/<database>.db/<table>``, registered by name (``filterdb.models``) in each
  session by :func:`register_tables`, without a Hive metastore.
* **catalog**: the tables are managed by the session's catalog under
  ``<catalog>.<database>.<table>`` (Unity Catalog's three-level names; ``spark_catalog``
  locally). They are created with ``CREATE TABLE`` and found by name: nothing to register.

:meth:`Warehouse.table` resolves every table of either mode to a :class:`TableRef`, which
is what the rest of the code reads, writes and names in SQL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from filterspark.delta.capabilities import session_key
from filterspark.errors import OptionsError

DEFAULT_DATABASE = "filterdb"
DEFAULT_WAREHOUSE = "warehouse"


def quote(name: str) -> str:
    """A SQL identifier in backticks."""
    return "`" + name.replace("`", "``") + "`"


def id_predicate(column: str, ids) -> str:
    """SQL predicate selecting the given integer ids."""
    values = ",".join(str(int(i)) for i in sorted(set(ids)))
    return f"{column} IN ({values})" if values else "false"


def warehouse_uri(warehouse: str) -> str:
    """A warehouse given as a filesystem URI is kept; a plain path is made absolute.

    Plain paths stay scheme-less so Spark resolves them on its default filesystem
    (the local disk in local mode, HDFS/DBFS on a cluster).
    """
    if ":" in warehouse.split("/")[0]:
        return warehouse.rstrip("/")
    return str(Path(warehouse).expanduser().resolve())


def same_location(a: str, b: str) -> bool:
    """Compare locations written as ``/p``, ``file:/p`` or ``file:///p``."""

    def norm(loc: str) -> str:
        if loc.startswith("file:"):
            loc = "/" + loc[len("file:"):].lstrip("/")
        return loc.rstrip("/")

    return norm(a) == norm(b)


def table_path(warehouse: str, database: str, table: str) -> str:
    """Storage location of one table in path mode: ``<warehouse>/<database>.db/<table>``."""
    return f"{warehouse_uri(warehouse)}/{database}.db/{table}"


@dataclass(frozen=True)
class TableRef:
    """One table: its short ``name``, the identifier SQL statements use for it (``sql``),
    and its storage ``location`` (always known in path mode; in catalog mode filled in
    by :func:`filterspark.delta.tables.ensure_table` from the catalog, or None)."""

    name: str
    sql: str
    location: str | None = None
    managed: bool = False

    def read(self, spark: SparkSession) -> DataFrame:
        """The table's latest snapshot as a DataFrame."""
        if self.managed:
            return spark.read.table(self.sql)
        return spark.read.format("delta").load(self.location)


@dataclass(frozen=True)
class Warehouse:
    """Where a run's tables live: a directory (``catalog=None``) or a metastore catalog.

    ``location`` is the warehouse directory in path mode; in catalog mode it is unused
    (the catalog decides where managed tables go).
    """

    location: str = DEFAULT_WAREHOUSE
    database: str = DEFAULT_DATABASE
    catalog: str | None = None

    def __post_init__(self) -> None:
        if not self.database or "`" in self.database:
            raise OptionsError(f"database must be a plain name, not {self.database!r}")
        if self.catalog is not None and (not self.catalog or "`" in self.catalog):
            raise OptionsError(f"catalog must be a plain name, not {self.catalog!r}")
        if self.catalog is None and not self.location:
            raise OptionsError("a path-mode warehouse needs a location (warehouse directory)")

    @property
    def managed(self) -> bool:
        """True in catalog mode."""
        return self.catalog is not None

    @property
    def schema_sql(self) -> str:
        """The database (schema) as SQL: ``catalog.database`` or ``database``."""
        if self.managed:
            return f"{quote(self.catalog)}.{quote(self.database)}"
        return quote(self.database)

    @property
    def uri(self) -> str:
        """The warehouse directory as an absolute path or URI (path mode)."""
        return warehouse_uri(self.location)

    def name(self, table: str) -> str:
        """The name users query: ``database.table``, or ``catalog.database.table``."""
        return f"{self.schema_sql}.{quote(table)}"

    def table(self, name: str) -> TableRef:
        """Resolve the project table ``name`` in this warehouse."""
        if self.managed:
            return TableRef(name, self.name(name), None, managed=True)
        location = table_path(self.location, self.database, name)
        return TableRef(name, f"delta.{quote(location)}", location)

    def describe(self) -> str:
        """One line for reports: where the tables are."""
        if self.managed:
            return f"catalog {self.catalog}.{self.database}"
        return f"{self.uri} ({self.database})"


@dataclass
class WarehouseOptions:
    """The part every job's options share: where its tables are. ``warehouse`` is the
    directory of path mode; ``catalog_name`` selects catalog mode (tables managed as
    ``<catalog_name>.<database>.<table>``)."""

    warehouse: str = DEFAULT_WAREHOUSE
    database: str = DEFAULT_DATABASE
    catalog_name: str | None = None

    def __post_init__(self) -> None:
        self.tables  # validates the names

    @property
    def tables(self) -> Warehouse:
        """Where the job's tables are."""
        return Warehouse(self.warehouse, self.database, self.catalog_name)


def as_warehouse(warehouse: "Warehouse | str", database: str = DEFAULT_DATABASE, catalog: str | None = None) -> Warehouse:
    """``warehouse`` itself, or the warehouse of a directory (``catalog`` set: catalog mode)."""
    if isinstance(warehouse, Warehouse):
        return warehouse
    return Warehouse(os.fspath(warehouse) if warehouse else DEFAULT_WAREHOUSE, database, catalog)


#: (Spark session id, schema) → the warehouse URI its names were last registered for.
_REGISTERED: dict[tuple[str, str], str] = {}


def registered_warehouse(spark: SparkSession, database: str = DEFAULT_DATABASE) -> str | None:
    """The warehouse (URI) whose tables :func:`register_tables` last named in ``database``
    in this session, or None."""
    return _REGISTERED.get((session_key(spark), quote(database)))


def register_tables(spark: SparkSession, warehouse: "Warehouse | str", database: str = DEFAULT_DATABASE) -> list[str]:
    """Name every project table of the warehouse in the session's catalog and define the
    ``<table>_latest`` views; returns the tables found.

    Path mode registers each Delta table under ``<warehouse>/<database>.db`` as the
    external table ``database.table`` (re-pointing names another warehouse registered,
    dropping names whose tables this warehouse lacks; their data is never touched).
    Catalog mode makes the catalog the session's current one and only (re)defines the
    views: managed tables are named already.
    """
    from filterspark.delta import jvm
    from filterspark.delta.files import local_path
    from filterspark.delta.schemas import ALL_TABLES

    wh = as_warehouse(warehouse, database)
    if wh.managed:
        # The catalog becomes the session's current one (USE CATALOG), so that the
        # two-part names users and the reports write (filterdb.models) mean its tables.
        if spark.catalog.currentCatalog() != wh.catalog:
            spark.catalog.setCurrentCatalog(wh.catalog)
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {wh.schema_sql}")
        names = _managed_tables(spark, wh)
        _register_views(spark, wh, names)
        return names
    db_location = f"{wh.uri}/{wh.database}.db"
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {quote(wh.database)} LOCATION '{db_location}'")
    root = local_path(db_location)
    if root is not None:
        names = sorted(n for n in (os.listdir(root) if os.path.isdir(root) else [])
                       if os.path.isdir(os.path.join(root, n, "_delta_log")))
    elif jvm.unavailable_reason(spark) is None:
        names = jvm.list_table_dirs(spark, db_location)
    else:  # a remote file system seen through Connect: look for the project's tables
        names = [n for n in ALL_TABLES if _is_delta_table(spark, f"{db_location}/{n}")]
    for name in names:
        location = f"{db_location}/{name}"
        qualified = wh.name(name)
        current = _registered_location(spark, wh, name)
        if current is not None and not same_location(current, location):
            # Registered for another warehouse earlier in this session: re-point it. The
            # table is external (LOCATION), so dropping the registration keeps its data.
            spark.sql(f"DROP TABLE {qualified}")
        spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified} USING DELTA LOCATION '{location}'")
    _drop_stale_names(spark, wh, db_location, names)
    _register_views(spark, wh, names)
    _REGISTERED[(session_key(spark), wh.schema_sql)] = wh.uri
    return names


def _managed_tables(spark: SparkSession, wh: Warehouse) -> list[str]:
    from filterspark.delta.schemas import ALL_TABLES

    rows = spark.sql(f"SHOW TABLES IN {wh.schema_sql}").collect()
    return sorted(r["tableName"] for r in rows if not r["isTemporary"] and r["tableName"] in ALL_TABLES)


def _is_delta_table(spark: SparkSession, location: str) -> bool:
    """Whether a Delta table is at ``location`` (asked through SQL: works on Connect)."""
    from pyspark.errors import AnalysisException

    try:
        spark.sql(f"DESCRIBE DETAIL delta.{quote(location)}").collect()
        return True
    except AnalysisException:
        return False


def _drop_stale_names(spark: SparkSession, wh: Warehouse, db_location: str, names: list[str]) -> None:
    """Unregister the external tables of the database that point outside ``db_location``
    and have no table there: names left from another warehouse (a reused session, or a
    persistent metastore) must not answer for this one. Their data is kept."""
    for table in spark.catalog.listTables(wh.database):
        if table.isTemporary or table.tableType != "EXTERNAL" or table.name in names:
            continue
        location = _registered_location(spark, wh, table.name)
        if location is not None and not same_location(location.rsplit("/", 1)[0], db_location):
            spark.sql(f"DROP TABLE {wh.name(table.name)}")


def _register_views(spark: SparkSession, wh: Warehouse, tables: list[str]) -> None:
    """Create the views of ``schemas.VIEWS`` whose tables exist (views are session-scoped
    without a metastore, so every session defines them again; a no-op change with one),
    and drop those whose tables do not."""
    from filterspark.delta.schemas import VIEWS

    for view, (query, needs) in VIEWS.items():
        if all(t in tables for t in needs):
            spark.sql(f"CREATE OR REPLACE VIEW {wh.name(view)} AS {query.format(db=wh.schema_sql)}")
        else:
            spark.sql(f"DROP VIEW IF EXISTS {wh.name(view)}")


def _registered_location(spark: SparkSession, wh: Warehouse, name: str) -> str | None:
    """Location of ``database.name`` in this session's catalog, or None if not registered."""
    if not spark.catalog.tableExists(f"{wh.database}.{name}"):
        return None
    for row in spark.sql(f"DESCRIBE TABLE EXTENDED {wh.name(name)}").collect():
        if row[0] == "Location":
            return row[1]
    return None
