"""Naming a warehouse's tables in a session: path-mode Delta directories registered as
external tables ``database.table``, the ``<table>_latest`` views of both modes.

A ``filterspark serve`` server names its warehouse once for all its clients (the catalog
of one Spark application is shared by its sessions) and says so in two settings
(:data:`SERVED_WAREHOUSE_CONF`, :data:`SERVED_DATABASE_CONF`): its Connect clients then
skip what is registered already, and may not re-point its database at another warehouse.
"""
from __future__ import annotations

import os

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

from filterspark.delta import jvm
from filterspark.delta.capabilities import is_connect, session_key
from filterspark.delta.files import local_path
from filterspark.delta.schemas import ALL_TABLES, ANALYSIS_TABLES, VIEWS, latest_view_parts
from filterspark.delta.sql_functions import register_functions
from filterspark.delta.warehouse import DEFAULT_DATABASE, Warehouse, as_warehouse, quote, same_location
from filterspark.errors import SessionError

#: Settings of a ``filterspark serve`` application: the warehouse (URI) and database it serves.
SERVED_WAREHOUSE_CONF = "spark.filterspark.serve.warehouse"
SERVED_DATABASE_CONF = "spark.filterspark.serve.database"


#: (Spark session id, schema) → the warehouse URI its names were last registered for.
_REGISTERED: dict[tuple[str, str], str] = {}


def registered_warehouse(spark: SparkSession, database: str = DEFAULT_DATABASE) -> str | None:
    """The warehouse (URI) whose tables :func:`register_tables` last named in ``database``
    in this session, or None."""
    return _REGISTERED.get((session_key(spark), quote(database)))


def served_warehouse(spark: SparkSession, database: str = DEFAULT_DATABASE) -> str | None:
    """The warehouse (URI) a ``filterspark serve`` server serves as ``database``, when
    ``spark`` is a Spark Connect session to one; else None."""
    if not is_connect(spark) or spark.conf.get(SERVED_DATABASE_CONF, None) != database:
        return None
    return spark.conf.get(SERVED_WAREHOUSE_CONF, None)


def register_tables(spark: SparkSession, warehouse: "Warehouse | str", database: str = DEFAULT_DATABASE) -> list[str]:
    """Name every project table of the warehouse in the session's catalog and define the
    ``<table>_latest`` views; returns the tables found.

    Path mode registers each Delta table under ``<warehouse>/<database>.db`` as the
    external table ``database.table`` (re-pointing names another warehouse registered,
    dropping names whose tables this warehouse lacks; their data is never touched).
    Catalog mode makes the catalog the session's current one and only (re)defines the
    views: managed tables are named already. The project's SQL functions are registered
    too (sessions the project did not build: a notebook's ``spark``; they are
    session-scoped, so each client session of a server registers its own).

    On a Connect session to a ``filterspark serve`` server of this database, the server
    keeps the names: nothing is done when every table and view is named already (new
    tables a client just wrote are added), and another warehouse is refused (it would
    re-point the names of every client).
    """
    wh = as_warehouse(warehouse, database)
    register_functions(spark)
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
    root = local_path(db_location)
    served = served_warehouse(spark, wh.database)
    if served is not None:
        if not same_location(served, wh.uri):
            raise SessionError(
                f"the Spark Connect server serves database {wh.database} from {served}: naming it for "
                f"{wh.uri} would re-point the tables of every client (use warehouse={served!r}, "
                "or another database)"
            )
        if root is not None and _served_names_complete(spark, wh, table_dirs(root)):
            _REGISTERED[(session_key(spark), wh.schema_sql)] = wh.uri
            return table_dirs(root)
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {quote(wh.database)} LOCATION '{db_location}'")
    if root is not None:
        names = table_dirs(root)
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


def table_dirs(root: str) -> list[str]:
    """The Delta tables (sub-directories with a ``_delta_log``) of a local database directory."""
    return sorted(n for n in (os.listdir(root) if os.path.isdir(root) else [])
                  if os.path.isdir(os.path.join(root, n, "_delta_log")))


def _served_names_complete(spark: SparkSession, wh: Warehouse, tables: list[str]) -> bool:
    """Whether the server already names every table of ``tables`` and each view they make
    (one catalog request)."""
    named = {t.name for t in spark.catalog.listTables(wh.database) if not t.isTemporary}
    views = {view for view, (_, needs) in VIEWS.items() if all(t in tables for t in needs)}
    return named >= set(tables) | views


def _managed_tables(spark: SparkSession, wh: Warehouse) -> list[str]:
    rows = spark.sql(f"SHOW TABLES IN {wh.schema_sql}").collect()
    return sorted(r["tableName"] for r in rows if not r["isTemporary"] and r["tableName"] in ALL_TABLES)


def _is_delta_table(spark: SparkSession, location: str) -> bool:
    """Whether a Delta table is at ``location`` (asked through SQL: works on Connect)."""
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


#: Sessions and schemas whose ``_latest`` views were defined over a table without the
#: ``kernel`` column (an older version's): to be defined again once a run adds it.
_LEGACY_VIEWS: set[tuple[str, str]] = set()


def views_predate_kernel(spark: SparkSession, wh: Warehouse) -> bool:
    """Whether this session's ``_latest`` views of ``wh`` were defined over an older
    version's tables (without ``kernel``)."""
    return (session_key(spark), wh.schema_sql) in _LEGACY_VIEWS


def _register_views(spark: SparkSession, wh: Warehouse, tables: list[str]) -> None:
    """Create the views of ``schemas.VIEWS`` whose tables exist (views are session-scoped
    without a metastore, so every session defines them again; a no-op change with one),
    and drop those whose tables do not."""
    _LEGACY_VIEWS.discard((session_key(spark), wh.schema_sql))
    has_kernel = {}  # analysis table -> whether it has the kernel column (an older version's lacks it)
    for view, (query, needs) in VIEWS.items():
        if all(t in tables for t in needs):
            for t in needs:
                if t in ANALYSIS_TABLES and t not in has_kernel:
                    has_kernel[t] = "kernel" in spark.table(wh.name(t)).columns
            parts = latest_view_parts(has_kernel.get(needs[0], False), has_kernel.get("analysis_runs", False))
            if not all(has_kernel.values()):
                _LEGACY_VIEWS.add((session_key(spark), wh.schema_sql))
            text = query.format(db=wh.schema_sql, models=wh.name("models"), layers=wh.name("layers"), **parts)
            spark.sql(f"CREATE OR REPLACE VIEW {wh.name(view)} AS {text}")
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
