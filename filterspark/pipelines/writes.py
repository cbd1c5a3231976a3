"""The writes extraction and the dataset.h5 import share: which models changed, the row
tables (``filters``, ``kernels``) written either as Parquet files by the tasks themselves
and committed by the driver (the files path) or streamed through Spark with each task's
small results beside them (the spark path), and the ``layers``/``models`` rows that
commit a set of models.

Delta has no multi-table transactions, so ``filters`` and ``layers`` are written first and
``models`` last: a ``models`` row is the commit record of a model.
"""
from __future__ import annotations

import logging
import pickle
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from filterspark.delta import jvm
from filterspark.delta.files import discard_unreferenced, file_write_blockers, local_path
from filterspark.delta.schemas import FILTERS, LAYERS, MODELS, PARTITION_COLUMNS, arrow_schema
from filterspark.delta.tables import id_predicate, replace_rows, rows_frame, table_detail, upsert_rows, with_conflict_retry
from filterspark.delta.warehouse import TableRef
from filterspark.errors import OptionsError

log = logging.getLogger("filterspark.writes")

#: The extra column of a streamed filters write: rows that carry one pickled task result
#: (all filter columns null), collected by an ``Observation`` and kept out of the table.
RESULT_COLUMN = "_result"

#: How row tables reach Delta: ``files`` (the tasks write Parquet with pyarrow, the driver
#: commits them), ``spark`` (``mapInArrow`` + Delta's writer), ``auto`` (files where possible).
WRITE_MODES = ("auto", "files", "spark")
#: The tables of one row per kernel, each model's rows in its ``model_id=`` partition.
ROW_TABLES = ("filters", "kernels")

#: What a streaming task yields: filter rows (Arrow batches in ``FILTERS``' schema) and,
#: in between, any picklable result object for the driver.
TaskOutput = Iterator[Any]


def existing_fingerprints(spark: SparkSession, models: TableRef, ids: list[int], shapes: bool = False) -> dict:
    """The stored fingerprint of each of the models ``ids`` that ``models`` has;
    ``shapes``: ``(fingerprint, kernel_shape_counts)`` pairs instead."""
    if table_detail(spark, models).get("numFiles") == 0:
        return {}  # a new warehouse: no query (a Spark job) needed
    df = models.read(spark).where(id_predicate("model_id", ids))
    rows = df.select("model_id", "fingerprint", "kernel_shape_counts").collect()
    return {r.model_id: (r.fingerprint, r.kernel_shape_counts) if shapes else r.fingerprint for r in rows}


def check_write_mode(requested: str) -> None:
    """Refuse a ``write`` setting that is not one of :data:`WRITE_MODES`."""
    if requested not in WRITE_MODES:
        raise OptionsError(f"write must be one of {', '.join(WRITE_MODES)}, not {requested!r}")


def write_path(
    spark: SparkSession, tables: dict[str, TableRef], names: Sequence[str], requested: str
) -> tuple[str, str, dict[str, str]]:
    """``(mode, reason, local roots)``: whether the tasks write the files of the tables
    ``names`` themselves (with those tables' local roots when they do), for the
    ``requested`` mode; ``reason``: why the spark path was taken."""
    check_write_mode(requested)
    if requested == "spark":
        return "spark", "write='spark'", {}
    reasons = []
    details = {}
    missing = jvm.unavailable_reason(spark)
    if missing:
        reasons.append(f"direct Delta commits need the driver's JVM ({missing})")
    else:
        for name in names:
            details[name] = table_detail(spark, tables[name])
            blockers = file_write_blockers(details[name])
            if blockers:
                reasons.append(f"the {name} table: {'; '.join(blockers)}")
    if reasons:
        reason = "; ".join(reasons)
        if requested == "files":
            raise OptionsError(f"write='files' is not possible: {reason}")
        return "spark", reason, {}
    return "files", "", {name: local_path(str(d["location"])) for name, d in details.items()}


#: What a files-path task yields per unit of work: its result for the driver and, per
#: table, the Delta ``add`` actions of the Parquet files it wrote.
FileTaskOutput = tuple[Any, dict[str, list[str]]]


def _run_files(root: str, ids: Iterable[int], file_tag: str) -> list[str]:
    """The files (relative paths) of one run (``file_tag``) in the models' partitions."""
    from filterspark.delta.parquet_files import tagged_files

    return tagged_files(root, [f"model_id={i}" for i in ids], file_tag)


