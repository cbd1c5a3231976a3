"""spark-submit app for tests: read the extraction tables again and again while writers run.

Each round reads ``models`` at its latest Delta version, then ``layers`` and ``filters``
(read after it, so at least as new), and checks that every committed model is complete:
``filters`` holds exactly ``filters_3x3`` distinct rows of it and ``layers`` exactly
``conv_layers``. Stops when ``expected`` ok models are visible or at the deadline, and
prints one ``SNAPSHOT_READER {json}`` line.

    spark-submit snapshot_reader.py <warehouse> <expected ok models> <seconds>
"""
import glob
import json
import os
import sys
import time

from pyspark.sql import functions as F

from filterspark.engine.session import build_session

from filterspark.delta.warehouse import table_path


def main(warehouse: str, expected: int, seconds: float) -> None:
    from delta.tables import DeltaTable

    spark = build_session(app_name="filterspark-snapshot-reader")
    paths = {t: table_path(warehouse, "filterdb", t) for t in ("models", "layers", "filters")}
    rounds, violations, seen_counts, versions = 0, [], [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # Not DeltaTable.isDeltaTable: it caches a "no table" answer for the path. The
        # test's warehouse is a local directory, so look for a first commit directly.
        if not all(glob.glob(os.path.join(p, "_delta_log", "*.json")) for p in paths.values()):
            time.sleep(0.5)
            continue
        version = DeltaTable.forPath(spark, paths["models"]).history(1).collect()[0]["version"]
        models = (
            spark.read.format("delta").option("versionAsOf", version).load(paths["models"])
            .where("status = 'ok'").select("model_id", "name", "filters_3x3", "conv_layers")
        )
        filters = (
            spark.read.format("delta").load(paths["filters"]).groupBy("model_id")
            .agg(F.count("*").alias("rows"), F.countDistinct("layer_index", "filter_index").alias("distinct_rows"))
        )
        layers = spark.read.format("delta").load(paths["layers"]).groupBy("model_id").agg(F.count("*").alias("layer_rows"))
        joined = models.join(filters, "model_id", "left").join(layers, "model_id", "left").collect()
        rounds += 1
        versions.append(version)
        seen_counts.append(len(joined))
        for r in joined:
            rows, distinct, layer_rows = r["rows"] or 0, r["distinct_rows"] or 0, r["layer_rows"] or 0
            if rows != r["filters_3x3"] or distinct != rows or layer_rows != r["conv_layers"]:
                violations.append(
                    {"version": version, "model": r["name"], "filters_3x3": r["filters_3x3"], "rows": rows,
                     "distinct": distinct, "conv_layers": r["conv_layers"], "layer_rows": layer_rows}
                )
        if len(joined) >= expected:
            break
    print("SNAPSHOT_READER " + json.dumps(
        {"rounds": rounds, "violations": violations[:20], "model_counts": seen_counts, "versions": versions}
    ), flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
