"""Distributed scans of the ``filters`` (or ``kernels``) table that hand Arrow batches to numpy tasks.

The analysis passes (moments, coefficient range, grouped histograms) are Python
functions from an iterator of Arrow record batches (columns ``w0..w8`` — or, for k x k
kernels of the ``kernels`` table, ``weights``, a list of k² floats — ``model_id``,
``layer_index`` and ``conv_depth_norm``) to one small picklable result per Spark task. A :class:`FilterScan`
runs such a function on the executors, one of two ways, with identical results:

* **files** (the fast path): the driver lists the Delta snapshot's data files (one
  directory per ``model_id`` partition) and Spark tasks read their share of them with
  ``pyarrow.parquet``, only the needed columns, straight into numpy. No row passes through
  the JVM; every file is immutable, so the scan sees exactly the listed snapshot.
* **frame** (the general path): any DataFrame with those columns, through ``mapInArrow``.
  Used when the ``--where`` predicate needs filter-level columns, or the table uses Delta
  features that raw Parquet files do not express (deletion vectors, column mapping), or
  its files are not on a file system pyarrow reads here (``--scan spark`` forces it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from filterspark.delta.capabilities import default_parallelism
from filterspark.delta.files import local_path, unreadable_features
from filterspark.delta.schemas import WEIGHT_COLUMNS
from filterspark.delta.tables import table_detail
from filterspark.delta.warehouse import TableRef
from filterspark.engine.runner import reduce_results, run_on_frame, run_tasks
from filterspark.errors import AnalyzeError, OptionsError
from filterspark.kernels.balance import balanced_groups

#: The columns every scan batch of 3x3 filters carries.
SCAN_COLUMNS = (*WEIGHT_COLUMNS, "model_id", "layer_index", "conv_depth_norm")
#: The columns of a scan batch of k x k kernels (``kernels`` rows of one ``k``).
KERNEL_SCAN_COLUMNS = ("weights", "model_id", "layer_index", "conv_depth_norm")


def scan_columns(k: int) -> tuple[str, ...]:
    """The columns of a scan batch of k x k kernels."""
    return SCAN_COLUMNS if k == 3 else KERNEL_SCAN_COLUMNS
#: Rows per Arrow batch read from a file.
BATCH_ROWS = 65536
#: Bytes of Parquet per task (the file path): large enough to amortise a task's start-up.
TASK_BYTES = 128 << 20
_MODEL_DIR = re.compile(r"/model_id=(-?\d+)/")

BatchTask = Callable[[Iterator[Any]], Any]
#: How a scan reads the filters: auto (files where possible), files, spark (a DataFrame).
SCAN_MODES = ("auto", "files", "spark")


@dataclass
class FilterScan:
    """Where a scan's batches come from: file groups (per task: ``(path, model_id)``
    pairs, with the set of model ids in scope) or a DataFrame of :data:`SCAN_COLUMNS`."""

    spark: SparkSession
    file_groups: list[list[tuple[str, int]]] | None = None
    frame: DataFrame | None = None
    reason: str = ""  # why the frame path was taken (for the run report)
    k: int = 3  # kernel side: 3 reads filters' w0..w8, others kernels' weights rows of that k

    @property
    def mode(self) -> str:
        return "files" if self.file_groups is not None else "spark"

    def map(self, task: BatchTask, description: str) -> list[Any]:
        """``task(batches)`` on every Spark task; the results (small objects) on the driver."""
        what = f"filterspark analyze: {description}"
        if self.file_groups is not None:
            k = self.k
            return run_tasks(self.spark, self.file_groups, lambda _, group: [task(read_files(group, k=k))], what)
        return run_on_frame(self.spark, self.frame, task, what)

    def reduce(self, task: BatchTask, merge: Callable[[Any, Any], Any], description: str) -> Any:
        """``task`` on every Spark task, the results merged on the driver with ``merge``;
        None when there is nothing to scan."""
        return reduce_results(self.map(task, description), merge)


def read_files(group: Iterable[tuple[str, int]], batch_rows: int = BATCH_ROWS, k: int = 3) -> Iterator[Any]:
    """Arrow batches of :func:`scan_columns` from Parquet files of one ``model_id`` each
    (``k`` != 3: ``kernels`` files, their rows of that ``k`` only)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = scan_columns(k)
    for path, model_id in group:
        with pq.ParquetFile(path) as file:
            names = set(file.schema_arrow.names)
            columns = [c for c in wanted if c in names and c != "model_id"] + (["k"] if k != 3 else [])
            for batch in file.iter_batches(batch_size=batch_rows, columns=columns):
                if k != 3:
                    batch = batch.filter(pc.equal(batch.column("k"), k))
                n = batch.num_rows
                if n == 0:
                    continue
                arrays = {c: batch.column(c) for c in columns}
                arrays["model_id"] = pa.array(np.full(n, model_id, dtype=np.int64))
                if "conv_depth_norm" not in arrays:
                    arrays["conv_depth_norm"] = pa.nulls(n, pa.float64())
                yield pa.RecordBatch.from_arrays([arrays[c] for c in wanted], names=list(wanted))


