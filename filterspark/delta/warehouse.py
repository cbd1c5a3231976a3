"""Where the tables live, and the one place that names each of them.

Two modes:

* **path** (the local default): every table is a Delta table under
  ``<warehouse>/<database>.db/<table>``, registered by name (``filterdb.models``) in each
  session by :func:`register_tables`, without a Hive metastore.
* **catalog**: the tables are managed by the session's catalog under
  ``<catalog>.<database>.<table>`` (Unity Catalog's three-level names; ``spark_catalog``
  locally). They are created with ``CREATE TABLE`` and found by name: nothing to register.

:meth:`Warehouse.table` resolves every table of either mode to a :class:`TableRef`, which
is what the rest of the code reads, writes and names in SQL; :mod:`.registry` names the
tables in a session.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

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
