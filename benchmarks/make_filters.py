"""Synthetic ``filters`` Delta table (and the same rows as Parquet) for the benchmarks.

    python benchmarks/make_filters.py --n 20000000 --out /tmp/fs-bench/20m
    python benchmarks/make_filters.py --quick          # 20k filters, checks only

Layout of ``--out``: ``warehouse/filterdb.db/{filters,models,layers}`` (Delta, the
schemas of ``filterspark.delta.schemas``, ``filters`` partitioned by model as extraction
writes it), ``parquet/filters`` (the same filter rows, read back from Delta) and
``manifest.json``.

Structure (so PCA, histograms and shifts see something like trained filters): every
filter is a combination of the nine smooth 3x3 DCT patterns with a decaying spectrum,
whose mean depends on the model's task and visual category, whose spectrum flattens
with depth (deeper layers look more random) and depends on the family, plus a
per-layer offset, isotropic noise, a per-layer scale (~ He init), a few all-zero
filters and a few near-sparse layers. Models have lognormal sizes and 10–40 layers.

``--replicate-from DIR --copies K`` builds a K times larger warehouse from generated
data (new model ids, each copy's filters a different signed symmetry of the 3x3 kernel;
data files rewritten with pyarrow and made a table with ``CONVERT TO DELTA``): the 200M
benchmark set is 10 copies of the 20M one, in minutes instead of the generator's hour.

Generation is streaming: the driver plans chunks of at most ``CHUNK_ROWS`` rows of one
layer; each Spark task generates its chunks one at a time with numpy (seeded by
model, layer and chunk, so the rows do not depend on the partitioning) and Spark writes
them, so no process ever holds more than a chunk — 200M rows never sit anywhere.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as common  # noqa: E402

CHUNK_ROWS = 131_072
TASKS = ("classification", "segmentation", "detection", "denoising", "generative", "depth-estimation")
VISUAL = ("natural", "medical", "satellite", "faces", "artwork")
DATASETS = {
    "natural": ("imagenet1k", "cifar10", "coco"),
    "medical": ("chexpert", "isic"),
    "satellite": ("eurosat", "spacenet"),
    "faces": ("celeba", "ffhq"),
    "artwork": ("wikiart",),
}
FAMILIES = {"resnet": 18, "vgg": 13, "mobilenet": 27, "unet": 22, "densenet": 40, "efficientnet": 30}

# Mean coefficient (in the DCT basis) per task and spectrum tilt per visual category.
_TASK_MEAN = {
    "classification": [0.35, 0.00, 0.00, 0.00, -0.05, -0.05, 0, 0, 0],
    "segmentation": [0.25, 0.05, 0.05, 0.00, -0.05, -0.05, 0, 0, 0],
    "detection": [0.30, 0.00, 0.05, 0.02, 0.00, -0.08, 0, 0, 0],
    "denoising": [0.55, 0.00, 0.00, 0.00, -0.15, -0.15, 0, 0, 0.05],
    "generative": [0.10, 0.10, -0.05, 0.05, 0.05, 0.05, 0, 0, 0],
    "depth-estimation": [0.20, 0.00, 0.10, 0.00, 0.00, 0.00, 0, 0, 0],
}
_VISUAL_TILT = {"natural": 1.0, "medical": 1.35, "satellite": 0.85, "faces": 1.15, "artwork": 0.7}
_FAMILY_NOISE = {"resnet": 0.10, "vgg": 0.06, "mobilenet": 0.16, "unet": 0.09, "densenet": 0.12, "efficientnet": 0.18}
_SPECTRUM = np.array([1.0, 0.75, 0.75, 0.5, 0.45, 0.45, 0.3, 0.3, 0.2])


def dct_basis() -> np.ndarray:
    """The nine orthonormal 3x3 DCT-II patterns (rows, flattened row-major), low frequency first."""
    d = np.array([[1, 1, 1] / np.sqrt(3), [1, 0, -1] / np.sqrt(2), [1, -2, 1] / np.sqrt(6)])
    order = [(0, 0), (0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (1, 2), (2, 1), (2, 2)]
    return np.array([np.outer(d[a], d[b]).reshape(9) for a, b in order])


@dataclass
class ModelSpec:
    """One synthetic model: its catalog metadata and how many filters each layer has."""

    name: str
    model_id: int
    task: str
    visual_category: str
    training_dataset: str
    family: str
    layer_sizes: list[int]

    @property
    def n_filters(self) -> int:
        return sum(self.layer_sizes)


def default_models(n: int) -> int:
    """About one model per 500k filters, between 24 and the published 647."""
    return int(min(647, max(24, round(n / 500_000))))


def plan_models(n: int, n_models: int, seed: int = 0) -> list[ModelSpec]:
    """Split ``n`` filters into models (lognormal sizes) and layers (growing widths)."""
    from filterspark.sources.catalog import model_id_for

    rng = np.random.default_rng([seed, 1])
    n_models = max(1, min(n_models, n))
    weights = rng.lognormal(0.0, 0.8, n_models)
    sizes = _allocate(n, weights)
    specs = []
    for i, size in enumerate(sizes):
        task = TASKS[i % len(TASKS)]
        visual = VISUAL[(i // len(TASKS)) % len(VISUAL)] if i % 3 else "natural"
        family = list(FAMILIES)[int(rng.integers(len(FAMILIES)))]
        datasets = DATASETS[visual]
        n_layers = min(FAMILIES[family], max(1, size))
        layer_weights = np.arange(1, n_layers + 1, dtype=np.float64) ** 1.5  # deeper layers are wider
        name = f"synthetic-{family}-{i:04d}"
        specs.append(
            ModelSpec(name, model_id_for(name), task, visual, datasets[i % len(datasets)], family,
                      [int(s) for s in _allocate(size, layer_weights)])
        )
    return specs


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing exactly to ``total`` (largest remainder)."""
    share = weights / weights.sum() * total
    out = np.floor(share).astype(np.int64)
    out[np.argsort(-(share - out), kind="stable")[: total - int(out.sum())]] += 1
    return out


