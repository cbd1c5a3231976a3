"""Shared plumbing of the benchmark scripts: session, timing, memory readings, tables.

Nothing here is product logic: the scripts call filterspark's own functions for our
side and write the baselines (MLlib, numpy/scikit-learn, torch + pyarrow) themselves.
Memory is read from ``/proc`` (Linux): ``VmHWM`` is a process's peak resident set, and
writing ``5`` to ``/proc/<pid>/clear_refs`` resets it, so each contender's peak is its own.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: Settings of every benchmark session (the issue's targets are for local[2], 2 GB driver).
BENCH_CONF = {
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
}


class LocalConnectServer:
    """A Spark Connect server started for one benchmark run (same master, memory and
    settings as the classic session would get); its JVM tree is the one measured."""

    def __init__(self, master: str, conf: dict[str, str]) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.master, self.conf = master, conf
        self.url = f"sc://127.0.0.1:{self.port}"
        self.popen = None

    def start(self, timeout: float = 300) -> "LocalConnectServer":
        import socket
        import subprocess

        from filterspark.engine.session import LOCAL_DEFAULTS, connect_server_command

        conf = {**LOCAL_DEFAULTS, **self.conf}
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-connect-{self.port}.log", "wb")
        self.popen = subprocess.Popen(connect_server_command(self.port, "127.0.0.1", self.master, conf),
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"the Connect server exited ({self.popen.returncode}); see {log.name}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"no Connect server on port {self.port} after {timeout:.0f} s")

    def stop(self) -> None:
        import signal

        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=30)


#: The Connect server of this benchmark process, if it runs on one (``--connect``).
SERVER: LocalConnectServer | None = None


def spark_session(app: str, master: str = "local[2]", driver_memory: str = "2g", quick: bool = False,
                  connect: bool = False):
    """A session built by the project's one builder, with the benchmark's settings; with
    ``connect`` a Spark Connect session to a local server started with the same settings."""
    global SERVER
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    import atexit

    from filterspark.engine.session import build_session

    conf = {**BENCH_CONF, "spark.driver.memory": driver_memory}
    if quick:
        conf.update({"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "2"})
    if connect:
        SERVER = LocalConnectServer(master, conf).start()
        atexit.register(SERVER.stop)
        return build_session(app_name=app, remote=SERVER.url)
    # a measured run is a long session (the JVM's compiler); a --quick check one command's
    return build_session(app_name=app, master=master, conf=conf, short_lived=quick)


def warm(spark, warehouse: str, database: str, parquet: str | None) -> None:
    """One untimed pass over both copies: page cache and JIT are warm and the baselines'
    libraries imported before any contender is timed."""
    from pyspark.sql import functions as F

    from filterspark.delta.schemas import WEIGHT_COLUMNS
    from filterspark.delta.warehouse import table_path

    from filterspark.delta.capabilities import set_job_description

    set_job_description(spark, "benchmark: warm-up scan")
    spark.read.format("delta").load(table_path(warehouse, database, "filters")).agg(
        *[F.sum(c) for c in WEIGHT_COLUMNS]
    ).collect()
    import pyarrow.parquet  # noqa: F401 - the baselines' imports are not part of their time
    import scipy.stats  # noqa: F401
    import sklearn.decomposition  # noqa: F401

    if parquet:
        for f in Path(parquet).rglob("*.parquet"):
            with open(f, "rb") as handle:
                while handle.read(1 << 24):
                    pass


def load_average() -> float:
    return os.getloadavg()[0]


def machine_line() -> str:
    """One line describing where and under what load the numbers were taken."""
    mem = meminfo()
    return (
        f"machine: {os.cpu_count()} cores, {mem.get('MemTotal', 0) / 2**30:.1f} GiB RAM "
        f"({mem.get('MemAvailable', 0) / 2**30:.1f} GiB available), load average {load_average():.2f}"
    )


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            parts = value.split()
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    except OSError:
        pass
    return out


# --- process memory -----------------------------------------------------------------------


def _status(pid: int | str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def peak_rss(pid: int | str = "self") -> int | None:
    """Peak resident set size (bytes) of a process since start or the last reset."""
    return _status(pid, "VmHWM")


def reset_peak(pid: int | str = "self") -> bool:
    """Reset a process's ``VmHWM`` to its current RSS (own processes only)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """All descendants of ``pid`` (Linux ``/proc/<pid>/task/*/children``)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            stack.extend(kids)
    return found


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU seconds (user + system) of a process and of its exited, reaped children.

    Summed over every live process of a tree this counts each CPU second once (a live
    child is not in its parent's children-time yet).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / _TICK  # utime stime cutime cstime


@dataclass
class SparkProcesses:
    """The Spark JVM (driver + local executors) and its Python workers, read from /proc.

    Peak RSS: ``VmHWM`` of the JVM and of the workers alive when read. CPU: seconds of
    the whole tree, a load-insensitive companion to wall time on a shared machine.
    """

    jvm_pid: int | None
    configured: str

    @classmethod
    def of(cls, spark) -> "SparkProcesses":
        from filterspark.delta.capabilities import is_connect, session_conf

        if is_connect(spark):  # the local Connect server's JVM tree (it runs the work)
            return cls(SERVER.popen.pid if SERVER else None, session_conf(spark).get("spark.driver.memory", "1g"))
        proc = getattr(spark.sparkContext._gateway, "proc", None)
        conf = spark.sparkContext.getConf()
        return cls(proc.pid if proc is not None else None, conf.get("spark.driver.memory", "1g"))

    def tree(self) -> list[int]:
        return [self.jvm_pid, *children(self.jvm_pid)] if self.jvm_pid else []

    def reset(self) -> None:
        for pid in self.tree():
            reset_peak(pid)

    def peaks(self) -> tuple[int | None, int]:
        """(JVM peak RSS, sum of the peak RSS of the Python workers alive now)."""
        if not self.jvm_pid:
            return None, 0
        workers = sum(peak_rss(p) or 0 for p in children(self.jvm_pid))
        return peak_rss(self.jvm_pid), workers

    def cpu(self) -> float:
        """CPU seconds of the JVM tree plus this (driver) process so far."""
        return sum(cpu_seconds(p) for p in self.tree()) + cpu_seconds()


def own_cpu() -> float:
    """CPU seconds of this process (and its reaped children) so far."""
    return cpu_seconds()


# --- timing and reporting -----------------------------------------------------------------


@dataclass
class Result:
    """One contender's measurement (best wall time of its runs; CPU and peaks of that run)."""

    name: str
    seconds: float | None = None
    cpu: float | None = None
    jvm_peak: int | None = None
    workers_peak: int | None = None
    py_peak: int | None = None

    def memory(self) -> str:
        if self.seconds is None:
            return "-"
        if self.jvm_peak is None:
            return f"process {gib(self.py_peak)}"
        return f"JVM {gib(self.jvm_peak)}, workers {gib(self.workers_peak)}, driver py {gib(self.py_peak)}"


def measure(name: str, fn, *args, procs: "SparkProcesses | None" = None, repeat: int = 1):
    """Run ``fn(*args)`` ``repeat`` times; return (its last output, the best run's Result).

    With ``procs`` (a Spark contender) CPU and peaks cover the JVM tree and this driver
    process; without, this process only.
    """
    best, out = Result(name), None
    for _ in range(max(1, repeat)):
        reset_peak()
        if procs:
            procs.reset()
        cpu0 = procs.cpu() if procs else own_cpu()
        start = time.perf_counter()
        out = fn(*args)
        elapsed = time.perf_counter() - start
        if best.seconds is None or elapsed < best.seconds:
            best.seconds = elapsed
            best.cpu = (procs.cpu() if procs else own_cpu()) - cpu0
            best.py_peak = peak_rss()
            if procs:
                best.jvm_peak, best.workers_peak = procs.peaks()
    return out, best


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f} s"


