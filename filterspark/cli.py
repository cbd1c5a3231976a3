"""``filterspark`` command line: setup, demo-zoo, extract, sql (and the other stages' commands).

Each sub-command has an ``add_*_arguments(parser)`` and a ``run_*(args) -> int``; the
``jobs/*.py`` scripts for spark-submit call the same functions.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from .session import DEFAULT_DATABASE, DEFAULT_WAREHOUSE

DEFAULT_ZOO_DIR = "demo_zoo"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="warehouse directory or URI (default: ./warehouse)")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="database the tables are registered in (default: filterdb)")


# --- setup -------------------------------------------------------------------------------


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spark-home", help="Spark installation to configure (default: the installed pyspark)")


def run_setup(args: argparse.Namespace) -> int:
    """Make plain ``spark-submit`` Delta-ready and pre-fetch the Delta JARs."""
    from .session import install_spark_defaults

    path = install_spark_defaults(args.spark_home)
    print(f"Delta Lake settings in {path}")
    from .session import build_session

    spark = build_session(app_name="filterspark-setup")
    spark.range(1).count()
    spark.stop()
    print("Delta Lake JARs resolved")
    return 0


# --- demo zoo ------------------------------------------------------------------------------


def add_demo_zoo_arguments(parser: argparse.ArgumentParser) -> None:
    from . import zoo

    zoo.add_arguments(parser)


def run_demo_zoo(args: argparse.Namespace) -> int:
    from . import zoo

    return zoo.run(args)


# --- extract -------------------------------------------------------------------------------


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--catalog", help="CSV or JSON-lines model catalog; default: build and use the demo zoo")
    parser.add_argument("--zoo-dir", default=DEFAULT_ZOO_DIR, help="where the demo zoo is built when no catalog is given")
    parser.add_argument(
        "--models-per-task", type=int, default=None,
        help="catalog rows per Spark task (default: about 4 tasks per core, balanced by file size)",
    )
    parser.add_argument(
        "--gpus-per-task",
        type=float,
        default=None,
        help="GPUs each extraction task asks for through stage-level scheduling "
        "(default: 1 when executors have GPUs, else 0)",
    )
    parser.add_argument("--force", action="store_true", help="re-extract models even when unchanged")
    parser.add_argument(
        "--write", choices=("auto", "files", "spark"), default="auto",
        help="how filter rows reach Delta: files = tasks write Parquet with pyarrow, committed as one Delta "
        "transaction (local/shared file systems); spark = mapInArrow + Delta writer; auto = files where possible",
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any model failed")
    parser.add_argument(
        "--max-model-bytes",
        help="largest checkpoint file a task loads, e.g. 2g (0: no limit); larger models fail alone "
        "(default: spark.filterspark.maxModelBytes, else derived from the executors' Python memory)",
    )
    from .quality import QualityThresholds

    for name, value in vars(QualityThresholds()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help=f"quality threshold (default {value})")


def _demo_catalog(zoo_dir: str) -> str:
    catalog = Path(zoo_dir) / "catalog.csv"
    if catalog.exists():
        return str(catalog)
    from .zoo import build_demo_zoo

    print(f"building the demo zoo in {zoo_dir} ...", flush=True)
    return str(build_demo_zoo(zoo_dir))


def run_extract(args: argparse.Namespace) -> int:
    """The extraction job (``spark-submit jobs/extract.py``)."""
    from .catalog import CatalogError, read_catalog
    from .extract_job import ExtractOptions, run_extraction
    from .devices import default_gpus_per_task
    from .quality import QualityThresholds
    from .session import build_session

    catalog = args.catalog or _demo_catalog(args.zoo_dir)
    try:
        entries = read_catalog(catalog)
    except CatalogError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    overrides = {k: getattr(args, k) for k in vars(QualityThresholds())}
    thresholds = QualityThresholds.from_dict(overrides)
    spark = build_session(app_name="filterspark-extract", warehouse=args.warehouse, database=args.database)
    gpus = args.gpus_per_task if args.gpus_per_task is not None else default_gpus_per_task(spark)
    options = ExtractOptions(
        warehouse=args.warehouse,
        database=args.database,
        thresholds=thresholds,
        models_per_task=args.models_per_task,
        gpus_per_task=gpus,
        force=args.force,
        max_model_bytes=args.max_model_bytes,
        write=args.write,
    )
    report = run_extraction(spark, entries, options)
    print(f"catalog: {catalog}")
    for line in report.lines():
        print(line)
    print(f"tables: {args.database}.models, {args.database}.layers, {args.database}.filters in {args.warehouse}")
    return 1 if (args.strict and report.failed) else 0


# --- analyze -------------------------------------------------------------------------------


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    from .analyze_job import DEFAULT_BY
    from .shifts import N_BINS

    _add_common(parser)
    parser.add_argument(
        "--by",
        help="comma-separated dimensions: depth_decile, columns of models, keys of models.metadata "
        f"(default: those of {','.join(DEFAULT_BY)} that exist)",
    )
    parser.add_argument("--bins", type=int, default=N_BINS, help=f"histogram bins (default {N_BINS})")
    parser.add_argument("--where", help="SQL predicate over filter and model columns; scopes the basis and all results")
    parser.add_argument("--write-coefficients", action="store_true", help="also store every filter's coefficients")
    parser.add_argument(
        "--min-group-filters", type=int, default=None, help="groups with fewer filters are marked small (default 10 per bin)"
    )
    parser.add_argument(
        "--scan", choices=("auto", "files", "spark"), default="auto",
        help="how executors read filters: the Delta snapshot's Parquet files with pyarrow (files), "
        "or Spark's reader (spark); auto: files when the scope is whole models and the table allows it",
    )


def run_analyze(args: argparse.Namespace) -> int:
    """The analysis job (``spark-submit jobs/analyze.py``)."""
    from .analyze_job import AnalyzeError, AnalyzeOptions, run_analysis
    from .session import build_session

    by = tuple(d.strip() for d in args.by.split(",") if d.strip()) if args.by else None
    options = AnalyzeOptions(
        warehouse=args.warehouse,
        database=args.database,
        by=by,
        bins=args.bins,
        where=args.where,
        write_coefficients=args.write_coefficients,
        min_group_filters=args.min_group_filters,
        scan=args.scan,
    )
    spark = build_session(app_name="filterspark-analyze", warehouse=args.warehouse, database=args.database)
    try:
        report = run_analysis(spark, options)
    except AnalyzeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    print(f"tables: {', '.join(f'{args.database}.{t}' for t in report.tables)} (views: <table>_latest)")
    return 0


# --- sql -------------------------------------------------------------------------------------


def add_sql_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--limit", type=int, default=1000, help="most rows printed (default 1000; 0 = all)")
    parser.add_argument("query", help="SQL; tables are <database>.<table>, e.g. filterdb.filters")


def _jsonable(value):
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if hasattr(value, "asDict"):
        return {k: _jsonable(v) for k, v in value.asDict().items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def format_rows(columns: list[str], rows: list, fmt: str, out=None) -> None:
    """Print query rows as an aligned table, CSV or JSON lines."""
    out = out or sys.stdout
    if fmt == "json":
        for row in rows:
            out.write(json.dumps({c: _jsonable(v) for c, v in zip(columns, row)}, default=str) + "\n")
        return
    cells = [[("" if v is None else str(_jsonable(v))) for v in row] for row in rows]
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(cells)
        return
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def run_sql(args: argparse.Namespace) -> int:
    """Run one SQL statement against the warehouse's registered tables."""
    from .session import build_session

    spark = build_session(app_name="filterspark-sql", warehouse=args.warehouse, database=args.database)
    df = spark.sql(args.query)
    if args.limit:
        df = df.limit(args.limit)
    format_rows(df.columns, [tuple(r) for r in df.collect()], args.format)
    return 0


