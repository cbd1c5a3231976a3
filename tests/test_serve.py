"""``filterspark serve``: a real server process on a copy of the analysed demo warehouse,
real clients in their own processes (``filterspark sql --remote``, a bare pyspark Connect
client, pip's ``beeline``), the test's classic session as the other writer.

One server serves the module's first tests (no token, default host); it is then stopped
with SIGTERM and a second one, with a token, is started on the same warehouse (restarting
loses nothing; tokenless clients are refused).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clusters import ServeProcess, beeline, listening_sockets, process_tree, run_cli, spark_env
from compare import readme_sql

CLIENT = Path(__file__).with_name("connect_queries.py")
TOKEN = "test-token-0123456789abcdef"
MODELS_QUERY = "SELECT name, status, filters_3x3 FROM filterdb.models ORDER BY name"
SHIFTS_QUERY = ("SELECT dimension, group_a, group_b, round(shift, 6) AS shift FROM filterdb.shifts_latest "
                "ORDER BY dimension, group_a, group_b")


def client(mode: str, url: str, amount, *queries: str, timeout: float = 300) -> subprocess.Popen:
    """The bare Connect client (connect_queries.py) as its own process, output piped."""
    return subprocess.Popen([sys.executable, str(CLIENT), mode, url, str(amount), *queries], env=spark_env(_conf_dir()),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


def result(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def _conf_dir() -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / "serve-client-conf"


def _cell(text: str):
    """A printed value, numbers as floats (beeline, Python and Spark print them differently)."""
    try:
        return round(float(text), 6)
    except ValueError:
        return text


def _normal(rows) -> list[list]:
    return [[_cell("" if v is None else str(v)) for v in row] for row in rows]


def _csv_sets(text: str, headers: list[str], quotechar: str = '"') -> list[list[list]]:
    """The rows under each of ``headers`` (CSV header lines, in order) in a client's output
    (beeline's csv2 quotes with NUL characters)."""
    lines = text.strip().splitlines()
    # (beeline prints its prompt before the first header)
    starts = [next(i for i, line in enumerate(lines) if line.endswith(h)) for h in headers] + [len(lines)]
    return [_normal(csv.reader(lines[a + 1:b], quotechar=quotechar)) for a, b in zip(starts, starts[1:])]


HEADERS = ["name,status,filters_3x3", "dimension,group_a,group_b,shift"]


def _expected(spark, warehouse: Path) -> dict[str, list[list]]:
    """What MODELS_QUERY and SHIFTS_QUERY must return, read by the classic session from the
    Delta files themselves (no registration in the shared session)."""
    from pyspark.sql import functions as F

    def table(name: str):
        return spark.read.format("delta").load(str(warehouse / "filterdb.db" / name))

    models = table("models").select("name", "status", "filters_3x3").orderBy("name")
    latest = table("analysis_runs").groupBy("scope").agg(F.max("run_id").alias("run_id")).select("run_id")
    shifts = (table("shifts").join(latest, "run_id")
              .select("dimension", "group_a", "group_b", F.round("shift", 6).alias("shift"))
              .orderBy("dimension", "group_a", "group_b"))
    return {MODELS_QUERY: _normal(models.collect()), SHIFTS_QUERY: _normal(shifts.collect())}


@pytest.fixture(scope="module")
def served_warehouse(analyzed_warehouse, tmp_path_factory) -> Path:
    warehouse = tmp_path_factory.mktemp("served") / "warehouse"
    shutil.copytree(analyzed_warehouse["warehouse"], warehouse)
    return warehouse


@pytest.fixture(scope="module")
def server(served_warehouse, tmp_path_factory):
    """``filterspark serve`` with its defaults (127.0.0.1, no token) on the warehouse copy."""
    proc = ServeProcess(tmp_path_factory.mktemp("serve"), served_warehouse)
    try:
        proc.start()
        print(f"\n[timing] filterspark serve ready after {proc.started_in:.1f} s")
        yield proc
    finally:
        proc.stop()


def test_connect_client_and_beeline_read_models_and_shifts_latest(spark, server, served_warehouse):
    expected = _expected(spark, served_warehouse)
    env = {**os.environ, "JAVA_HOME": "/nonexistent"}  # a client that tried to start a JVM would fail
    for query, header in zip((MODELS_QUERY, SHIFTS_QUERY), HEADERS):
        t0 = time.monotonic()
        rc, out = run_cli(["sql", "--remote", server.url, "--format", "csv", query], env=env)
        assert rc == 0, out[-3000:]
        assert _csv_sets(out, [header]) == [expected[query]]
        print(f"\n[serve] filterspark sql --remote, whole process: {time.monotonic() - t0:.1f} s")
    assert len(expected[MODELS_QUERY]) >= 20 and len(expected[SHIFTS_QUERY]) > 20
    t0 = time.monotonic()
    rc, out = beeline(server.jdbc_url, MODELS_QUERY, SHIFTS_QUERY)
    assert rc == 0, out[-3000:]
    assert _csv_sets(out, HEADERS, quotechar="\0") == [expected[MODELS_QUERY], expected[SHIFTS_QUERY]]
    print(f"[serve] beeline, whole process: {time.monotonic() - t0:.1f} s")


def test_any_grouping_shifts_through_the_server(spark, server, served_warehouse):
    """The README's plain SQL through JDBC (no project code in the client), the table
    function and ``filterspark shifts`` through Connect: the run's family shifts."""
    rows = spark.read.format("delta").load(str(served_warehouse / "filterdb.db" / "shifts")).where(
        "dimension = 'family'").orderBy("group_a", "group_b").select("group_a", "group_b", "shift").collect()
    expected = _normal([(r.group_a, r.group_b, round(r.shift, 6)) for r in rows])
    assert len(expected) > 2
    header = "group_a,group_b,shift"
    wrap = "SELECT group_a, group_b, round(shift, 6) AS shift FROM ({}) t ORDER BY group_a, group_b"
    rc, out = beeline(server.jdbc_url, wrap.format(readme_sql("any-grouping-shifts-sql")))
    assert rc == 0, out[-3000:]
    assert _csv_sets(out, [header], quotechar="\0") == [expected]
    function = readme_sql("any-grouping-shifts-function").rsplit("ORDER BY", 1)[0]
    rc, out = run_cli(["sql", "--remote", server.url, "--format", "csv", wrap.format(function)])
    assert rc == 0, out[-3000:]
    assert _csv_sets(out, [header]) == [expected]
    rc, out = run_cli(["shifts", "--remote", server.url, "--by", "family", "--format", "csv"])
    assert rc == 0, out[-3000:]
    got = [line.split(",")[:3] for line in out.strip().splitlines() if line.count(",") >= 6 and not line.startswith("group_a")]
    assert [[a, b, round(float(x), 6)] for a, b, x in got] == expected


def test_listens_on_loopback_only_by_default(server):
    sockets = listening_sockets(process_tree(server.proc.popen.pid))
    ports = {port for _, port in sockets}
    assert {server.port, server.jdbc_port} <= ports, sockets
    assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets


def test_off_loopback_without_a_token_exits_naming_the_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FILTERSPARK_TOKEN"}
    t0 = time.monotonic()
    rc, out = run_cli(["serve", "--warehouse", str(tmp_path), "--host", "0.0.0.0"], env=env, timeout=120)
    assert rc != 0 and "token" in out and "FILTERSPARK_TOKEN" in out, out
    assert "Traceback" not in out and time.monotonic() - t0 < 60  # refused before any Spark starts


def test_concurrent_clients_and_a_failing_one(server):
    """8 clients x 25 queries at once, beside a client whose queries fail: every good query
    answers, the failures reach their own client only."""
    queries = ["SELECT count(*) FROM filterdb.models", "SELECT count(*) FROM filterdb.shifts_latest",
               "SELECT task, count(*) FROM filterdb.filters GROUP BY task ORDER BY task",
               "SELECT max(share_degenerate) FROM filterdb.models", "SELECT count(*) FROM filterdb.layers"]
    bad = client("repeat", server.url, 5, "SELECT * FROM filterdb.no_such_table", "SELECT raise_error('boom')")
    good = [client("repeat", server.url, 5, *queries) for _ in range(8)]
    results = [result(p) for p in good]
    failed = result(bad)
    assert [r["errors"] for r in results] == [[]] * 8
    assert sum(r["ok"] for r in results) == 8 * 25
    assert len({json.dumps(r["last"], sort_keys=True) for r in results}) == 1  # every client saw the same answers
    assert len(failed["errors"]) == 10 and failed["ok"] == 0
    assert sum("TABLE_OR_VIEW_NOT_FOUND" in e for e in failed["errors"]) == 5
    assert sum("boom" in e for e in failed["errors"]) == 5


def test_a_killed_client_leaves_the_server_serving(server):
    long_query = "SELECT count(*) FROM range(0, 3000000000, 1, 3000)"  # 3000 short tasks
    victim = client("repeat", server.url, 1, long_query)
    time.sleep(6)  # the client is connected and its query running
    assert victim.poll() is None
    victim.kill()
    victim.wait(30)
    t0 = time.monotonic()
    survivor = result(client("repeat", server.url, 3, "SELECT count(*) FROM filterdb.models"), timeout=120)
    assert survivor["errors"] == [] and survivor["ok"] == 3
    print(f"\n[serve] 3 queries beside the orphaned one: {time.monotonic() - t0:.1f} s (client start included)")
    assert server.proc.popen.poll() is None


def test_fresh_data_from_another_process_without_restart(spark, server, served_warehouse):
    """A new analysis run written by another Spark application (the test's classic session)
    shows in ``shifts_latest`` within seconds, and its new ``coefficients`` table (with its
    view) is named by the server itself (the bare client registers nothing)."""
    from filterspark.delta.registry import register_tables, registered_warehouse
    from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis

    watcher = client("until-changed", server.url, 240, "SELECT max(run_id) FROM filterdb.shifts_latest")
    time.sleep(4)  # the watcher has its first answer
    before = registered_warehouse(spark)
    try:
        report = run_analysis(spark, AnalyzeOptions(warehouse=str(served_warehouse), write_coefficients=True))
        written_at = time.time()
    finally:
        if before:
            register_tables(spark, before)  # the shared session's names as they were
    seen = result(watcher)
    assert seen["after"] == [[report.run_id]], seen
    # (run_analysis returns a moment after its last commit, so this may be slightly negative)
    print(f"\n[serve] new run visible {seen['changed_at'] - written_at:+.1f} s from the end of run_analysis")
    assert seen["changed_at"] - written_at < 10
    named = result(client("until-ok", server.url, 30, "SELECT count(*) FROM filterdb.coefficients_latest"))
    assert named["rows"] == [[report.n_filters]], named
    assert named["ok_at"] - written_at < 15
    assert "(new: coefficients)" in server.proc.text()


def test_sigterm_stops_cleanly_and_a_restart_with_a_token_loses_nothing(spark, server, served_warehouse,
                                                                        tmp_path_factory):
    expected = _expected(spark, served_warehouse)
    assert server.terminate() == 0
    log = server.proc.text()
    assert "filterspark serve: stopped" in log
    env = spark_env(tmp_path_factory.mktemp("token-conf"), FILTERSPARK_TOKEN=TOKEN)
    secured = ServeProcess(tmp_path_factory.mktemp("serve-token"), served_warehouse, "--jdbc-port", "0", env=env)
    try:
        secured.start()
        port = secured.port
        refused = result(client("repeat", f"sc://127.0.0.1:{port}", 1, "SELECT 1"))
        assert "UNAUTHENTICATED" in refused["errors"][0] and refused["ok"] == 0
        wrong = result(client("repeat", f"sc://localhost:{port}/;token=not-the-token-0123456789", 1, "SELECT 1"))
        assert "UNAUTHENTICATED" in wrong["errors"][0]
        for url in (f"sc://localhost:{port}/;token={TOKEN}", f"sc://127.0.0.1:{port}/;authorization=Bearer%20{TOKEN}"):
            served = result(client("repeat", url, 1, MODELS_QUERY, SHIFTS_QUERY))
            assert served["errors"] == [], served
            for query in (MODELS_QUERY, SHIFTS_QUERY):
                assert _normal(served["last"][query]) == expected[query]
        assert f"token={TOKEN}" not in secured.proc.text() and TOKEN not in secured.proc.text()
        assert "$FILTERSPARK_TOKEN" in secured.proc.text()  # the start-up lines name it instead
    finally:
        secured.stop()