def plan_file_groups(files: list[tuple[str, int, int]], parallelism: int) -> list[list[tuple[str, int]]]:
    """Spread ``(path, model_id, size)`` over tasks of about :data:`TASK_BYTES` (at least
    ``parallelism`` tasks when there are that many files), largest first onto the
    lightest task, so tasks finish together."""
    if not files:
        return []
    total = sum(size for _, _, size in files)
    n_tasks = max(1, min(len(files), max(parallelism, -(-total // TASK_BYTES))))
    ordered = sorted(files, key=lambda f: f[0])  # ties broken by path, as before
    return balanced_groups([((path, model_id), size) for path, model_id, size in ordered], n_tasks)


def file_scan(spark: SparkSession, filters: TableRef, model_ids: set[int]) -> tuple[list | None, str]:
    """File groups of the current snapshot of ``filters`` (or ``kernels``) for ``model_ids``, or (None, why not). File sizes
    (for balancing) are read where the driver sees the files, else taken as equal."""
    import os

    unreadable = unreadable_features(table_detail(spark, filters))
    if unreadable:
        return None, f"the {filters.name} table uses {', '.join(unreadable)}"
    files: list[tuple[str, int, int]] = []
    for uri in filters.read(spark).inputFiles():
        path = local_path(uri)
        if path is None:
            return None, f"data files are not on a local file system ({uri.split(':', 1)[0]}:)"
        match = _MODEL_DIR.search(path)
        if match is None:
            return None, f"the {filters.name} table is not partitioned by model_id"
        model_id = int(match.group(1))
        if model_id in model_ids:
            files.append((path, model_id, os.path.getsize(path) if os.path.exists(path) else 1))
    return plan_file_groups(files, default_parallelism(spark)), ""


def filter_scan(
    spark: SparkSession,
    filters: TableRef,
    model_ids: set[int],
    frame: Callable[[], DataFrame],
    mode: str = "auto",
    model_level_scope: bool = True,
    k: int = 3,
) -> FilterScan:
    """The scan for one analysis: the files path when ``mode`` allows it and the scope is
    a set of whole models (``model_level_scope``), else ``frame()`` (a DataFrame of
    :func:`scan_columns`, already scoped). ``k`` != 3: ``filters`` is the ``kernels``
    table, read for its k x k rows."""
    if mode not in SCAN_MODES:
        raise OptionsError(f"scan must be one of {', '.join(SCAN_MODES)}, not {mode!r}")
    reason = "scan='spark'"
    if mode != "spark":
        if not model_level_scope:
            reason = "the where predicate uses filter-level columns"
        else:
            groups, reason = file_scan(spark, filters, model_ids)
            if groups is not None:
                return FilterScan(spark, file_groups=groups, k=k)
        if mode == "files":
            raise AnalyzeError(f"scan='files' is not possible: {reason}")
    return FilterScan(spark, frame=frame().select(*[F.col(c) for c in scan_columns(k)]), reason=reason, k=k)