# --- quality ---------------------------------------------------------------------------------


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    from . import quality_report

    _add_common(parser)
    quality_report.add_arguments(parser)


def run_quality(args: argparse.Namespace) -> int:
    """Per-layer quality of one model, or the models ranked by degeneration."""
    from . import quality_report

    return quality_report.run(args)


# --- import-filterdb -------------------------------------------------------------------------


def add_import_filterdb_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--h5", required=True, help="the published dataset.h5 (a path every executor can open)")
    parser.add_argument(
        "--normalise-tasks",
        action="store_true",
        help="map every task label containing 'Segmentation' to 'Segmentation' (the authors' recommendation)",
    )
    from .import_job import DEFAULT_ROWS_PER_TASK

    parser.add_argument(
        "--rows-per-task", type=int, default=DEFAULT_ROWS_PER_TASK, help=f"filters per Spark task (default {DEFAULT_ROWS_PER_TASK:,})"
    )
    parser.add_argument("--force", action="store_true", help="re-import models even when unchanged")
    from .quality import QualityThresholds

    for name, value in vars(QualityThresholds()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help=f"quality threshold (default {value})")


def run_import_filterdb(args: argparse.Namespace) -> int:
    """The CNN Filter DB import job (``spark-submit jobs/import_filterdb.py``)."""
    from .filterdb_h5 import FilterDBFormatError, read_filterdb
    from .import_job import ImportOptions, run_import
    from .quality import QualityThresholds
    from .session import build_session

    try:
        db = read_filterdb(args.h5, normalise_tasks=args.normalise_tasks)
    except FilterDBFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    thresholds = QualityThresholds.from_dict({k: getattr(args, k) for k in vars(QualityThresholds())})
    spark = build_session(app_name="filterspark-import-filterdb", warehouse=args.warehouse, database=args.database)
    options = ImportOptions(
        warehouse=args.warehouse,
        database=args.database,
        thresholds=thresholds,
        normalise_tasks=args.normalise_tasks,
        rows_per_task=args.rows_per_task,
        force=args.force,
    )
    report = run_import(spark, db, options)
    for line in report.lines():
        print(line)
    print(f"tables: {args.database}.models, {args.database}.layers, {args.database}.filters in {args.warehouse}")
    return 0


