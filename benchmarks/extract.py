"""Extraction of a generated zoo: ``extract_job.run_extraction`` vs the load-and-write floor.

    python benchmarks/extract.py --zoo /tmp/fs-bench/zoo            # 50 checkpoints, ~500 MB
    python benchmarks/extract.py --quick                            # 3 small checkpoints, checks only

The zoo: random-init (PyTorch default init) VGG-11-like and ResNet-18-like CNNs with
BatchNorm, widths scaled so the ``--models`` state_dicts total about ``--total-mb``
(``torch.save``, float32; 7x7 stems and 1x1 shortcuts included, so not every conv is
3x3), plus a catalog CSV with task/visual_category/family metadata. It is generated
once into ``--zoo`` and reused.

* **ours** — ``filterspark.pipelines.extract.run_extraction`` into a fresh warehouse, local[2],
  2 GB driver: checksums, loads, layer metrics, the ``filters``/``layers``/``models``
  Delta commits;
* **floor** — one process, no Spark: ``torch.load(weights_only=True)`` each checkpoint
  and write the same ``filters`` rows (same columns, layer and filter indices, depths)
  with ``pyarrow.parquet``, one file per model.

The checkpoint files are read once before timing (both sides find them in the page
cache). The rows must agree (per model and layer: count, sum of weights); the script
exits 1 otherwise.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as common  # noqa: E402

TASKS = ("classification", "segmentation", "detection", "denoising")
VISUAL = ("natural", "medical", "satellite")
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512)
RESNET18 = (64, 128, 256, 512)


# --- the zoo ------------------------------------------------------------------------------------


def vgg_like(width: float, in_ch: int = 3):
    """VGG-11-like features (conv3x3 + BN + ReLU) with a linear head."""
    from torch import nn

    layers, c = [], in_ch
    for v in VGG11:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = max(8, round(v * width))
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(), nn.Linear(c, 10))


def resnet_like(width: float, in_ch: int = 3):
    """ResNet-18-like: 7x7 stem, four stages of two basic blocks, 1x1 shortcuts."""
    from torch import nn

    def block(cin, cout, stride):
        body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride != 1 or cin != cout else nn.Identity()
        return nn.ModuleDict({"body": body, "shortcut": short})

    widths = [max(8, round(v * width)) for v in RESNET18]
    modules = [nn.Conv2d(in_ch, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0])]
    c = widths[0]
    for i, w in enumerate(widths):
        for j in range(2):
            modules.append(block(c, w, 2 if (j == 0 and i > 0) else 1))
            c = w
    return nn.Sequential(*modules, nn.Flatten(), nn.Linear(c, 10))


def _n_params(model) -> int:
    return sum(p.numel() for p in model.state_dict().values() if p.is_floating_point())


def build_zoo(out: Path, n_models: int, total_mb: float, seed: int = 0) -> Path:
    """Write ``n_models`` checkpoints of about ``total_mb`` in all and ``catalog.csv``; return it."""
    import torch

    manifest = {"models": n_models, "total_mb": total_mb, "seed": seed, "v": 1}
    catalog = out / "catalog.csv"
    if (out / "zoo.json").is_file() and json.loads((out / "zoo.json").read_text()) == manifest and catalog.is_file():
        return catalog
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    per_model = total_mb * 2**20 / 4 / n_models  # float32 parameters per model
    base = {"vgg": _n_params(vgg_like(1.0)), "resnet": _n_params(resnet_like(1.0))}
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_models):
        family = "vgg" if i % 2 == 0 else "resnet"
        width = math.sqrt(per_model / base[family]) * float(rng.uniform(0.85, 1.15))
        torch.manual_seed(seed * 100_003 + i)
        model = (vgg_like if family == "vgg" else resnet_like)(width)
        name = f"bench-{family}-{i:03d}"
        torch.save(model.state_dict(), out / f"{name}.pt")
        rows.append({
            "name": name, "path": f"{name}.pt", "task": TASKS[i % len(TASKS)],
            "visual_category": VISUAL[i % len(VISUAL)], "training_dataset": "random-init",
            "family": family, "architecture": f"{family}-like-w{width:.2f}",
        })
    with open(catalog, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "zoo.json").write_text(json.dumps(manifest))
    return catalog


# --- contenders ----------------------------------------------------------------------------


def ours(spark, entries, warehouse: str, kernels: str = "all"):
    """``run_extraction`` into a fresh warehouse (``kernels``: its ``--kernels`` selection)."""
    from filterspark.pipelines.extract import ExtractOptions, run_extraction

    return run_extraction(spark, entries, ExtractOptions(warehouse=warehouse, kernels=kernels))


def floor(entries, out: Path) -> int:
    """Baseline: torch.load each checkpoint, write its ``filters`` rows with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from filterspark.delta.schemas import FILTER_METADATA, FILTERS, arrow_schema

    schema = arrow_schema(FILTERS)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for e in entries:
        sd = torch.load(e.path, map_location="cpu", weights_only=True)
        convs = [v for k, v in sd.items() if k.endswith("weight") and v.dim() == 4 and v.is_floating_point()]
        last = max(len(convs) - 1, 1)
        meta = [e.known.get(c) for c in FILTER_METADATA]
        with pq.ParquetWriter(out / f"{e.model_id}.parquet", schema) as writer:
            for i, v in enumerate(convs):
                if tuple(v.shape[2:]) != (3, 3):
                    continue
                w = v.reshape(-1, 9).float().numpy()
                n = w.shape[0]
                writer.write_batch(pa.RecordBatch.from_arrays([
                    pa.array(np.full(n, e.model_id, np.int64)), pa.array(np.full(n, i, np.int32)),
                    pa.array(np.arange(n, dtype=np.int32)), *[pa.array(w[:, j]) for j in range(9)],
                    *[pa.repeat(pa.scalar(m, pa.string()), n) for m in meta],
                    pa.array(np.full(n, i, np.int32)), pa.array(np.full(n, i / last if len(convs) > 1 else 0.0)),
                ], schema=schema))
                written += n
    return written