def commit_task_files(
    spark: SparkSession,
    run: Callable[[str], list[FileTaskOutput]],
    tables: dict[str, TableRef],
    roots: dict[str, str],
    ids: list[int],
    phase: Callable[[str, str | None], None] | None = None,
) -> list[Any]:
    """The files path: ``run(file_tag)`` runs the tasks, which write the rows of the
    models ``ids`` as Parquet files (``file_tag`` in every name) into the ``model_id=``
    partitions of ``roots``' tables; then each table in ``roots``' order gets one Delta
    commit replacing those models' files by the new ones. A table with nothing to add
    and no files is left alone (no empty commit). ``phase("extract", ...)`` is called
    when the tasks are done. Returns the tasks' results.

    On an error, every file of the run that no snapshot references is deleted; after the
    commits, so are the files of retried task attempts that were not committed."""
    from filterspark.delta.parquet_files import committed_paths, remove_files

    file_tag = uuid.uuid4().hex[:16]
    actions: dict[str, list[str]] = {name: [] for name in roots}
    predicate = id_predicate("model_id", ids)
    try:
        outputs = run(file_tag)
        if phase:
            phase("extract", "commit rows")
        for name in roots:
            actions[name] = [a for _, adds in outputs for a in adds.get(name, [])]
            if not actions[name] and table_detail(spark, tables[name]).get("numFiles") == 0:
                continue
            table, adds, partitions = tables[name], actions[name], list(PARTITION_COLUMNS[name])
            with_conflict_retry(lambda: jvm.replace_files(spark, table, predicate, adds, partitions), f"write {name}")
    except BaseException:
        for name, root in roots.items():
            discard_unreferenced(spark, tables[name], root, _run_files(root, ids, file_tag))
        raise
    for name, root in roots.items():
        committed = committed_paths(actions[name])
        stale = remove_files(root, [p for p in _run_files(root, ids, file_tag) if p not in committed])
        if stale:
            log.info("deleted %d %s files of retried task attempts", stale, name)
    return [result for result, _ in outputs]


def _streamed_schema(schema: StructType) -> StructType:
    from pyspark.sql.types import BinaryType, StructField

    fields = [StructField(f.name, f.dataType, True) for f in schema.fields]
    return StructType([*fields, StructField(RESULT_COLUMN, BinaryType(), True)])


def _streaming_function(payloads: list[str], task: Callable[[Iterable[str]], TaskOutput], row_schema: StructType):
    """The ``mapInArrow`` function: ``range`` ids → ``task`` over those payloads, its Arrow
    batches widened by a null result column, its results as one-row batches."""

    def run(batches):
        import pyarrow as pa

        schema = arrow_schema(_streamed_schema(row_schema))
        mine = (payloads[i] for batch in batches for i in batch.column(0).to_pylist())
        for item in task(mine):
            if isinstance(item, pa.RecordBatch):
                arrays = [item.column(name) for name in item.schema.names]
                yield pa.RecordBatch.from_arrays([*arrays, pa.nulls(item.num_rows, pa.binary())], schema=schema)
            else:
                row = {name: [None] for name in schema.names}
                row[RESULT_COLUMN] = [pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)]
                yield pa.RecordBatch.from_pydict(row, schema=schema)

    return run


#: Spark sorts every task's rows by the partition column before a partitioned write
#: (measured: a 2.4M-row task spilled 300 MB) unless concurrent output writers are allowed.
_CONCURRENT_WRITERS = "spark.sql.maxConcurrentOutputFileWriters"


@contextmanager
def _unsorted_partition_writes(spark: SparkSession, writers: int):
    """Allow ``writers`` concurrent output files per task for one write, then restore the setting."""
    previous = spark.conf.get(_CONCURRENT_WRITERS, None)
    if previous is None or int(previous) < writers:
        spark.conf.set(_CONCURRENT_WRITERS, str(writers))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(_CONCURRENT_WRITERS)
        else:
            spark.conf.set(_CONCURRENT_WRITERS, previous)


