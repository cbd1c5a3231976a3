"""Whole processes, first run, as a user meets them: each contender is a fresh process.

    python benchmarks/whole_process.py --zoo /tmp/fs-bench/zoo      # bench zoo (extract.py's), 3 rounds
    python benchmarks/whole_process.py --quick                      # tiny inputs, one round, checks only

Pairs, each run in turn (A B A B ...) so that drift of a shared machine hits both sides,
the median of ``--rounds`` quoted:

* **extraction** — ``spark-submit jobs/extract.py --catalog <zoo> --warehouse <fresh>``
  vs the floor: one ``python`` process that ``torch.load``s each checkpoint and writes
  the same ``filters`` rows with pyarrow (``extract.py``'s floor, started by this script's
  ``floor`` subcommand);
* **analysis** — ``spark-submit jobs/analyze.py`` on the demo warehouse (built once by
  ``spark-submit jobs/extract.py``; with ``--quick`` the tiny zoo's) vs a bare ``spark-submit`` that counts its ``filters``
  table with default Spark and Delta settings;
* **sql** — one ``filterspark sql`` query on the demo warehouse vs the same bare count.

Figures per process tree, as ``/usr/bin/time`` reports them: wall seconds until the
command exits, CPU seconds (user + sys of every process of its tree: the command runs
under a child subreaper, so a JVM that its Python never waited for counts too), peak RSS
of the largest single process. The bare count runs with Delta from the same installation
(``filterspark setup``'s local JARs) and the JVM's default options (not the driver
options setup writes); one more run resolves Delta by ``--packages`` (from
the Ivy cache) as without setup, to show what Ivy costs each start. Exit status 1 when a command fails or
the rows disagree.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as common  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

#: The bare count runs on the JVM's defaults, not the short-lived-driver options that
#: `filterspark setup` writes into the installation's spark-defaults.conf.
DEFAULT_JVM = ["--conf", "spark.driver.defaultJavaOptions="]

BARE_COUNT = '''
import sys
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("bare-count").getOrCreate()
print("rows:", spark.read.format("delta").load(sys.argv[1]).count())
'''


@dataclass
class Runs:
    """The measured runs of one contender."""

    label: str
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)

    def row(self) -> list[str]:
        spread = f"{min(self.walls):.1f}-{max(self.walls):.1f}" if len(self.walls) > 1 else ""
        return [self.label, f"{self.wall:.1f}", spread, f"{self.cpu:.1f}", f"{max(self.peaks) / 2**20:.0f}"]

    def phases(self) -> str:
        """The job's own breakdown (its ``wall time:`` line) in the median run."""
        median_run = sorted(range(len(self.walls)), key=self.walls.__getitem__)[len(self.walls) // 2]
        lines = [line for line in self.outputs[median_run].splitlines() if line.startswith("wall time:")]
        return lines[-1] if lines else "(no breakdown printed)"


def time_main(argv: list[str]) -> int:
    """``time OUT -- COMMAND...``: run COMMAND as a child subreaper, so that every process of
    its tree (a JVM its Python launched and never waited for included) is reaped here and
    counted; write wall, CPU and peak RSS to OUT as JSON; exit with COMMAND's status."""
    import ctypes
    import json

    out, command = argv[0], argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    started = time.perf_counter()
    proc = subprocess.Popen(command)
    code = proc.wait()
    wall = time.perf_counter() - started
    while True:  # the orphans of the tree, reparented to this process
        try:
            os.wait()
        except ChildProcessError:
            break
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(out).write_text(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                                     "peak": usage.ru_maxrss * 1024, "code": code}))
    return code


