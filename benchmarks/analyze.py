"""The whole analysis: ``analyze_job.run_analysis`` vs the in-memory numpy method.

    python benchmarks/analyze.py --data /tmp/fs-bench/20m     # data from make_filters.py
    python benchmarks/analyze.py --quick                       # 20k generated filters, checks only

One process, the same data, three dimensions (task, visual_category, depth_decile):

* **ours** — ``filterspark.pipelines.analyze.run_analysis`` (PCA from per-task numpy moments, the
  shared coefficient range, grouped 70-bin histograms, shift matrices, model shifts,
  stats; every table written to Delta), local[2] with a 2 GB driver;
* **in-memory** — the published notebook's method: the Parquet copy read with pyarrow,
  scaled with numpy, scikit-learn PCA, coefficients, ``np.histogram(density=True)`` per
  group and component over the shared range, empty bins → float32 eps, renormalised,
  and ``D = Σ evr_i (KL(P_i‖Q_i) + KL(Q_i‖P_i))`` with ``scipy.stats.entropy``.

Printed: both times, the ratio, both peak memories (ours: the Spark JVM — driver and
local executors — and its Python workers; in-memory: the process), and the agreement
of the shift matrices (rel. 1e-6) and histogram counts. When the in-memory method
would need more memory than the machine has available, it is not started (its
estimated need is printed instead).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as common  # noqa: E402
import make_filters  # noqa: E402

DIMENSIONS = ("task", "visual_category", "depth_decile")
BINS = 70
SHIFT_RTOL = 1e-6
#: Bytes per filter the in-memory method holds at its peak (measured: 0.79 GiB above the
#: interpreter's own 0.31 GiB at 2M filters): float32 columns as read, the float64 (n, 9)
#: filters, scikit-learn's centred copy, the coefficients, one group's copy, and the
#: labels as Python strings.
IN_MEMORY_BYTES_PER_FILTER = 450


# --- ours --------------------------------------------------------------------------------------


def ours(spark, warehouse: str, database: str, where: str | None = None):
    """``run_analysis`` itself (every table written to Delta)."""
    from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis

    options = AnalyzeOptions(warehouse=warehouse, database=database, by=DIMENSIONS, bins=BINS, where=where)
    return run_analysis(spark, options)


def written_results(spark, warehouse: str, database: str, run_id: str) -> tuple[dict, dict]:
    """The run's shift matrices and histogram counts, read back from the Delta tables."""
    from pyspark.sql import functions as F

    from filterspark.delta.warehouse import table_path

    run = F.col("run_id") == run_id
    shifts = spark.read.format("delta").load(table_path(warehouse, database, "shifts")).where(run)
    hist = spark.read.format("delta").load(table_path(warehouse, database, "coefficient_histograms")).where(run)
    return {
        (r.dimension, r.group_a, r.group_b): r.shift for r in shifts.select("dimension", "group_a", "group_b", "shift").collect()
    }, {
        (r.dimension, r.group_value, r.component): r.counts
        for r in hist.groupBy("dimension", "group_value", "component")
        .agg(F.sort_array(F.collect_list(F.struct("bin", "count"))).alias("counts")).collect()
    }


# --- projection ----------------------------------------------------------------------------

#: The published CNN Filter DB, and the cluster the README projects it onto.
FULL_FILTERS = 1_400_000_000
CLUSTER_EXECUTORS, CORES_PER_EXECUTOR = 16, 4


def subset_where(manifest: dict, share: float = 0.1) -> tuple[str, int]:
    """A ``--where`` over whole models holding about ``share`` of the filters (partition pruning)."""
    chosen, total = [], 0
    for m in sorted(manifest["models"], key=lambda m: m["n_filters"]):
        if total >= share * manifest["n_filters"]:
            break
        chosen.append(str(m["model_id"]))
        total += m["n_filters"]
    return f"model_id IN ({','.join(chosen)})", total


def projection(n_small: int, t_small: float, n: int, t: float, cores: int) -> dict:
    """Fit ``t = fixed + n / (cores * per_core)`` through two runs; project the full DB."""
    per_filter = (t - t_small) / max(n - n_small, 1)  # seconds per filter on ``cores`` cores
    fixed = max(t - per_filter * n, 0.0)
    per_core = 1.0 / (per_filter * cores) if per_filter > 0 else float("inf")
    cluster = CLUSTER_EXECUTORS * CORES_PER_EXECUTOR
    return {"fixed_s": fixed, "per_core": per_core, "cluster_cores": cluster,
            "projected_s": fixed + FULL_FILTERS / (per_core * cluster)}