# --- agreement ------------------------------------------------------------------------------


def _summaries_delta(spark, warehouse: str) -> dict:
    from pyspark.sql import functions as F

    from filterspark.delta.schemas import WEIGHT_COLUMNS
    from filterspark.delta.warehouse import DEFAULT_DATABASE, table_path

    df = spark.read.format("delta").load(table_path(warehouse, DEFAULT_DATABASE, "filters"))
    total = sum(F.col(c).cast("double") for c in WEIGHT_COLUMNS)
    rows = df.groupBy("model_id", "layer_index").agg(
        F.count(F.lit(1)).alias("n"), F.sum(total).alias("s"), F.sum(F.col("filter_index") * F.col("w4")).alias("t"),
        F.max("conv_depth_norm").alias("d"),
    ).collect()
    return {(r.model_id, r.layer_index): (r.n, r.s, r.t, r.d) for r in rows}


def _summaries_floor(out: Path) -> dict:
    import pyarrow.dataset as ds

    from filterspark.delta.schemas import WEIGHT_COLUMNS

    t = ds.dataset(str(out), format="parquet").to_table()
    w = sum(t.column(c).to_numpy().astype(np.float64) for c in WEIGHT_COLUMNS)
    keys = np.stack([t.column("model_id").to_numpy(), t.column("layer_index").to_numpy()], axis=1)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    n = np.bincount(inv)
    s = np.bincount(inv, weights=w)
    tt = np.bincount(inv, weights=t.column("filter_index").to_numpy() * t.column("w4").to_numpy().astype(np.float64))
    d = np.zeros(len(uniq))
    np.maximum.at(d, inv, t.column("conv_depth_norm").to_numpy())
    return {(int(a), int(b)): (int(n[i]), s[i], tt[i], d[i]) for i, (a, b) in enumerate(uniq)}