def run_process(command: list[str], env: dict[str, str], cwd: Path, into: Runs, failures: list[str]) -> str:
    """Run ``command`` to its end as a fresh process tree; add its figures to ``into``."""
    import json

    with tempfile.TemporaryDirectory() as scratch:
        figures = Path(scratch) / "figures.json"
        log = Path(scratch) / "output.txt"
        with open(log, "wb") as out:
            subprocess.run([sys.executable, __file__, "time", str(figures), "--", *command],
                           env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        text = log.read_text(errors="replace")
        measured = json.loads(figures.read_text()) if figures.exists() else {"wall": 0, "cpu": 0, "peak": 0, "code": -1}
    into.walls.append(measured["wall"])
    into.cpus.append(measured["cpu"])
    into.peaks.append(measured["peak"])
    into.outputs.append(text)
    if measured["code"] != 0:
        failures.append(f"{into.label}: exit status {measured['code']}")
        print(f"--- {into.label} failed ({measured['code']}); its last output:\n{text[-3000:]}")
    return text


def environment() -> dict[str, str]:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.pop("SPARK_REMOTE", None)
    return env


def rows_in(text: str, prefix: str) -> int | None:
    """The number after ``prefix`` in a command's output (``filters written: 26,168``)."""
    for line in text.splitlines():
        if line.startswith(prefix):
            digits = "".join(ch for ch in line[len(prefix):].split()[0] if ch.isdigit())
            return int(digits) if digits else None
    return None


def floor_main(argv: list[str]) -> int:
    """The floor as a process of its own: ``floor --catalog CSV --out DIR``."""
    import extract as extraction_bench

    from filterspark.sources.catalog import read_catalog

    p = argparse.ArgumentParser(prog="whole_process.py floor")
    p.add_argument("--catalog", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    written = extraction_bench.floor(read_catalog(args.catalog), args.out)
    print(f"filters written: {written:,}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["floor"]:
        return floor_main(argv[1:])
    if argv[:1] == ["time"]:
        return time_main(argv[1:])
    import extract as extraction_bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, help="bench zoo directory (benchmarks/extract.py's; generated there once)")
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--total-mb", type=float, default=500.0)
    p.add_argument("--rounds", type=int, default=3, help="runs of each contender; the median counts")
    p.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="3 small checkpoints, one round: checks only")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.total_mb, args.rounds = 3, 3.0, 1
    if args.zoo is None and not args.quick:
        p.error("--zoo is required (except with --quick)")
    tmp = tempfile.TemporaryDirectory(prefix="fs-bench-whole-")
    work = args.work or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    failures: list[str] = []
    print(common.machine_line())

    catalog = extraction_bench.build_zoo(args.zoo or work / "zoo", args.models, args.total_mb)
    for line in catalog.read_text().splitlines()[1:]:  # page cache: both sides read the files warm
        Path(catalog.parent, line.split(",")[1]).read_bytes()
    demo = work / "demo"
    demo.mkdir(exist_ok=True)
    setup = Runs("demo warehouse (spark-submit jobs/extract.py, built-in demo zoo)")
    if args.quick:  # the tiny zoo's warehouse stands in for the demo's
        run_process([str(BIN / "spark-submit"), str(REPO / "jobs" / "extract.py"), "--catalog", str(catalog),
                     "--warehouse", str(demo / "warehouse")], env, demo, setup, failures)
    else:
        run_process([str(BIN / "spark-submit"), str(REPO / "jobs" / "extract.py")], env, demo, setup, failures)
    demo_filters = demo / "warehouse" / "filterdb.db" / "filters"
    count_script = work / "bare_count.py"
    count_script.write_text(BARE_COUNT)

    spark_submit = str(BIN / "spark-submit")
    extraction = Runs("spark-submit jobs/extract.py (fresh warehouse)")
    floor = Runs("floor: torch.load + pyarrow (1 process)")
    analysis = Runs("spark-submit jobs/analyze.py (demo warehouse)")
    sql = Runs("filterspark sql (one query, demo warehouse)")
    count = Runs("bare spark-submit: count filters (default settings)")
    for _ in range(args.rounds):
        shutil.rmtree(work / "warehouse", ignore_errors=True)
        ours_text = run_process([spark_submit, str(REPO / "jobs" / "extract.py"), "--catalog", str(catalog),
                                 "--warehouse", str(work / "warehouse")], env, work, extraction, failures)
        shutil.rmtree(work / "floor", ignore_errors=True)
        floor_text = run_process([sys.executable, __file__, "floor", "--catalog", str(catalog), "--out", str(work / "floor")],
                                 env, work, floor, failures)
        ours_rows, floor_rows = rows_in(ours_text, "filters written:"), rows_in(floor_text, "filters written:")
        common.check(ours_rows is not None and ours_rows == floor_rows,
                     f"extraction and floor wrote the same number of filters ({ours_rows} / {floor_rows})", failures)
        run_process([spark_submit, str(REPO / "jobs" / "analyze.py")], env, demo, analysis, failures)
        counted = run_process([spark_submit, *DEFAULT_JVM, str(count_script), str(demo_filters)], env, demo, count, failures)
        answer = run_process([str(BIN / "filterspark"), "sql", "SELECT count(*) AS n FROM filterdb.filters"], env, demo, sql, failures)
        n = rows_in(counted, "rows:")
        common.check(n is not None and str(n) in answer, f"the sql query and the bare count agree ({n} rows)", failures)
    ivy = Runs("the bare count, Delta by --packages (no setup)")
    if not args.quick:  # resolution from the Ivy cache that `filterspark setup` filled
        from filterspark.engine.delta_jars import delta_maven_coordinate

        run_process([spark_submit, *DEFAULT_JVM, "--packages", delta_maven_coordinate(), str(count_script), str(demo_filters)],
                    env, demo, ivy, failures)
    print(f"\nwhole processes, median of {args.rounds} (pairs run in turn), first run each; demo setup took {setup.wall:.1f} s")
    runs = [r for r in (extraction, floor, analysis, sql, count, ivy) if r.walls]
    common.print_table(["process", "wall s", "range", "CPU s", "peak RSS MiB"], [r.row() for r in runs])
    print(f"inside extract.py (median run): {extraction.phases()}")
    print(f"inside analyze.py (median run): {analysis.phases()}")
    print()
    for label, mine, base, target in (("extraction / floor", extraction, floor, 1.0),
                                      ("analyze.py / bare count", analysis, count, 0.8),
                                      ("filterspark sql / bare count", sql, count, 0.8)):
        ratio = mine.wall / base.wall
        verdict = "" if args.quick else (" met" if ratio <= target else " missed")
        print(f"{label}: {ratio:.2f} (CPU {mine.cpu / base.cpu:.2f}; target <= {target}{verdict})")
    if ivy.walls:
        report_lines = sum(1 for line in ivy.outputs[-1].splitlines() if "::" in line or "found " in line)
        print(f"Ivy on each start: {ivy.wall - count.wall:+.1f} s wall, {report_lines} report lines "
              f"(without it: {sum(1 for line in count.outputs[-1].splitlines() if 'found ' in line)})")
    print(f"command: {common.command_line()}")
    tmp.cleanup()
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