def plan_chunks(specs: list[ModelSpec], chunk_rows: int = CHUNK_ROWS) -> list[tuple[int, int, int, int]]:
    """(model index, layer index, first filter index, rows) in table order."""
    chunks = []
    for m, spec in enumerate(specs):
        for layer, size in enumerate(spec.layer_sizes):
            for start in range(0, size, chunk_rows):
                chunks.append((m, layer, start, min(chunk_rows, size - start)))
    return chunks


def generate_weights(spec: ModelSpec, layer: int, start: int, rows: int, seed: int) -> np.ndarray:
    """The float32 (rows, 9) weights of one chunk; depends only on its coordinates."""
    n_layers = len(spec.layer_sizes)
    depth = layer / (n_layers - 1) if n_layers > 1 else 0.0
    layer_rng = np.random.default_rng([seed, spec.model_id % 2**32, layer])
    rng = np.random.default_rng([seed, spec.model_id % 2**32, layer, start])
    basis = dct_basis()
    spectrum = _SPECTRUM ** (_VISUAL_TILT[spec.visual_category] * (1.0 - 0.7 * depth))
    mean = np.asarray(_TASK_MEAN[spec.task]) * (1.0 - 0.5 * depth) + layer_rng.normal(0.0, 0.04, 9)
    coeff = mean + rng.standard_normal((rows, 9)) * spectrum
    w = coeff @ basis + rng.standard_normal((rows, 9)) * _FAMILY_NOISE[spec.family]
    w *= layer_rng.lognormal(math.log(0.05 / (1.0 + 3.0 * depth)), 0.3)  # the layer's init scale
    if layer_rng.random() < 0.07:  # a near-sparse layer: most filters ~0
        w[rng.random(rows) < 0.6] *= 1e-4
    w[rng.random(rows) < 0.001] = 0.0  # a few dead filters
    return w.astype(np.float32)


def _chunk_batch(spec: ModelSpec, layer: int, start: int, rows: int, seed: int):
    """One Arrow batch of ``filters`` rows in :data:`filterspark.delta.schemas.FILTERS` order."""
    import pyarrow as pa

    from filterspark.delta.schemas import FILTERS, arrow_schema

    w = generate_weights(spec, layer, start, rows, seed)
    n_layers = len(spec.layer_sizes)
    text = lambda v: pa.repeat(pa.scalar(v, pa.string()), rows)  # noqa: E731
    columns = [
        pa.array(np.full(rows, spec.model_id, np.int64)),
        pa.array(np.full(rows, layer, np.int32)),
        pa.array(np.arange(start, start + rows, dtype=np.int32)),
        *[pa.array(w[:, j]) for j in range(9)],
        text(spec.task), text(spec.visual_category), text(spec.training_dataset), text(spec.family),
        pa.array(np.full(rows, layer, np.int32)),
        pa.array(np.full(rows, layer / (n_layers - 1) if n_layers > 1 else 0.0)),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=arrow_schema(FILTERS))


