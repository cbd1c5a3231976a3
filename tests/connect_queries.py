"""A bare Spark Connect client process for the ``filterspark serve`` tests (pyspark only: it
registers nothing, so whatever it finds the server named). Prints one JSON document.

    python connect_queries.py repeat URL ROUNDS QUERY [QUERY ...]
        every query ROUNDS times in this one session: {"ok": n, "errors": [...], "last": {query: rows}}
    python connect_queries.py until-changed URL TIMEOUT QUERY
        the query every 0.3 s until its rows differ from the first ones:
        {"before": rows, "after": rows, "changed_at": unix time} (after null on timeout)
    python connect_queries.py until-ok URL TIMEOUT QUERY
        the query every 0.3 s until it succeeds: {"rows": rows, "ok_at": unix time, "errors": n}
"""
from __future__ import annotations

import json
import sys
import time


def rows_of(spark, query: str) -> list:
    return [list(r) for r in spark.sql(query).collect()]


def main(mode: str, url: str, amount: str, *queries: str) -> int:
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).getOrCreate()
    if mode == "repeat":
        ok, errors, last = 0, [], {}
        for _ in range(int(amount)):
            for query in queries:
                try:
                    last[query] = rows_of(spark, query)
                    ok += 1
                except PySparkException as err:
                    errors.append(" ".join(str(err).split())[:1000])
        print(json.dumps({"ok": ok, "errors": errors, "last": last}, default=str))
        return 0 if not errors else 1
    deadline = time.time() + float(amount)
    if mode == "until-changed":
        before = rows_of(spark, queries[0])
        while time.time() < deadline:
            after = rows_of(spark, queries[0])
            if after != before:
                print(json.dumps({"before": before, "after": after, "changed_at": time.time()}, default=str))
                return 0
            time.sleep(0.3)
        print(json.dumps({"before": before, "after": None, "changed_at": None}, default=str))
        return 1
    failures = 0
    while time.time() < deadline:
        try:
            rows = rows_of(spark, queries[0])
            print(json.dumps({"rows": rows, "ok_at": time.time(), "errors": failures}, default=str))
            return 0
        except PySparkException:
            failures += 1
            time.sleep(0.3)
    print(json.dumps({"rows": None, "ok_at": None, "errors": failures}))
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
