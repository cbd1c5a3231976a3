"""Executor side of extraction's direct write: one model's ``filters`` batches become
Parquet files in its ``model_id=<id>`` directory of the Delta table, each described by
the Delta ``add`` action that will commit it (see :func:`delta_files.replace_files`).

Pure pyarrow/numpy (no Spark): files are written with Spark's layout (Hive-style
partition directory, partition columns not stored in the file, snappy) and carry exact
Delta statistics — row count, per-column null counts and min/max — because Delta trusts
them for data skipping and for answering ``count(*)`` from the log alone. A min/max
that cannot be stated exactly (NaN or infinite floats, strings longer than Delta's
32-character stats prefix) is left out, which only means "no skipping on it".
"""
from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Rows per Parquet row group (batches are buffered up to this).
ROW_GROUP_ROWS = 1 << 20
#: Rows per data file; a larger model gets several files.
FILE_ROWS = 1 << 22
#: Delta truncates string statistics to this many characters; longer values get none.
STATS_STRING_CHARS = 32


def _stats_kind(kind: pa.DataType) -> str | None:
    """What Delta-style statistics a column gets: ``minmax`` (numbers, strings), ``nulls``
    (other primitives: booleans, timestamps, ...), None (nested: maps, lists, structs)."""
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind):
        return "minmax"
    if pa.types.is_nested(kind):
        return None
    return "nulls"


@dataclass
class ColumnStats:
    """Running null count and min/max of one column (``exact`` False: min/max unknown)."""

    nulls: int = 0
    low: Any = None
    high: Any = None
    exact: bool = True

    def update(self, column: pa.Array) -> None:
        """Fold one batch's column in."""
        self.nulls += column.null_count
        if not self.exact or column.null_count == len(column):
            return
        if _stats_kind(column.type) != "minmax":
            self.exact = False
            return
        if pa.types.is_floating(column.type):
            values = column.to_numpy(zero_copy_only=False) if column.null_count == 0 else column.drop_null().to_numpy()
            low, high = values.min(), values.max()  # NaN propagates: then not exact
            if not (math.isfinite(low) and math.isfinite(high)):
                self.exact = False
                return
            low, high = float(low), float(high)
        else:
            pair = pc.min_max(column)
            low, high = pair["min"].as_py(), pair["max"].as_py()
            if isinstance(low, str) and max(len(low), len(high)) > STATS_STRING_CHARS:
                self.exact = False
                return
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)


def delta_stats(rows: int, stats: dict[str, ColumnStats]) -> str:
    """The ``stats`` JSON of a Delta ``add`` action."""
    known = {name: s for name, s in stats.items() if s.exact and s.low is not None}
    return json.dumps(
        {
            "numRecords": rows,
            "minValues": {name: s.low for name, s in known.items()},
            "maxValues": {name: s.high for name, s in known.items()},
            "nullCount": {name: s.nulls for name, s in stats.items()},
        }
    )


def add_action(relative_path: str, partition_values: dict[str, str], size: int, mtime_ms: int, stats: str) -> str:
    """A Delta ``add`` action (JSON) for one new data file."""
    return json.dumps(
        {
            "add": {
                "path": relative_path,
                "partitionValues": partition_values,
                "size": size,
                "modificationTime": mtime_ms,
                "dataChange": True,
                "stats": stats,
            }
        }
    )


