"""Wall time per phase of a job, for its report (where a run spends its time)."""
from __future__ import annotations

import time

from pyspark.sql import SparkSession

from filterspark.delta.capabilities import set_job_description


class Phases:
    """Call with the name of the phase that just finished; the time since the previous call
    is added to ``out[name]``. ``next_description`` becomes the Spark job description."""

    def __init__(self, spark: SparkSession, out: dict[str, float], job: str) -> None:
        self.spark, self.out, self.job, self.t = spark, out, job, time.perf_counter()

    def __call__(self, finished: str, next_description: str | None = None) -> None:
        now = time.perf_counter()
        self.out[finished] = self.out.get(finished, 0.0) + now - self.t
        self.t = now
        if next_description:
            set_job_description(self.spark, f"{self.job}: {next_description}")
