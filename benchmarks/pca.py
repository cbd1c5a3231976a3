"""PCA of the scaled filters: our distributed PCA vs MLlib PCA vs the in-memory method.

    python benchmarks/pca.py --data /tmp/fs-bench/20m        # data from make_filters.py
    python benchmarks/pca.py --quick                          # 20k generated filters, checks only

One process, one SparkSession (local[2], 2 GB driver), the same ``filters`` table:

* **ours** — the analysis job's own PCA: ``analyze_job.plan_scan`` (the ``ok`` models'
  data files, read by Spark tasks with pyarrow) → per task the float64 moments (9 sums +
  45 products) of the scaled filters, merged (``analyze_job.scan_moments``) →
  ``pca.pca_from_moments`` on the driver;
* **MLlib** — the same input rows, scaled in Spark SQL, ``VectorAssembler`` +
  ``pyspark.ml.feature.PCA(k=9).fit``;
* **in-memory** — the published notebook's method: the Parquet copy read with pyarrow
  into one (n, 9) float64 array, scaled with numpy, ``sklearn.decomposition.PCA().fit``.

All three must agree on the explained-variance ratios to 1e-6 (and on the components,
up to sign, where eigenvalues are separated); the script exits 1 otherwise. Each
contender runs ``--repeat`` times; the best time counts (the machine is shared).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as common  # noqa: E402
import make_filters  # noqa: E402

EVR_TOLERANCE = 1e-6
#: Peak bytes per filter of the in-memory method: the float32 columns as read, the float64
#: (n, 9) array and scikit-learn's centred copy (measured 0.39 GiB above the
#: interpreter at 2M filters).
IN_MEMORY_BYTES_PER_FILTER = 220


# --- contenders ----------------------------------------------------------------------------


def ours(spark, warehouse: str, database: str):
    """The analysis job's distributed PCA (the job's own functions, not a copy)."""
    from filterspark.pipelines.analyze import AnalyzeOptions, analysis_input, plan_scan, scan_moments
    from filterspark.kernels.pca import pca_from_moments

    options = AnalyzeOptions(warehouse=warehouse, database=database)
    joined, models = analysis_input(spark, options)
    basis = pca_from_moments(scan_moments(plan_scan(spark, options, joined, models)))
    return basis.explained_variance_ratio, basis.components, basis.n_filters


def mllib(spark, warehouse: str, database: str):
    """Baseline: Spark MLlib's PCA over the same rows, scaled the published way in SQL."""
    from pyspark.ml.feature import PCA, VectorAssembler
    from pyspark.sql import functions as F

    from filterspark.delta.schemas import WEIGHT_COLUMNS
    from filterspark.delta.warehouse import table_path

    filters = spark.read.format("delta").load(table_path(warehouse, database, "filters"))
    ok = spark.read.format("delta").load(table_path(warehouse, database, "models")).where("status = 'ok'")
    rows = filters.join(F.broadcast(ok.select("model_id")), "model_id")
    w = [F.col(c).cast("double") for c in WEIGHT_COLUMNS]
    peak = F.greatest(*[F.abs(x) for x in w])
    scaled = rows.select(*[F.when(peak > 0, x / peak).otherwise(x).alias(f"s{i}") for i, x in enumerate(w)])
    vectors = VectorAssembler(inputCols=[f"s{i}" for i in range(9)], outputCol="x").transform(scaled)
    spark.sparkContext.setJobDescription("benchmark: MLlib PCA")
    model = PCA(k=9, inputCol="x", outputCol="pc").fit(vectors)
    return model.explainedVariance.toArray(), model.pc.toArray().T, None


def in_memory(parquet: str):
    """Baseline: every filter in RAM (pyarrow → numpy), scaled, scikit-learn PCA."""
    import pyarrow.parquet as pq
    from sklearn.decomposition import PCA

    from filterspark.delta.schemas import WEIGHT_COLUMNS

    table = pq.read_table(parquet, columns=list(WEIGHT_COLUMNS))
    x = np.empty((table.num_rows, 9))
    for j, c in enumerate(WEIGHT_COLUMNS):
        x[:, j] = table.column(c).to_numpy()
    del table
    peak = np.abs(x).max(axis=1, keepdims=True)
    np.divide(x, peak, out=x, where=peak > 0)
    pca = PCA(n_components=9).fit(x)
    return pca.explained_variance_ratio_, pca.components_, x.shape[0]