# --- the in-memory baseline ----------------------------------------------------------------


def _depth_labels(depth_norm: np.ndarray) -> np.ndarray:
    from filterspark.kernels.coefficients import DEPTH_DECILES, DEPTH_EDGES

    return np.asarray(DEPTH_DECILES, dtype=object)[np.searchsorted(DEPTH_EDGES, depth_norm, side="left")]


def in_memory(parquet: str):
    """Baseline: the notebook method on all filters in RAM."""
    import pyarrow.parquet as pq
    from scipy.stats import entropy
    from sklearn.decomposition import PCA

    from filterspark.delta.schemas import WEIGHT_COLUMNS

    table = pq.read_table(parquet, columns=[*WEIGHT_COLUMNS, "task", "visual_category", "conv_depth_norm"])
    x = np.empty((table.num_rows, 9))
    for j, c in enumerate(WEIGHT_COLUMNS):
        x[:, j] = table.column(c).to_numpy()
    labels = {
        "task": table.column("task").to_numpy(zero_copy_only=False),
        "visual_category": table.column("visual_category").to_numpy(zero_copy_only=False),
        "depth_decile": _depth_labels(table.column("conv_depth_norm").to_numpy()),
    }
    del table
    peak = np.abs(x).max(axis=1, keepdims=True)
    np.divide(x, peak, out=x, where=peak > 0)
    pca = PCA(n_components=9).fit(x)
    comps = pca.components_.copy()
    # docs/definitions.md's deterministic sign (largest |entry| positive), so both sides bin the same values
    idx = np.argmax(np.abs(comps), axis=1)
    comps *= np.where(comps[np.arange(9), idx] < 0, -1.0, 1.0)[:, None]
    evr = pca.explained_variance_ratio_
    x -= pca.mean_
    coeffs = x @ comps.T
    del x
    lo, hi = float(coeffs.min()), float(coeffs.max())
    eps = np.finfo(np.float32).eps
    shifts, counts = {}, {}
    for dim, values in labels.items():
        hists = {}
        for group in sorted(set(values.tolist())):
            part = coeffs[values == group]
            h = np.empty((9, BINS))
            for k in range(9):
                c, edges = np.histogram(part[:, k], bins=BINS, range=(lo, hi))
                counts[(dim, group, k)] = c
                h[k] = c / np.diff(edges) / c.sum()  # what density=True computes
            h[h == 0] = eps
            hists[group] = h / h.sum(axis=1, keepdims=True)
        for a, b in combinations(sorted(hists), 2):
            d = sum(evr[k] * (entropy(hists[a][k], hists[b][k]) + entropy(hists[b][k], hists[a][k])) for k in range(9))
            shifts[(dim, a, b)] = shifts[(dim, b, a)] = float(d)
    return {"evr": evr, "range": (lo, hi), "n": coeffs.shape[0]}, shifts, counts


# --- agreement -----------------------------------------------------------------------------