@dataclass
class PartitionFileWriter:
    """Writes one partition's batches (in the table's Arrow schema, partition columns
    included) to new Parquet files under ``table_root``; :meth:`close` returns their
    ``add`` actions. ``file_tag`` goes into every file name, so the files of one run can
    be found again (e.g. to delete those of a failed run)."""

    table_root: str
    partition: dict[str, int]
    file_tag: str
    row_group_rows: int = ROW_GROUP_ROWS
    file_rows: int = FILE_ROWS
    actions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._directory = "/".join(f"{k}={v}" for k, v in self.partition.items())
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._file_rows = 0
        self._opened: list[str] = []  # relative paths of every file started

    def write(self, batch: pa.RecordBatch) -> None:
        """Add one batch of rows (all of this partition)."""
        for name, value in self.partition.items():
            if batch.num_rows and pc.any(pc.not_equal(batch.column(name), value)).as_py():
                raise ValueError(f"batch has rows outside partition {name}={value}")
        batch = batch.select([n for n in batch.schema.names if n not in self.partition])
        start = 0
        while start < batch.num_rows:
            room = min(self.file_rows - self._file_rows - self._pending_rows, self.row_group_rows - self._pending_rows)
            part = batch.slice(start, room)
            self._pending.append(part)
            self._pending_rows += part.num_rows
            start += part.num_rows
            if self._pending_rows >= self.row_group_rows or self._file_rows + self._pending_rows >= self.file_rows:
                self._flush()

    def _open(self, schema: pa.Schema) -> None:
        directory = f"{self._directory}/" if self._directory else ""
        self._relative = f"{directory}part-{self.file_tag}-{uuid.uuid4().hex}.c000.snappy.parquet"
        path = os.path.join(self.table_root, self._relative)
        self._opened.append(self._relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Dictionary encoding pays for the repetitive columns, not for the float32 weights.
        dictionary = [f.name for f in schema if f.type != pa.float32()]
        self._writer = pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=dictionary)
        self._stats = {f.name: ColumnStats() for f in schema if _stats_kind(f.type) is not None}

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        table = pa.Table.from_batches(self._pending)
        if self._writer is None:
            self._open(table.schema)
        for name, stats in self._stats.items():
            for chunk in table.column(name).chunks:
                stats.update(chunk)
        self._writer.write_table(table, row_group_size=self._pending_rows)
        self._file_rows += self._pending_rows
        self._pending, self._pending_rows = [], 0
        if self._file_rows >= self.file_rows:
            self._finish_file()

    def _finish_file(self) -> None:
        self._writer.close()
        self._writer = None
        info = os.stat(os.path.join(self.table_root, self._relative))
        values = {k: str(v) for k, v in self.partition.items()}
        stats = delta_stats(self._file_rows, self._stats)
        self.actions.append(add_action(self._relative, values, info.st_size, int(info.st_mtime * 1000), stats))
        self._file_rows = 0

    def close(self) -> list[str]:
        """Write what is buffered, close the open file; the ``add`` actions of all files."""
        self._flush()
        if self._writer is not None:
            self._finish_file()
        return self.actions

    def abort(self) -> None:
        """Close and delete every file written so far (nothing was committed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        remove_files(self.table_root, self._opened)
        self.actions, self._opened = [], []


def write_partition(
    table_root: str, partition: dict[str, int], batches: Iterable[pa.RecordBatch], file_tag: str
) -> list[str]:
    """Write ``batches`` as new files of one partition; their Delta ``add`` actions.
    On an error the files written so far are deleted before it propagates."""
    writer = PartitionFileWriter(table_root, partition, file_tag)
    try:
        for batch in batches:
            writer.write(batch)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def tagged_files(table_root: str, directories: Iterable[str], file_tag: str) -> list[str]:
    """Paths (relative to ``table_root``) of the files carrying ``file_tag`` in ``directories``
    (``""``: the table's root directory)."""
    found = []
    marker = f"-{file_tag}-"
    for directory in directories:
        try:
            names = os.listdir(os.path.join(table_root, directory))
        except FileNotFoundError:
            continue
        prefix = f"{directory}/" if directory else ""
        found += [f"{prefix}{n}" for n in names if n.startswith("part-") and marker in n]
    return found


def remove_files(table_root: str, relative_paths: Iterable[str]) -> int:
    """Delete files (paths relative to ``table_root``; already gone is fine); how many were named."""
    count = 0
    for relative in relative_paths:
        count += 1
        try:
            os.remove(os.path.join(table_root, relative))
        except FileNotFoundError:
            pass
    return count


def committed_paths(actions: Iterable[str]) -> set[str]:
    """The relative paths named by ``add`` actions."""
    return {json.loads(a)["add"]["path"] for a in actions}
