"""``filterspark serve``: warm query latency from a connected client, and one query as a
whole process (``filterspark sql --remote`` against the server vs a cold ``filterspark
sql``, which starts its own Spark), measured side by side in one run.

    .venv/bin/python benchmarks/serve.py --warehouse ./warehouse      # after `make demo`
    .venv/bin/python benchmarks/serve.py --warehouse W --queries 50 --runs 5

This process is the Connect client of the warm measurement (it starts no JVM itself);
the server and every whole-process contender are subprocesses, the contenders run in
turn (remote, cold, remote, cold, ...) so that a drifting machine speed hits both. Exits
1 when the remote and the cold command print different results.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import check, command_line, machine_line, print_table  # noqa: E402

#: A point query and the README's "which visual domains shift most" over a ``_latest`` view.
QUERIES = {
    "count models": "SELECT count(*) AS n FROM filterdb.models",
    "domain shift (view)": (
        "SELECT group_a, round(avg(shift), 4) AS mean_shift, max_by(group_b, shift) AS farthest "
        "FROM filterdb.shifts_latest WHERE scope = 'all' AND dimension = 'visual_category' "
        "GROUP BY group_a ORDER BY mean_shift DESC"
    ),
}
CLI = [sys.executable, "-m", "filterspark.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(warehouse: str, master: str, log: Path, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """``filterspark serve`` on free loopback ports; (process, Connect URL) once it is ready."""
    port = free_port()
    cmd = [*CLI, "serve", "--warehouse", warehouse, "--port", str(port), "--jdbc-port", str(free_port()),
           "--master", master]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"filterspark serve exited with {proc.returncode}; see {log}")
        if "filterspark serve: ready" in log.read_text(errors="replace"):
            return proc, f"sc://127.0.0.1:{port}"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(f"filterspark serve not ready after {timeout:.0f} s; see {log}")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile by linear interpolation (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def warm_latencies(spark, query: str, n: int, warmup: int) -> list[float]:
    """Seconds of ``n`` runs of ``query`` (collected) on the Connect session, after ``warmup``
    untimed ones (the server's JIT compiles the query's code paths over the first runs)."""
    for _ in range(warmup):
        spark.sql(query).collect()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        spark.sql(query).collect()
        times.append(time.perf_counter() - t0)
    return times


def whole_process(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, output) of one command."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                          env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return wall, done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default="warehouse", help="an analysed warehouse (default ./warehouse)")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--queries", type=int, default=20, help="timed warm queries per query (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm queries first (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="whole-process runs of each contender (default 3)")
    args = parser.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    warehouse = str(Path(args.warehouse).resolve())
    env = dict(os.environ)  # before this process becomes a Connect client (pyspark then marks its environment)
    print(command_line())
    print(machine_line())
    log = Path(tempfile.gettempdir()) / f"bench-serve-{os.getpid()}.log"
    t0 = time.perf_counter()
    server, url = start_server(warehouse, args.master, log)
    failures: list[str] = []
    try:
        from pyspark.sql import SparkSession

        print(f"server ready after {time.perf_counter() - t0:.1f} s (log: {log})")
        spark = SparkSession.builder.remote(url).getOrCreate()
        rows, medians = [], []
        for name, query in QUERIES.items():
            times = warm_latencies(spark, query, args.queries, args.warmup)
            medians.append(statistics.median(times))
            rows.append([name, f"{statistics.median(times) * 1000:.0f} ms", f"{percentile(times, 0.95) * 1000:.0f} ms",
                         f"{max(times) * 1000:.0f} ms"])
        spark.stop()
        print(f"\nwarm queries on one connected session ({args.queries} each, after {args.warmup} untimed runs):")
        print_table(["query", "median", "p95", "max"], rows)
        query = QUERIES["count models"]
        remote_cmd = [*CLI, "sql", "--remote", url, query]
        cold_cmd = [*CLI, "sql", "--warehouse", warehouse, query]  # as a user runs it: its own local[*] Spark
        remote, cold = [], []
        for _ in range(args.runs):
            remote.append(whole_process(remote_cmd, env))
            cold.append(whole_process(cold_cmd, env))
        check(all(r[1] == c[1] for r, c in zip(remote, cold)), "remote and cold `filterspark sql` print the same rows",
              failures)
        ratios = [r[0] / c[0] for r, c in zip(remote, cold)]
        remote_median = statistics.median(r[0] for r in remote)
        print(f"\none query as a whole process, {args.runs} runs each, in turn:")
        print_table(["contender", "wall median", "wall min-max"], [
            ["`filterspark sql --remote` (server warm)", f"{remote_median:.2f} s",
             f"{min(r[0] for r in remote):.2f}-{max(r[0] for r in remote):.2f} s"],
            ["`filterspark sql` (cold: its own Spark)", f"{statistics.median(c[0] for c in cold):.2f} s",
             f"{min(c[0] for c in cold):.2f}-{max(c[0] for c in cold):.2f} s"],
        ])
        print(f"ratio remote/cold (pair by pair): median {statistics.median(ratios):.3f}, "
              f"{min(ratios):.3f}-{max(ratios):.3f}; cold/remote {1 / statistics.median(ratios):.1f}x")
        met = max(medians) < 1.0 and remote_median < 5.0
        print(f"targets (warm median < 1 s, `sql --remote` < 5 s as a whole process): {'met' if met else 'MISSED'}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    print("all checks passed" if not failures else f"FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