def compare(report, our_shifts: dict, our_counts: dict, base: dict, shifts: dict, counts: dict, failures: list[str]) -> None:
    evr_diff = float(np.max(np.abs(report.basis.explained_variance_ratio - base["evr"])))
    common.check(evr_diff <= 1e-6, f"explained-variance ratios agree (max |diff| {evr_diff:.1e})", failures)
    rdiff = max(abs(a - b) for a, b in zip(report.range, base["range"]))
    common.check(rdiff <= 1e-9, f"shared histogram range agrees ([{report.range[0]:.6f}, {report.range[1]:.6f}], |diff| {rdiff:.1e})", failures)
    common.check(set(our_shifts) == set(shifts), f"same {len(shifts)} shift-matrix entries", failures)
    worst = max((abs(our_shifts[k] - v) / max(abs(v), 1e-12) for k, v in shifts.items() if k in our_shifts), default=0.0)
    common.check(worst <= SHIFT_RTOL, f"shifts agree (worst relative diff {worst:.1e} <= {SHIFT_RTOL:g})", failures)
    moved = 0
    for key, ref in counts.items():
        mine = np.zeros(BINS, np.int64)
        for b, c in our_counts.get(key, []):
            mine[b] = c
        moved += int(np.abs(mine - ref).sum())
    total = base["n"] * 9 * len(DIMENSIONS)
    common.check(moved <= max(2, total * 1e-7), f"histogram counts agree ({moved} of {total:,} binned values differ)", failures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="a make_filters.py output directory")
    p.add_argument("--quick", action="store_true", help="checks only: 20k generated filters unless --data is given")
    p.add_argument("--skip-in-memory", action="store_true")
    p.add_argument("--no-projection", action="store_true",
                   help="skip the second, ~10%% run of ours that separates fixed cost from per-filter cost")
    p.add_argument("--force-in-memory", action="store_true", help="start the in-memory method even if it will not fit")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="2g")
    p.add_argument("--connect", action="store_true",
                   help="run ours on a Spark Connect session (a local server started with the same settings)")
    args = p.parse_args(argv)
    if not args.quick and args.data is None:
        p.error("--data is required (except with --quick)")

    print(common.machine_line())
    spark = common.spark_session("bench-analyze", args.master, args.driver_memory, quick=args.quick, connect=args.connect)
    tmp = tempfile.TemporaryDirectory(prefix="fs-bench-analyze-") if args.data is None else None
    manifest = (make_filters.generate(spark, Path(tmp.name) / "data", 20_000) if tmp
                else make_filters.load_manifest(args.data))
    wh, db, parquet, n = manifest["warehouse"], manifest["database"], manifest["parquet"], manifest["n_filters"]
    procs = common.SparkProcesses.of(spark)
    common.warm(spark, wh, db, parquet)

    report, mine = common.measure("ours: run_analysis (all tables to Delta)", ours, spark, wh, db, procs=procs)
    measured = [mine]
    need = n * IN_MEMORY_BYTES_PER_FILTER
    available = common.meminfo().get("MemAvailable", 0)
    base = None
    label = "in-memory: pyarrow + numpy + sklearn + np.histogram"
    if need > 0.9 * available and not args.force_in_memory:
        print(f"{label}: not started, it needs ~{common.gib(need)} and {common.gib(available)} are available")
    elif args.skip_in_memory or not parquet:
        print(f"{label}: skipped" + ("" if parquet else " (no Parquet copy)"))
    else:
        (base, shifts, counts), theirs = common.measure(label, in_memory, parquet)
        measured.append(theirs)

    print(f"\nwhole analysis of {n:,} filters ({', '.join(DIMENSIONS)}), {args.master}, driver memory {procs.configured}")
    common.results_table(measured)
    if len(measured) > 1:
        common.ratio_line("ratio ours / in-memory", mine, measured[1], "<= 1.0 at 20M",
                          mine.seconds <= measured[1].seconds, args.quick)
    phases = getattr(report, "phases", None) or {}
    if phases:
        print("ours by phase (wall): " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    from filterspark.delta.capabilities import default_parallelism

    cores = max(1, default_parallelism(spark))
    print(f"ours: {n / mine.seconds / cores:,.0f} filters/s per core (wall), {n / mine.cpu:,.0f} filters per CPU-second")
    if not args.quick and not args.no_projection:
        where, n_small = subset_where(manifest)
        _, small = common.measure("ours on ~10% of the models", ours, spark, wh, db, where, procs=procs)
        proj = projection(n_small, small.seconds, n, mine.seconds, cores)
        print(f"ours on {n_small:,} filters (whole models, --where): {small.seconds:.1f} s -> fixed cost "
              f"{proj['fixed_s']:.1f} s, {proj['per_core']:,.0f} filters/s per core")
        print(f"projection: {FULL_FILTERS / 1e9:.1f}B filters on {CLUSTER_EXECUTORS} executors x {CORES_PER_EXECUTOR} "
              f"cores: ~{proj['projected_s'] / 60:.1f} min (linear in filters per core; storage and network assumed "
              "not to be the bottleneck)")
    print(f"command: {common.command_line()}")

    print("\nagreement:")
    failures: list[str] = []
    common.check(report.n_filters == n, f"ours analysed {report.n_filters:,} filters", failures)
    if base is not None:
        our_shifts, our_counts = written_results(spark, wh, db, report.run_id)
        compare(report, our_shifts, our_counts, base, shifts, counts, failures)
    spark.stop()
    if tmp:
        tmp.cleanup()
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
