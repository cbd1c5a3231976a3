"""Benchmark: import a generated CNN Filter DB file much larger than an executor's memory.

    .venv/bin/python benchmarks/import_h5.py --quick          # 4M filters, a minute or two
    .venv/bin/python benchmarks/import_h5.py --filters 50000000

Generates ``dataset.h5`` in the published format (h5py ``filters`` N x 9 float32, pandas
``HDFStore`` ``meta`` with inclusive ``"start:end"`` filter_ids; layer sizes drawn like real
CNNs'), streaming it block by block, then runs the real job as a subprocess,
``spark-submit --master local-cluster[E,1,MB] jobs/import_filterdb.py``, so executors are
separate JVMs with ``MB`` of memory each and their own Python workers. While it runs, the
process tree is sampled from ``/proc``: peak RSS of the driver, of each executor JVM and of
each Python worker. The import streams when those peaks stay flat while the file is
several times larger than an executor's memory. Prints filters/s of the filters stage (as
the job measures it) and end to end (spark-submit wall time, JVM start included).

``spark.executor.pyspark.memory`` (an address-space limit on Python workers) is not used:
importing torch alone maps more than 3 GB of address space, so no useful limit exists;
the Python workers' measured RSS is the evidence instead.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BYTES_PER_FILTER = 36
CHANNELS = (16, 32, 64, 64, 128, 128, 256, 256, 512)
TASKS = ("Classification", "Semantic Segmentation", "Object Detection", "Super Resolution", "GAN")
CATEGORIES = ("natural", "medical", "satellite", "faces")


# --------------------------------------------------------------------------- file generation


def layer_plan(n_filters: int, seed: int = 0) -> list[list[int]]:
    """Layer sizes (filters) per model summing to ``n_filters``: out*in channel products."""
    rng = np.random.default_rng(seed)
    models, left = [], n_filters
    while left > 0:
        layers = []
        for _ in range(int(rng.integers(8, 40))):
            n = int(rng.choice(CHANNELS)) * int(rng.choice(CHANNELS))
            n = min(n, left)
            layers.append(n)
            left -= n
            if left == 0:
                break
        models.append(layers)
    return models


def generate(path: Path, n_filters: int, seed: int = 0, block_rows: int = 1 << 20) -> tuple[int, int]:
    """Write the file without ever holding more than one block of filters; returns (models, layers)."""
    import h5py
    import pandas as pd

    plan = layer_plan(n_filters, seed)
    rng = np.random.default_rng(seed + 1)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("filters", shape=(n_filters, 9), dtype="float32")
        for start in range(0, n_filters, block_rows):
            stop = min(start + block_rows, n_filters)
            block = rng.standard_normal((stop - start, 9), dtype=np.float32)
            block *= np.float32(0.05)
            ds[start:stop] = block
    records, pos = [], 0
    for k, layers in enumerate(plan):
        for depth, n in enumerate(layers):
            records.append(
                {
                    "model_id": k,
                    "conv_depth": depth,
                    "conv_depth_norm": depth / max(len(layers) - 1, 1),
                    "filter_ids": f"{pos}:{pos + n - 1}",
                    "model": f"bench_model_{k}",
                    "Name": f"net{k % 7}",
                    "Task": TASKS[k % len(TASKS)],
                    "Visual Category": CATEGORIES[k % len(CATEGORIES)],
                    "Training-Dataset": f"data{k % 5}",
                    "total_filters": sum(layers),
                    "(3, 3) filters": sum(layers),
                }
            )
            pos += n
    meta = pd.DataFrame(records).set_index(["model_id", "conv_depth", "conv_depth_norm"])
    meta.to_hdf(path, key="meta", mode="a")
    return len(plan), len(records)


# --------------------------------------------------------------------------- process monitoring


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        pid = int(stat.split("/")[2])
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(pid)
    return tree


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    if "CoarseGrainedExecutorBackend" in cmd:
        return "executor JVM"
    if "org.apache.spark.deploy" in cmd and ("Worker" in cmd or "Master" in cmd):
        return "cluster daemon JVM"
    if "java" in cmd.split(" ")[0]:
        return "driver JVM"
    if "pyspark.daemon" in cmd or "pyspark/daemon" in cmd or "pyspark.worker" in cmd:
        return "python worker"
    if "import_filterdb" in cmd:
        return "driver python"
    return "other"


class Monitor(threading.Thread):
    """Samples the RSS of every process under ``root`` until stopped; keeps per-kind peaks."""

    def __init__(self, root: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_each: dict[str, float] = {}  # largest single process of a kind
        self.peak_sum: dict[str, float] = {}  # largest sum over the processes of a kind
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds at the last sample)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            tree, todo, sums = _children(), [self.root], {}
            while todo:
                pid = todo.pop()
                todo += tree.get(pid, [])
                kind = _kind(pid)  # not cached: spark-submit's bash script execs into the driver JVM
                rss = _rss_mb(pid)
                self.cpu[pid] = (kind, max(self.cpu.get(pid, ("", 0.0))[1], _cpu_seconds(pid)))
                self.peak_each[kind] = max(self.peak_each.get(kind, 0.0), rss)
                sums[kind] = sums.get(kind, 0.0) + rss
            for kind, total in sums.items():
                self.peak_sum[kind] = max(self.peak_sum.get(kind, 0.0), total)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def cpu_by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, seconds in self.cpu.values():
            out[kind] = out.get(kind, 0.0) + seconds
        return out


# --------------------------------------------------------------------------- the run


def delta_rows(table_dir: Path) -> int:
    """Rows in a Delta table from its log (sum of numRecords of live files)."""
    live: dict[str, int] = {}
    for log in sorted((table_dir / "_delta_log").glob("*.json")):
        for line in log.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                live[action["add"]["path"]] = json.loads(action["add"].get("stats") or "{}").get("numRecords", 0)
            elif "remove" in action:
                live.pop(action["remove"]["path"], None)
    return sum(live.values())


def run_import(h5: Path, warehouse: Path, args) -> tuple[dict, str, float]:
    from filterspark.engine.delta_jars import delta_submit_args

    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    master = args.master or f"local-cluster[{args.executors},1,{args.executor_memory_mb}]"
    cmd = [
        str(bin_dir / "spark-submit"),
        "--master", master,
        "--driver-memory", args.driver_memory,
        "--conf", f"spark.executor.memory={args.executor_memory_mb}m",  # --executor-memory is ignored for local-cluster
        *delta_submit_args(),
        "--conf", "spark.ui.enabled=false",
        "--conf", "spark.ui.showConsoleProgress=false",
        "--conf", f"spark.executorEnv.PYSPARK_PYTHON={sys.executable}",
        *[a for kv in args.spark_conf for a in ("--conf", kv)],
        str(REPO / "jobs" / "import_filterdb.py"),
        "--h5", str(h5),
        "--warehouse", str(warehouse),
        "--rows-per-task", str(args.rows_per_task),
        "--write", args.write,
    ]
    print(f"$ {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    monitor = Monitor(proc.pid)
    monitor.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - started
    monitor.stop()
    if proc.returncode != 0:
        print(output[-6000:])
        raise SystemExit(f"import failed with exit status {proc.returncode}")
    return {"each": monitor.peak_each, "sum": monitor.peak_sum, "cpu": monitor.cpu_by_kind()}, output, wall


def measure(n: int, base: Path, args) -> dict:
    """Generate an ``n``-filter file under ``base``, import it, print the figures; returns
    ``{"n", "stage_s", "wall_s", "ok"}``."""
    need = n * BYTES_PER_FILTER * 2.5  # file + warehouse (parquet float columns barely compress)
    free = shutil.disk_usage(base).free
    if free < need:
        raise SystemExit(f"need ~{need / 2**30:.1f} GiB free in {base}, have {free / 2**30:.1f} GiB")
    h5, warehouse = base / f"dataset-{n}.h5", base / f"warehouse-{n}"
    t0 = time.perf_counter()
    models, layers = generate(h5, n)
    size = h5.stat().st_size
    print(f"generated {h5}: {n:,} filters, {models} models, {layers} layers, "
          f"{size / 2**20:,.0f} MiB in {time.perf_counter() - t0:.1f} s", flush=True)

    peaks, output, wall = run_import(h5, warehouse, args)
    for line in output.splitlines():
        if re.match(r"^(file|models|layers|wall time|filters written by|  warning):", line):
            print(f"  job | {line}")
    match = re.search(r"filters stage ([\d.]+) s, ([\d,]+) filters/s", output)
    stage_s = float(match.group(1)) if match else float("nan")
    rows = delta_rows(warehouse / "filterdb.db" / "filters")
    print(f"rows in filterdb.filters (Delta log): {rows:,} {'OK' if rows == n else 'MISMATCH'}")
    memory = args.executor_memory_mb * 2**20
    if not args.master:
        print(f"file size: {size / 2**20:,.0f} MiB = {size / memory:.1f} x executor memory "
              f"({args.executors} executor(s) x {args.executor_memory_mb} MiB)")
    print(f"throughput: {n / stage_s:,.0f} filters/s in the filters stage ({stage_s:.1f} s); "
          f"{n / wall:,.0f} filters/s end to end ({wall:.1f} s incl. JVM start and Delta commits)")
    cpu = peaks["cpu"]
    work = cpu.get("executor JVM", 0.0) + cpu.get("python worker", 0.0)
    if work:
        print(f"executor CPU: {work:,.0f} core-seconds (JVM {cpu.get('executor JVM', 0):,.0f}, Python workers "
              f"{cpu.get('python worker', 0):,.0f}) = {n / work:,.0f} filters per core-second "
              f"(load-independent; machine load average at the end {os.getloadavg()[0]:.1f})")
    print("peak RSS (MiB)           largest process   all of this kind   CPU s")
    for kind in ("driver JVM", "driver python", "executor JVM", "python worker", "cluster daemon JVM"):
        if kind in peaks["each"]:
            print(f"  {kind:<22} {peaks['each'][kind]:>15,.0f}   {peaks['sum'][kind]:>16,.0f}   {cpu.get(kind, 0):>5,.0f}")
    if not args.keep:
        h5.unlink()
        shutil.rmtree(warehouse, ignore_errors=True)
    return {"n": n, "stage_s": stage_s, "wall_s": wall, "ok": rows == n}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4M filters (smoke run)")
    parser.add_argument("--filters", type=int, default=50_000_000, help="filters in the generated file (default 50M = 1.8 GB)")
    parser.add_argument("--rate-from", metavar="N1,N2",
                        help="import two generated files of N1 and N2 filters and print the rate between them "
                        "((N2 - N1) / time difference: the fixed costs cancel), e.g. 2000000,12000000")
    parser.add_argument("--master", help="Spark master (default: local-cluster[EXECUTORS,1,EXECUTOR_MEMORY_MB])")
    parser.add_argument("--executors", type=int, default=2, help="executor JVMs (1 core each)")
    parser.add_argument("--executor-memory-mb", type=int, default=512, help="memory per executor (default 512)")
    parser.add_argument("--driver-memory", default="1g")
    parser.add_argument("--rows-per-task", type=int, default=4_000_000)
    parser.add_argument("--write", choices=("auto", "files", "spark"), default="auto",
                        help="the job's --write: files (tasks write Parquet) or spark (Spark's Delta writer)")
    parser.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE", help="extra Spark setting (repeatable)")
    parser.add_argument("--dir", help="where the file and warehouse go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the file and the warehouse")
    args = parser.parse_args(argv)
    sizes = [int(v) for v in args.rate_from.split(",")] if args.rate_from else [4_000_000 if args.quick else args.filters]
    if args.rate_from and (len(sizes) != 2 or not 0 < sizes[0] < sizes[1]):
        parser.error("--rate-from takes two sizes N1 < N2, e.g. 2000000,12000000")

    base = Path(args.dir or tempfile.mkdtemp(prefix="filterspark-import-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        runs = [measure(n, base, args) for n in sizes]
        if len(runs) == 2:
            small, large = runs
            extra = large["n"] - small["n"]
            print(f"rate between {small['n']:,} and {large['n']:,} filters ({args.master or 'local-cluster'}, --write {args.write}): "
                  f"{extra / (large['stage_s'] - small['stage_s']):,.0f} filters/s in the filters stage, "
                  f"{extra / (large['wall_s'] - small['wall_s']):,.0f} filters/s as whole processes "
                  f"(fixed costs cancel; target >= 1,000,000)")
        return 0 if all(r["ok"] for r in runs) else 1
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
            print(f"removed {base}")


if __name__ == "__main__":
    sys.exit(main())