def compare(spark, warehouse: str, floor_out: Path, failures: list[str]) -> None:
    mine, base = _summaries_delta(spark, warehouse), _summaries_floor(floor_out)
    common.check(set(mine) == set(base), f"same {len(base)} (model, layer) keys", failures)
    common.check(all(mine[k][0] == base[k][0] for k in base if k in mine),
                 f"same rows per layer ({sum(v[0] for v in base.values()):,} in all)", failures)
    worst = max((max(abs(mine[k][j] - base[k][j]) / max(1.0, abs(base[k][j])) for j in (1, 2, 3)) for k in base if k in mine), default=0)
    common.check(worst <= 1e-9, f"same weights, filter indices and depths per layer (worst rel. diff {worst:.1e})", failures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", type=Path, help="zoo directory (generated there once, then reused)")
    p.add_argument("--models", type=int, default=50)
    p.add_argument("--total-mb", type=float, default=500.0)
    p.add_argument("--work", type=Path, help="where both outputs go (default: a temporary directory)")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender; the best time counts")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--driver-memory", default="2g")
    p.add_argument("--connect", action="store_true",
                   help="run ours on a Spark Connect session (a local server started with the same settings)")
    p.add_argument("--quick", action="store_true", help="3 checkpoints of ~1 MB in a temporary directory; checks only")
    p.add_argument("--kernels", default="all", help="ours' k x k selection (all | none | 5,7); the 7x7 stems go to kernels")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.total_mb = 3, 3.0
    if args.zoo is None and not args.quick:
        p.error("--zoo is required (except with --quick)")
    from filterspark.sources.catalog import read_catalog

    tmp = tempfile.TemporaryDirectory(prefix="fs-bench-extract-")
    work = args.work or Path(tmp.name)
    zoo = args.zoo or work / "zoo"
    print(common.machine_line())
    started = time.perf_counter()
    catalog = build_zoo(zoo, args.models, args.total_mb)
    entries = read_catalog(catalog)
    size = sum(Path(e.path).stat().st_size for e in entries)
    print(f"zoo: {len(entries)} checkpoints, {size / 2**20:.0f} MiB at {zoo} (ready in {time.perf_counter() - started:.1f} s)")
    for e in entries:  # page cache: both contenders read the files warm
        Path(e.path).read_bytes()

    spark = common.spark_session("bench-extract", args.master, args.driver_memory, quick=args.quick, connect=args.connect)
    procs = common.SparkProcesses.of(spark)
    warehouse, floor_out = work / "warehouse", work / "floor"

    def fresh_ours():
        shutil.rmtree(warehouse, ignore_errors=True)
        return ours(spark, entries, str(warehouse), args.kernels)

    def fresh_floor():
        shutil.rmtree(floor_out, ignore_errors=True)
        return floor(entries, floor_out)

    report, mine = common.measure("ours: run_extraction (Delta filters/layers/models)", fresh_ours,
                                  procs=procs, repeat=args.repeat)
    written, base = common.measure("floor: torch.load + pyarrow Parquet (1 process)", fresh_floor, repeat=args.repeat)

    print(f"\nextraction of {len(entries)} checkpoints ({size / 2**20:.0f} MiB, {written:,} 3x3 filters), "
          f"{args.master}, driver memory {procs.configured}, best of {args.repeat}, --kernels {args.kernels} "
          f"({report.kernels_written:,} k x k kernels)")
    common.results_table([base, mine])
    print("ours, last run: " + "; ".join(report.lines()[1:]))
    common.ratio_line("ratio ours / floor", mine, base, "<= 1.5", mine.seconds <= 1.5 * base.seconds, args.quick)
    print(f"ours: {written / mine.seconds / 2**20 * 36:,.1f} MiB of filter weights/s, floor {written / base.seconds / 2**20 * 36:,.1f}")
    print(f"command: {common.command_line()}")

    print("\nagreement:")
    failures: list[str] = []
    common.check(report.ok == len(entries) and report.failed == 0, f"ours: {report.ok} ok, {report.failed} failed", failures)
    common.check(report.filters_written == written, f"both wrote {written:,} filters (ours {report.filters_written:,})", failures)
    compare(spark, str(warehouse), floor_out, failures)
    spark.stop()
    tmp.cleanup()
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