def results_table(results: list[Result]) -> None:
    """The contenders' times, CPU seconds and peak memory, as a markdown table."""
    print_table(["contender", "wall", "CPU", "peak RSS"],
                [[r.name, seconds(r.seconds), seconds(r.cpu), r.memory()] for r in results])


def ratio_line(label: str, num: Result, den: Result, target: str | None = None, met: bool = False,
               quick: bool = False) -> None:
    """``label = num / den`` for wall and CPU time, with the target and whether it is met."""
    if num.seconds is None or den.seconds is None:
        print(f"{label}: -")
        return
    line = f"{label}: {num.seconds / den.seconds:.2f} (CPU {num.cpu / den.cpu:.2f})"
    if quick:
        line += "; quick run: not a speed measurement"
    elif target:
        line += f"; target {target}: {'met' if met else 'MISSED'}"
    print(line)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A GitHub-markdown table (pastes straight into benchmarks/README.md)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def check(ok: bool, what: str, failures: list[str]) -> None:
    """Print one agreement check; collect failures (the script exits 1 if any)."""
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def command_line() -> str:
    return " ".join(["python", *[a if " " not in a else repr(a) for a in sys.argv]])


def data_parser(doc: str):
    """The arguments every benchmark on make_filters.py data takes: ``--data``, ``--quick``,
    ``--master``, ``--driver-memory`` (add the script's own, then :func:`parse_data_args`)."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="a make_filters.py output directory")
    p.add_argument("--quick", action="store_true", help="checks only: 20k generated filters unless --data is given")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="2g")
    return p


def parse_data_args(p, argv: list[str] | None):
    args = p.parse_args(argv)
    if not args.quick and args.data is None:
        p.error("--data is required (except with --quick)")
    return args
