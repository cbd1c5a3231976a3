"""Any grouping from ``layer_histograms`` and ``analyze --incremental``, against full runs.

    python benchmarks/regroup.py --data /tmp/fs-bench/20m     # data from make_filters.py
    python benchmarks/regroup.py --quick                       # 20k generated filters, checks only

One process, on a copy of the data's warehouse (the original stays as it is):

1. a **full run** (``run_analysis``; dimensions task, visual_category, depth_decile) — the
   baseline of both comparisons below;
2. **``shifts --by``** (``regroup.shifts_by``) for one of the run's dimensions (checked to
   equal the run's ``shifts`` rows), an expression the run did not analyse and one with a
   ``--where``: what a user who wants a new grouping pays instead of a full run;
3. the **size of ``layer_histograms``** (rows and bytes of the run's files), per layer,
   and projected for the published 1.4 billion filters;
4. **one model added** (a checkpoint of four 64-channel 3x3 conv layers, extracted into
   the warehouse) and an **incremental run** (``--incremental``: only that model's filters
   are read) vs the full run, with its share of coefficients outside the frozen range.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as common  # noqa: E402
import make_filters  # noqa: E402

DIMENSIONS = ("task", "visual_category", "depth_decile")
NEW_EXPRESSION = "concat(task, ' / ', family)"
WHERE = "visual_category = 'natural'"
#: The published CNN Filter DB: filters, models; layers estimated at 50 3x3 layers a model.
FULL_FILTERS, FULL_MODELS, LAYERS_PER_MODEL = 1_400_000_000, 647, 50


def added_checkpoint(folder: Path) -> Path:
    """A small trained-looking checkpoint (state_dict of four 64-channel 3x3 convs) and its catalog."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Conv2d(3 if i == 0 else 64, 64, 3) for i in range(4)])
    path = folder / "added.pt"
    torch.save(net.state_dict(), path)
    catalog = folder / "catalog.csv"
    catalog.write_text("name,path,format,task,visual_category,family\n"
                       f"bench-added-model,{path},pytorch,classification,natural,resnet\n")
    return catalog


def table_bytes(warehouse: str, database: str, table: str) -> int:
    root = Path(warehouse) / f"{database}.db" / table
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


def main(argv: list[str] | None = None) -> int:
    args = common.parse_data_args(common.data_parser(__doc__), argv)

    from pyspark.sql import functions as F

    from filterspark.delta.registry import register_tables
    from filterspark.delta.warehouse import table_path
    from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis
    from filterspark.pipelines.analyze.regroup import ShiftsOptions, shifts_by
    from filterspark.pipelines.extract import ExtractOptions, run_extraction
    from filterspark.sources.catalog import read_catalog

    print(common.machine_line())
    tmp = tempfile.TemporaryDirectory(prefix="fs-bench-regroup-")
    work = Path(tmp.name)
    spark = common.spark_session("bench-regroup", args.master, args.driver_memory, quick=args.quick)
    if args.data is None:
        data = work / "data"
        make_filters.generate(spark, data, 20_000)
    else:
        data = args.data
    warehouse = str(work / "warehouse")
    shutil.copytree(data / "warehouse", warehouse)
    database = "filterdb"
    register_tables(spark, warehouse, database)
    common.warm(spark, warehouse, database, None)
    failures: list[str] = []

    options = AnalyzeOptions(warehouse=warehouse, database=database, by=DIMENSIONS)
    full, t_full = common.measure("full run", run_analysis, spark, options)
    print(f"full run: {full.n_filters:,} filters of {full.n_models} models in {t_full.seconds:.1f} s")

    timings = []
    for label, by, where in (("a dimension of the run (task)", "task", None),
                             (f"a new expression ({NEW_EXPRESSION})", NEW_EXPRESSION, None),
                             (f"task, where {WHERE}", "task", WHERE)):
        opts = ShiftsOptions(warehouse=warehouse, database=database, by=by, where=where)
        result, first = common.measure(f"shifts --by, first: {label}", shifts_by, spark, opts)
        _, again = common.measure(f"shifts --by, again: {label}", shifts_by, spark, opts)
        timings += [first, again]
        if by == "task" and where is None:
            shifts = spark.read.format("delta").load(table_path(warehouse, database, "shifts")).where(
                (F.col("run_id") == full.run_id) & (F.col("dimension") == "task")).collect()
            theirs = {(r.group_a, r.group_b): r.shift for r in shifts}
            mine = {(r["group_a"], r["group_b"]): r["shift"] for r in result.rows}
            worst = max((abs(mine[k] - v) for k, v in theirs.items()), default=np.inf) if set(mine) == set(theirs) else np.inf
            common.check(worst <= 1e-12, f"shifts --by task equals the run's {len(theirs)} shifts rows (max |diff| {worst:.1e})",
                         failures)

    layers = spark.read.format("delta").load(table_path(warehouse, database, "layer_histograms")).where(
        F.col("run_id") == full.run_id)
    n_rows = layers.count()
    n_layers = layers.select("model_id", "layer_index").distinct().count()
    size = table_bytes(warehouse, database, "layer_histograms")
    full_layers = FULL_MODELS * LAYERS_PER_MODEL

    catalog = added_checkpoint(work)
    run_extraction(spark, read_catalog(catalog), ExtractOptions(warehouse=warehouse, database=database))
    incremental, t_inc = common.measure("incremental run (1 model added)", run_analysis, spark,
                                        AnalyzeOptions(warehouse=warehouse, database=database, by=DIMENSIONS,
                                                       incremental=True))
    common.check(incremental.models_rescanned == 1, f"the incremental run read 1 model ({incremental.models_rescanned})",
                 failures)
    common.check(incremental.n_models == full.n_models + 1, f"and covers all {incremental.n_models} models", failures)

    print()
    common.results_table([t_full, *timings, t_inc])
    print()
    common.ratio_line("incremental / full run", t_inc, t_full, quick=args.quick)
    common.print_table(["layer_histograms", "value"], [
        ["rows (one run)", f"{n_rows:,}"],
        ["layers", f"{n_layers:,}"],
        ["bytes on disk (one run)", f"{size / 2**20:.1f} MiB"],
        ["rows per layer", f"{n_rows / max(n_layers, 1):.0f} (at most 9 x 72)"],
        ["bytes per filter", f"{size / max(full.n_filters, 1):.3f}"],
        [f"projected, published DB (~{full_layers:,} layers)",
         f"{full_layers * n_rows / max(n_layers, 1) / 1e6:.1f} M rows, {full_layers * size / max(n_layers, 1) / 2**20:.0f} MiB"],
    ])
    print(f"incremental phases: {', '.join(f'{k} {v:.1f}' for k, v in incremental.phases.items())}; "
          f"outside the frozen range: {incremental.outside_share:.4%}")
    print("command:", common.command_line())
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
