"""One runner for executor work: a list of payloads, one Spark task each, a Python function
per task, its results back on the driver.

Every executor-side step of the project (checksums, extraction, the dataset.h5 import
planning, the analysis scans, the report's 2-D histogram) is a plain function handed to
:func:`run_tasks`. It uses only the DataFrame API — ``spark.range`` with one partition
per payload and ``mapInArrow`` (which takes a ``ResourceProfile``, so GPU stages keep
their profile) — so it runs the same on classic and Spark Connect sessions. Results are
pickled per item and merged on the driver (no accumulators, no RDDs).
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from pyspark.sql import DataFrame, SparkSession

from filterspark.delta.capabilities import set_job_description

P = TypeVar("P")
R = TypeVar("R")

#: The single column of the runner's result rows.
RESULT_SCHEMA = "result binary"


def _result_batch(result: Any):
    """One result as a one-row Arrow batch of :data:`RESULT_SCHEMA` (pickled)."""
    import pyarrow as pa

    blob = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    return pa.RecordBatch.from_arrays([pa.array([blob], type=pa.binary())], names=["result"])


def _collect_results(spark: SparkSession, mapped, description: str) -> list:
    set_job_description(spark, description)
    try:
        rows = mapped.collect()
    finally:
        set_job_description(spark, None)
    return [pickle.loads(row[0]) for row in rows]


def _task_function(payloads: Sequence[P], task: Callable[[int, P], Iterable[R]]):
    """The ``mapInArrow`` function: the ids of the partition's ``range`` rows → ``task``'s
    results for those payloads, one pickled row per result."""

    def run(batches):
        for batch in batches:
            for index in batch.column(0).to_pylist():
                for result in task(index, payloads[index]):
                    yield _result_batch(result)

    return run


def run_tasks(
    spark: SparkSession,
    payloads: Sequence[P],
    task: Callable[[int, P], Iterable[R]],
    description: str,
    profile=None,
) -> list[R]:
    """Run ``task(index, payload)`` for every payload, one Spark task per payload, and return
    every result it yields, in payload order. ``profile``: a ``ResourceProfile`` for the
    stage (GPU tasks). The payloads travel with the function, so keep them small (paths,
    JSON), and the results too (summaries, partial aggregates): never rows of a table."""
    if not payloads:
        return []
    frame = spark.range(0, len(payloads), 1, len(payloads))
    mapped = frame.mapInArrow(_task_function(list(payloads), task), RESULT_SCHEMA, profile=profile)
    return _collect_results(spark, mapped, description)


def run_on_frame(spark: SparkSession, frame: DataFrame, task: Callable[[Iterator[Any]], R], description: str) -> list[R]:
    """Run ``task(batches)`` on every partition of ``frame`` (its Arrow record batches) and
    return one result per partition: for inputs that are a DataFrame rather than payloads."""

    def run(batches):
        yield _result_batch(task(iter(batches)))

    return _collect_results(spark, frame.mapInArrow(run, RESULT_SCHEMA), description)


def reduce_results(results: Iterable[R], merge: Callable[[R, R], R]) -> R | None:
    """Merge partial results on the driver, left to right; None when there are none."""
    merged: Any = None
    for result in results:
        merged = result if merged is None else merge(merged, result)
    return merged