# --- agreement ------------------------------------------------------------------------------


def compare(name: str, ref, other, failures: list[str]) -> None:
    evr_a, comp_a, _ = ref
    evr_b, comp_b, _ = other
    diff = float(np.max(np.abs(np.asarray(evr_a) - np.asarray(evr_b))))
    common.check(diff <= EVR_TOLERANCE, f"{name}: explained-variance ratios agree (max |diff| {diff:.1e} <= {EVR_TOLERANCE:g})", failures)
    gaps = np.abs(np.diff(evr_a))
    separated = [k for k in range(9) if min(gaps[k - 1] if k else np.inf, gaps[k] if k < 8 else np.inf) > 1e-3]
    dots = [abs(float(np.dot(comp_a[k], comp_b[k]))) for k in separated]
    worst = 1.0 - min(dots) if dots else 0.0
    common.check(worst <= 1e-6, f"{name}: components agree up to sign ({len(separated)} separated, worst 1-|cos| {worst:.1e})", failures)


def main(argv: list[str] | None = None) -> int:
    p = common.data_parser(__doc__)
    p.add_argument("--repeat", type=int, default=1, help="runs per contender; the best time counts")
    p.add_argument("--skip-mllib", action="store_true")
    p.add_argument("--skip-in-memory", action="store_true")
    args = common.parse_data_args(p, argv)

    print(common.machine_line())
    spark = common.spark_session("bench-pca", args.master, args.driver_memory, quick=args.quick)
    tmp = tempfile.TemporaryDirectory(prefix="fs-bench-pca-") if args.data is None else None
    manifest = (make_filters.generate(spark, Path(tmp.name) / "data", 20_000) if tmp
                else make_filters.load_manifest(args.data))
    wh, db, parquet = manifest["warehouse"], manifest["database"], manifest["parquet"]
    n = manifest["n_filters"]
    procs = common.SparkProcesses.of(spark)
    common.warm(spark, wh, db, parquet)

    outputs: dict[str, tuple] = {}  # (evr, components, n)
    measured: list[common.Result] = []
    contenders = [("ours", "ours: per-task numpy moments (9 sums + 45 products)", ours, (spark, wh, db), procs)]
    if not args.skip_mllib:
        contenders.append(("mllib", "MLlib: VectorAssembler + PCA(k=9).fit", mllib, (spark, wh, db), procs))
    need, available = n * IN_MEMORY_BYTES_PER_FILTER, common.meminfo().get("MemAvailable", 0)
    if need > 0.9 * available:
        print(f"in-memory: not started, it needs ~{common.gib(need)} and {common.gib(available)} are available")
    elif not args.skip_in_memory and parquet:
        contenders.append(("in-memory", "in-memory: pyarrow + numpy + sklearn PCA", in_memory, (parquet,), None))
    for key, label, fn, fn_args, on_spark in contenders:
        outputs[key], result = common.measure(label, fn, *fn_args, procs=on_spark, repeat=args.repeat)
        measured.append(result)

    ref = measured[0]
    print(f"\nPCA of {n:,} scaled filters, {args.master}, driver memory {procs.configured}, best of {args.repeat}")
    common.results_table(measured)
    for r in measured[1:]:
        mllib_row = r.name.startswith("MLlib")
        common.ratio_line(f"speed-up vs {r.name.split(':')[0]} (their time / ours)", r, ref,
                          ">= 5 at 20M" if mllib_row else None, r.seconds >= 5 * ref.seconds, args.quick)
    print(f"ours: {n / ref.seconds / max(1, spark.sparkContext.defaultParallelism):,.0f} filters/s per core (wall), {n / ref.cpu:,.0f} per CPU-second")
    print(f"command: {common.command_line()}")

    print("\nagreement:")
    failures: list[str] = []
    common.check(outputs["ours"][2] == n, f"ours saw {outputs['ours'][2]:,} filters", failures)
    for name in ("mllib", "in-memory"):
        if name in outputs:
            compare(f"ours vs {name}", outputs["ours"], outputs[name], failures)
    print("explained-variance ratios (ours):", " ".join(f"{v:.6f}" for v in outputs["ours"][0]))
    spark.stop()
    if tmp:
        tmp.cleanup()
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
