"""Delta tables at the level of their data files, through public APIs only: where the
files are, which Delta features a plain Parquet reader or writer can honour, and the
cleanup of files a failed commit left behind. (The commits themselves, on classic
sessions, are in :mod:`filterspark.delta.jvm`.)
"""
from __future__ import annotations

import json
import os
from urllib.parse import unquote, urlparse

from pyspark.errors import PySparkException
from pyspark.sql import SparkSession

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


def checksum_file_count(location: str, version: int) -> int | None:
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


def referenced_files(spark: SparkSession, table, root: str) -> set[str] | None:
    """Paths (relative to ``root``) of the data files the table's latest snapshot
    references; None when the snapshot cannot be read."""
    try:
        uris = table.read(spark).inputFiles()
    except PySparkException:  # the snapshot cannot be read: cannot tell
        return None
    return {os.path.relpath(p, root) for p in (local_path(u) for u in uris) if p}


def discard_unreferenced(spark: SparkSession, table, root: str, relative_paths) -> int:
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