# --- report / notebook -----------------------------------------------------------------------


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from . import report

    _add_common(parser)
    report.add_arguments(parser)


def run_report(args: argparse.Namespace) -> int:
    """Every figure and the summary tables as a static HTML page."""
    from . import report

    return report.run(args)


def add_notebook_arguments(parser: argparse.ArgumentParser) -> None:
    from . import notebook

    notebook.add_arguments(parser)


def run_notebook(args: argparse.Namespace) -> int:
    """Execute a Databricks source notebook locally."""
    from . import notebook

    return notebook.run(args)


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="folder tree to scan (a Hugging Face cache, model folders, loose checkpoint files)")
    parser.add_argument("--out", required=True, help="CSV catalog to write")
    parser.add_argument("--append", action="store_true", help="keep the catalog's rows and add only paths it lacks")


def run_catalog(args: argparse.Namespace) -> int:
    """Write a CSV catalog of every checkpoint under a folder (see catalog_scan)."""
    from .catalog_scan import write_catalog

    print("\n".join(write_catalog(args.dir, args.out, append=args.append).lines()))
    return 0


# --- dispatch --------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "setup": ("configure spark-submit for Delta Lake and fetch its JARs", add_setup_arguments, run_setup),
    "demo-zoo": ("train the demo zoo of tiny CNNs and write its catalog", add_demo_zoo_arguments, run_demo_zoo),
    "catalog": ("write a model catalog of the checkpoints under a folder", add_catalog_arguments, run_catalog),
    "extract": ("extract a model catalog into Delta tables", add_extract_arguments, run_extract),
    "analyze": ("PCA, grouped coefficient histograms and shift matrices as tables", add_analyze_arguments, run_analyze),
    "sql": ("run a SQL query against the warehouse", add_sql_arguments, run_sql),
    "quality": ("per-layer filter quality of one model, or models ranked by degeneration", add_quality_arguments, run_quality),
    "import-filterdb": (
        "import the published CNN Filter DB (dataset.h5) into Delta tables",
        add_import_filterdb_arguments,
        run_import_filterdb,
    ),
    "report": ("every figure and the summary tables as a static HTML page", add_report_arguments, run_report),
    "notebook": ("run a Databricks source notebook locally (notebook run X.py)", add_notebook_arguments, run_notebook),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="filterspark", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