def _generator(specs: list[ModelSpec], seed: int):
    def task(batches):
        for batch in batches:
            cols = [batch.column(c).to_pylist() for c in ("m", "layer", "start", "rows")]
            for m, layer, start, rows in zip(*cols):
                yield _chunk_batch(specs[m], layer, start, rows, seed)

    return task


def _model_rows(specs: list[ModelSpec], seed: int) -> list[dict]:
    import datetime as dt

    now = dt.datetime.now(dt.timezone.utc)
    return [
        {
            "model_id": s.model_id, "name": s.name, "path": f"synthetic://{s.name}", "format": "synthetic",
            "task": s.task, "visual_category": s.visual_category, "training_dataset": s.training_dataset,
            "family": s.family, "architecture": f"{s.family}-like", "source": "benchmarks/make_filters.py",
            "metadata": {}, "conv_layers": len(s.layer_sizes), "conv_levels": len(s.layer_sizes),
            "kernel_shape_counts": {"3x3": s.n_filters}, "filters_3x3": s.n_filters,
            "total_filters": s.n_filters, "share_3x3": 1.0, "status": "ok", "device": "cpu",
            "fingerprint": f"synthetic-seed{seed}", "extracted_at": now,
        }
        for s in specs
    ]


def _layer_rows(specs: list[ModelSpec]) -> list[dict]:
    rows = []
    for s in specs:
        last = max(len(s.layer_sizes) - 1, 1)
        for i, size in enumerate(s.layer_sizes):
            rows.append({
                "model_id": s.model_id, "layer_index": i, "layer_name": f"features.{i}.conv", "op": "Conv",
                "conv_depth": i, "conv_depth_norm": i / last if len(s.layer_sizes) > 1 else 0.0,
                "out_channels": size, "in_channels": 1, "kernel_h": 3, "kernel_w": 3, "n_filters": size,
                "dtype": "float32",
            })
    return rows


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def generate(spark, out: Path, n: int, n_models: int | None = None, seed: int = 0,
             rows_per_task: int = 1_000_000, parquet: bool = True) -> dict:
    """Write the synthetic warehouse and Parquet copy under ``out``; return the manifest."""
    from pyspark import cloudpickle

    from filterspark.delta.schemas import FILTERS, LAYERS, MODELS
    from filterspark.delta.warehouse import DEFAULT_DATABASE
    from filterspark.delta.registry import register_tables
    from filterspark.delta.tables import ensure_table, rows_frame

    if __name__ != "__main__":  # imported by another script: tasks need no benchmarks/ on their path
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = time.perf_counter()
    specs = plan_models(n, n_models or default_models(n), seed)
    chunks = plan_chunks(specs)
    warehouse = out / "warehouse"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wh = str(warehouse)
    paths = {t: ensure_table(spark, wh, DEFAULT_DATABASE, t).location for t in ("filters", "layers", "models")}

    slices = max(1, min(len(chunks), math.ceil(n / rows_per_task)))
    jobs = spark.createDataFrame(spark.sparkContext.parallelize(chunks, slices), "m int, layer int, start int, rows int")
    spark.sparkContext.setJobDescription(f"make_filters: generate {n:,} filters")
    jobs.mapInArrow(_generator(specs, seed), FILTERS).write.format("delta").mode("append").save(paths["filters"])
    rows_frame(spark, _layer_rows(specs), LAYERS).write.format("delta").mode("append").save(paths["layers"])
    rows_frame(spark, _model_rows(specs, seed), MODELS).write.format("delta").mode("append").save(paths["models"])
    delta_seconds = time.perf_counter() - started
    if parquet:
        spark.sparkContext.setJobDescription("make_filters: Parquet copy")
        spark.read.format("delta").load(paths["filters"]).write.mode("overwrite").parquet(str(out / "parquet" / "filters"))
    register_tables(spark, wh, DEFAULT_DATABASE)
    manifest = {
        "n_filters": n, "n_models": len(specs), "seed": seed, "chunks": len(chunks), "tasks": slices,
        "warehouse": wh, "database": DEFAULT_DATABASE,
        "parquet": str(out / "parquet" / "filters") if parquet else None,
        "delta_bytes": _du(Path(paths["filters"])),
        "parquet_bytes": _du(out / "parquet" / "filters") if parquet else None,
        "seconds": time.perf_counter() - started, "delta_seconds": delta_seconds,
        "models": [asdict(s) | {"layer_sizes": None, "n_filters": s.n_filters} for s in specs],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def dihedral_permutations() -> list[list[int]]:
    """The 8 symmetries of a 3x3 kernel (rotations, with and without transposition) as
    index permutations of ``w0..w8`` (row-major): ``new[i] = old[perm[i]]``."""
    idx = np.arange(9).reshape(3, 3)
    return [np.rot90(a, k).reshape(-1).tolist() for a in (idx, idx.T) for k in range(4)]


def replica_id(model_id: int, copy: int) -> int:
    """Model id of copy ``copy`` (copy 0 keeps the source's ids)."""
    import hashlib

    if copy == 0:
        return int(model_id)
    digest = hashlib.blake2b(f"{model_id}:{copy}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def _replicate_file(job: tuple[str, str, int]) -> int:
    """Write one source data file's rows as copy ``k``: the weight columns permuted by the
    k-th kernel symmetry (a column rename, no copy) and negated for k >= 8."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    source, target, k = job
    table = pq.read_table(source)
    perm = dihedral_permutations()[k % 8]
    weights = [f"w{i}" for i in range(9)]
    columns = []
    for name in table.column_names:
        column = table.column(f"w{perm[weights.index(name)]}") if name in weights else table.column(name)
        if name in weights and k >= 8:
            column = pc.negate(column)
        columns.append(column)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=table.schema), target, compression="snappy")
    return table.num_rows


def replicate(spark, source: dict, out: Path, copies: int, workers: int = 2) -> dict:
    """A ``copies`` times larger warehouse from a generated one, in minutes: copy ``k`` of
    every data file gets new model ids and every filter transformed by the ``k``-th of the
    16 signed symmetries of the 3x3 kernel (rotations, transposition, negation), so no two
    copies hold the same filter. The files are rewritten with pyarrow (a process per core)
    and made a Delta table with ``CONVERT TO DELTA``; ``models`` and ``layers`` are copied
    in Spark. The structure (groups, depths, spectrum) is the source's."""
    import re
    from concurrent.futures import ProcessPoolExecutor
    from urllib.parse import unquote, urlparse

    from pyspark.sql import functions as F

    from filterspark.delta.schemas import FILTERS_PARTITION_COLUMNS, LAYERS, MODELS
    from filterspark.delta.warehouse import DEFAULT_DATABASE, table_path
    from filterspark.delta.registry import register_tables
    from filterspark.delta.tables import ensure_table

    if not 1 <= copies <= 16:
        raise SystemExit("--copies must be 1..16 (the signed symmetries of a 3x3 kernel)")
    started = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    wh = str(out / "warehouse")
    src = {t: table_path(source["warehouse"], source["database"], t) for t in ("filters", "layers", "models")}
    filters_dir = Path(urlparse(table_path(wh, DEFAULT_DATABASE, "filters")).path)
    jobs = []
    for uri in spark.read.format("delta").load(src["filters"]).inputFiles():
        path = unquote(urlparse(uri).path)
        model_id = int(re.search(r"model_id=(-?\d+)", path).group(1))
        for k in range(copies):
            target = filters_dir / f"model_id={replica_id(model_id, k)}" / f"copy{k}-{Path(path).name}"
            jobs.append((path, str(target), k))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = sum(pool.map(_replicate_file, jobs, chunksize=4))
    (partition,) = FILTERS_PARTITION_COLUMNS
    # NO STATISTICS: collecting per-file column stats would read every row again in the JVM
    spark.sql(f"CONVERT TO DELTA parquet.`{filters_dir}` NO STATISTICS PARTITIONED BY ({partition} BIGINT)")

    ids = spark.createDataFrame(
        [(int(r.model_id), k, replica_id(r.model_id, k))
         for r in spark.read.format("delta").load(src["models"]).select("model_id").collect() for k in range(copies)],
        "model_id long, copy int, new_id long",
    )
    for table, schema in (("layers", LAYERS), ("models", MODELS)):
        path = ensure_table(spark, wh, DEFAULT_DATABASE, table).location
        df = spark.read.format("delta").load(src[table]).join(ids, "model_id").withColumn("model_id", F.col("new_id"))
        if table == "models":
            df = df.withColumn("name", F.concat(F.col("name"), F.lit("-copy"), F.col("copy").cast("string")))
        df.select(*[f.name for f in schema.fields]).write.format("delta").mode("append").save(path)
    register_tables(spark, wh, DEFAULT_DATABASE)
    models = spark.read.format("delta").load(table_path(wh, DEFAULT_DATABASE, "models")).select(
        "model_id", "name", "filters_3x3").collect()
    manifest = {
        "n_filters": rows, "n_models": len(models), "seed": source["seed"],
        "replicated_from": source["warehouse"], "copies": copies, "warehouse": wh, "database": DEFAULT_DATABASE,
        "parquet": None, "parquet_bytes": None, "delta_bytes": _du(filters_dir),
        "seconds": time.perf_counter() - started, "delta_seconds": time.perf_counter() - started,
        "models": [{"model_id": r.model_id, "name": r.name, "n_filters": r.filters_3x3} for r in models],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def load_manifest(out: Path) -> dict:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"no generated data at {out}: run benchmarks/make_filters.py --out {out} first")
    return json.loads(path.read_text())


def verify(spark, manifest: dict) -> list[str]:
    """Row counts of Delta and Parquet against the plan, and the PCA spectrum of a sample."""
    import pyarrow.dataset as ds

    from filterspark.kernels.pca import pca_direct, scale_filters
    from filterspark.delta.schemas import WEIGHT_COLUMNS
    from filterspark.delta.warehouse import table_path

    failures: list[str] = []
    n = manifest["n_filters"]
    delta = spark.read.format("delta").load(table_path(manifest["warehouse"], manifest["database"], "filters"))
    per_model = {r[0]: r[1] for r in delta.groupBy("model_id").count().collect()}
    planned = {m["model_id"]: m["n_filters"] for m in manifest["models"]}
    common.check(sum(per_model.values()) == n, f"Delta filters has {sum(per_model.values()):,} rows (planned {n:,})", failures)
    common.check(per_model == {k: v for k, v in planned.items() if v}, "rows per model as planned", failures)
    if manifest.get("parquet"):
        data = ds.dataset(manifest["parquet"], format="parquet")
        common.check(data.count_rows() == n, f"Parquet copy has {data.count_rows():,} rows", failures)
        sample = data.head(min(n, 200_000), columns=list(WEIGHT_COLUMNS))
        x = np.column_stack([sample.column(c).to_numpy() for c in WEIGHT_COLUMNS])
        evr = pca_direct(scale_filters(x)).explained_variance_ratio
        print("  explained-variance ratios of a sample:", " ".join(f"{v:.3f}" for v in evr))
        common.check(bool(np.all(np.diff(evr) <= 0) and evr[0] > 2 * evr[-1]), "a decaying PCA spectrum", failures)
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="filters to generate (default 1M)")
    p.add_argument("--models", type=int, default=None, help="models (default: ~1 per 500k filters, 24..647)")
    p.add_argument("--out", type=Path, help="output directory (default: a temporary one with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows-per-task", type=int, default=1_000_000)
    p.add_argument("--no-parquet", action="store_true", help="skip the Parquet copy (in-memory baselines need it)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--quick", action="store_true", help="20k filters in a temporary directory, checks only")
    p.add_argument("--replicate-from", type=Path, help="instead of generating: --copies copies of this generated data")
    p.add_argument("--copies", type=int, default=10, help="with --replicate-from (1..16, default 10)")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 20_000
    if args.out is None and not args.quick:
        p.error("--out is required (except with --quick)")
    tmp = tempfile.TemporaryDirectory(prefix="fs-make-filters-") if args.out is None else None
    out = Path(tmp.name) / "data" if tmp else args.out
    print(common.machine_line())
    spark = common.spark_session("bench-make-filters", args.master, quick=args.quick)
    if args.replicate_from:
        manifest = replicate(spark, load_manifest(args.replicate_from), out, args.copies)
    else:
        manifest = generate(spark, out, args.n, args.models, args.seed, args.rows_per_task, not args.no_parquet)
    print(f"wrote {manifest['n_filters']:,} filters of {manifest['n_models']} models in {manifest['seconds']:.1f} s "
          f"(Delta {manifest['delta_bytes'] / 2**20:.0f} MiB in {manifest['delta_seconds']:.1f} s"
          + (f", Parquet {manifest['parquet_bytes'] / 2**20:.0f} MiB" if manifest["parquet"] else "") + f") to {out}")
    failures = verify(spark, manifest)
    spark.stop()
    if tmp:
        tmp.cleanup()
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