def stream_rows(
    spark: SparkSession,
    payloads: list[str],
    task: Callable[[Iterable[str]], TaskOutput],
    table: TableRef,
    schema: StructType,
    predicate: str,
    profile=None,
    concurrent_writers: int = 2,
) -> list[Any]:
    """Run ``task`` on one Spark task per payload and write the rows it yields (Arrow
    batches in ``schema``) into ``table`` as one Delta ``replaceWhere predicate`` commit;
    return the other objects it yielded. They ride along as extra rows that an
    ``Observation`` collects while the write runs, so one pass does both, with the
    DataFrame API only (classic or Connect). ``concurrent_writers``: the most
    ``model_id`` partitions one task writes, so that Spark writes them unsorted (a sort
    of every task's rows costs more than the write)."""
    from pyspark.sql import Observation

    if not payloads:
        return []
    jobs = spark.range(0, len(payloads), 1, len(payloads))
    function = _streaming_function(payloads, task, schema)
    out = jobs.mapInArrow(function, _streamed_schema(schema), profile=profile)
    observation = Observation(f"filterspark_{uuid.uuid4().hex[:8]}")
    out = out.observe(observation, F.collect_list(RESULT_COLUMN).alias("results"))
    rows = out.where(F.col(RESULT_COLUMN).isNull()).select(*[F.col(f.name) for f in schema.fields])
    with _unsorted_partition_writes(spark, concurrent_writers):
        replace_rows(rows, table, predicate, f"write {table.name}")
    return [pickle.loads(blob) for blob in observation.get["results"]]


def stream_filters(spark: SparkSession, payloads: list[str], task: Callable[[Iterable[str]], TaskOutput],
                   filters: TableRef, predicate: str, profile=None, concurrent_writers: int = 2) -> list[Any]:
    """:func:`stream_rows` into ``filters``."""
    return stream_rows(spark, payloads, task, filters, FILTERS, predicate, profile, concurrent_writers)


def remove_model_rows(spark: SparkSession, table: TableRef, schema: StructType, predicate: str, what: str) -> None:
    """Delete the rows matching ``predicate`` (one ``replaceWhere`` commit with no rows)."""
    replace_rows(rows_frame(spark, [], schema), table, predicate, what)


def _replace_model_rows(
    spark: SparkSession, table: TableRef, rows: list[dict], schema, ids: list[int], direct: bool, spark_write
) -> None:
    """Replace the rows of models ``ids`` in the small ``table`` by ``rows``: on the driver
    with pyarrow and one Delta commit where possible (``direct``), else ``spark_write()``."""
    if direct:
        import pyarrow as pa

        data = pa.Table.from_pylist([{k: r.get(k) for k in schema.fieldNames()} for r in rows], schema=arrow_schema(schema))
        tag = uuid.uuid4().hex[:16]
        if with_conflict_retry(lambda: jvm.rewrite_rows(spark, table, "model_id", ids, data, tag), f"write {table.name}") is not None:
            return
    spark_write()


def driver_may_rewrite(spark: SparkSession, tables: dict[str, TableRef], mode: str) -> bool:
    """Whether ``layers`` and ``models`` may be rewritten on the driver
    (:func:`commit_layers_and_models`' ``direct``): the run took the files path (``mode``)
    and neither table has a feature plain Parquet files cannot keep."""
    return mode == "files" and not any(file_write_blockers(table_detail(spark, tables[t])) for t in ("layers", "models"))


def commit_layers_and_models(
    spark: SparkSession, layers: TableRef, models: TableRef, layer_rows: list[dict], model_rows: list[dict],
    ids: list[int], direct: bool, phase: Callable[[str, str | None], None] | None = None,
) -> None:
    """Replace the ``layers`` rows of models ``ids``, then write their ``models`` rows (the
    commit record, always last). ``direct``: rewrite the tables' few small files on the
    driver with one commit each (classic sessions, local files; :func:`driver_may_rewrite`),
    else through Spark."""
    predicate = id_predicate("model_id", ids)
    _replace_model_rows(
        spark, layers, layer_rows, LAYERS, ids, direct,
        lambda: replace_rows(rows_frame(spark, layer_rows, LAYERS), layers, predicate, "write layers"),
    )
    if phase:
        phase("layers", "write models")
    commit_models(spark, models, model_rows, ids, direct)


def commit_models(spark: SparkSession, models: TableRef, model_rows: list[dict], ids: list[int], direct: bool) -> None:
    """Write the ``models`` rows of models ``ids``: their commit record, always the last write."""
    _replace_model_rows(
        spark, models, model_rows, MODELS, ids, direct,
        lambda: upsert_rows(spark, rows_frame(spark, model_rows, MODELS), models, ["model_id"], "write models"),
    )
