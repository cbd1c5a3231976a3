"""``filterspark`` command line: setup, demo-zoo, extract, sql (and the other stages' commands).

Each sub-command has an ``add_*_arguments(parser)`` and a ``run_*(args) -> int``; the
``jobs/*.py`` scripts for spark-submit call the same functions.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable, Sequence

from filterspark.delta.warehouse import DEFAULT_DATABASE, DEFAULT_WAREHOUSE
from filterspark.errors import FilterSparkError

DEFAULT_ZOO_DIR = "demo_zoo"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--warehouse", default=None,
        help="warehouse directory or URI (default: the one a `filterspark serve` at --remote serves, else ./warehouse)",
    )
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="database (schema) of the tables (default: filterdb)")
    parser.add_argument(
        "--catalog-name", default=None,
        help="catalog mode: tables managed by the session's catalog as CATALOG.DATABASE.TABLE "
        "(e.g. main on Unity Catalog, spark_catalog locally) instead of Delta directories under --warehouse",
    )
    parser.add_argument(
        "--remote", default=None,
        help="Spark Connect URL (sc://host:port) to run on instead of a local driver (default: $SPARK_REMOTE)",
    )


def _add_quality_thresholds(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`QualityThresholds` field (``--random-entropy-norm`` ...)."""
    from filterspark.kernels.quality import QualityThresholds

    for name, value in vars(QualityThresholds()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, help=f"quality threshold (default {value})")


def _thresholds(args: argparse.Namespace):
    """The thresholds the options set (the others at their defaults)."""
    from filterspark.kernels.quality import QualityThresholds

    return QualityThresholds.from_dict({k: getattr(args, k) for k in vars(QualityThresholds())})


def _kernel_sizes(value: str) -> tuple[int, ...]:
    """``--kernels`` parsed before any session starts (its error message kept)."""
    from filterspark.kernels.shapes import parse_kernel_sizes

    try:
        return parse_kernel_sizes(value)
    except FilterSparkError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_kernels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kernels", default="all", type=_kernel_sizes,
        help="square kernel sizes k x k (k != 3) written to the kernels table: all (every k from 2 to 11 "
        "but 3, the default), none, or a comma list such as 5,7",
    )


def _add_write(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write", choices=("auto", "files", "spark"), default="auto",
        help="how filter rows reach Delta: files = tasks write Parquet with pyarrow, committed as one Delta "
        "transaction (local/shared file systems); spark = mapInArrow + Delta writer; auto = files where possible",
    )


def _session(args: argparse.Namespace, app_name: str):
    """The session a command runs on, with the warehouse's tables named; ``args.warehouse``
    is set to the warehouse used when none was given."""
    from filterspark.engine.session import build_session, warehouse_in_use

    spark = build_session(
        app_name=app_name, warehouse=args.warehouse, database=args.database,
        remote=getattr(args, "remote", None), catalog=getattr(args, "catalog_name", None),
        default_warehouse=DEFAULT_WAREHOUSE, short_lived=True,
    )
    args.warehouse = warehouse_in_use(spark, args.warehouse, args.database)
    return spark


# --- setup -------------------------------------------------------------------------------


def add_setup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spark-home", help="Spark installation to configure (default: the installed pyspark)")
    parser.add_argument("--no-local-jars", dest="local_jars", action="store_false",
                        help="leave <SPARK_HOME>/jars alone: every new JVM resolves Delta from Maven instead")


def run_setup(args: argparse.Namespace) -> int:
    """Make plain ``spark-submit`` Delta-ready: Delta's JARs into the installation's
    ``jars/`` (resolved once), its SQL settings into spark-defaults.conf; then check that a
    session starts with them."""
    from filterspark.engine.delta_jars import install_delta_jars, spark_home
    from filterspark.engine.session import build_session, install_spark_defaults

    local_jars = args.local_jars
    if local_jars:
        try:
            added = install_delta_jars(args.spark_home)
        except OSError as error:
            print(f"cannot write {spark_home(args.spark_home) / 'jars'} ({error}); Delta will be resolved from Maven at each start")
            local_jars = False
        else:
            where = spark_home(args.spark_home) / "jars"
            print(f"Delta Lake JARs in {where}" + (f" (added {len(added)}: {', '.join(added)})" if added else ""))
    path = install_spark_defaults(args.spark_home, local_jars=local_jars)
    print(f"Delta Lake settings in {path}")
    spark = build_session(app_name="filterspark-setup")
    spark.range(1).count()
    spark.stop()
    print("a Delta-enabled session starts")
    return 0


# --- demo zoo ------------------------------------------------------------------------------


def add_demo_zoo_arguments(parser: argparse.ArgumentParser) -> None:
    from filterspark.demo import zoo

    zoo.add_arguments(parser)


def run_demo_zoo(args: argparse.Namespace) -> int:
    from filterspark.demo import zoo

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
    _add_write(parser)
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any model failed")
    parser.add_argument(
        "--max-model-bytes",
        help="largest checkpoint file a task loads, e.g. 2g (0: no limit); larger models fail alone "
        "(default: spark.filterspark.maxModelBytes, else derived from the executors' Python memory)",
    )
    _add_kernels(parser)
    _add_quality_thresholds(parser)


def _demo_catalog(zoo_dir: str) -> str:
    catalog = Path(zoo_dir) / "catalog.csv"
    if catalog.exists():
        return str(catalog)
    from filterspark.demo.zoo import build_demo_zoo

    print(f"building the demo zoo in {zoo_dir} ...", flush=True)
    return str(build_demo_zoo(zoo_dir))


def run_extract(args: argparse.Namespace) -> int:
    """The extraction job (``spark-submit jobs/extract.py``)."""
    from filterspark.engine.resources import default_gpus_per_task
    from filterspark.pipelines.extract import ExtractOptions, run_extraction
    from filterspark.sources.catalog import read_catalog

    catalog = args.catalog or _demo_catalog(args.zoo_dir)
    entries = read_catalog(catalog)
    thresholds = _thresholds(args)
    spark = _session(args, "filterspark-extract")
    gpus = args.gpus_per_task if args.gpus_per_task is not None else default_gpus_per_task(spark)
    options = ExtractOptions(
        warehouse=args.warehouse,
        database=args.database,
        catalog_name=args.catalog_name,
        thresholds=thresholds,
        models_per_task=args.models_per_task,
        gpus_per_task=gpus,
        force=args.force,
        max_model_bytes=args.max_model_bytes,
        write=args.write,
        kernels=args.kernels,
    )
    report = run_extraction(spark, entries, options)
    print(f"catalog: {catalog}")
    for line in report.lines():
        print(line)
    print(f"tables: models, layers, filters, kernels in {options.tables.describe()}")
    return 1 if (args.strict and report.failed) else 0


# --- analyze -------------------------------------------------------------------------------


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    from filterspark.pipelines.analyze import DEFAULT_BY
    from filterspark.kernels.shifts import N_BINS

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
        "--incremental", action="store_true",
        help="reuse the latest complete run's basis and range (same scope) and scan only the models extracted "
        "or replaced since; every table still covers all models",
    )
    parser.add_argument(
        "--outside-threshold", type=float, default=None,
        help="--incremental: share of coefficients outside the frozen range above which the job says a "
        "full run is due (default 0.001)",
    )
    parser.add_argument("--neighbours", type=int, default=None, help="nearest models kept per model (default 10)")
    parser.add_argument(
        "--kernel", default="3x3",
        help="kernel shape KxK to analyse (default 3x3: the filters table; 5x5, 7x7, ...: the kernels table's rows of that k)",
    )
    parser.add_argument(
        "--components", type=int, default=None,
        help="coefficients (hence histograms, shifts, neighbours) on the first N components only (default: all k²; "
        "the basis always has all k²)",
    )
    parser.add_argument(
        "--scan", choices=("auto", "files", "spark"), default="auto",
        help="how executors read filters: the Delta snapshot's Parquet files with pyarrow (files), "
        "or Spark's reader (spark); auto: files when the scope is whole models and the table allows it",
    )


def run_analyze(args: argparse.Namespace) -> int:
    """The analysis job (``spark-submit jobs/analyze.py``)."""
    from filterspark.pipelines.analyze import AnalyzeOptions, run_analysis

    by = tuple(d.strip() for d in args.by.split(",") if d.strip()) if args.by else None
    options = AnalyzeOptions(  # checked before a session starts; the warehouse is set once it runs
        warehouse=args.warehouse or DEFAULT_WAREHOUSE,
        database=args.database,
        catalog_name=args.catalog_name,
        by=by,
        bins=args.bins,
        where=args.where,
        write_coefficients=args.write_coefficients,
        min_group_filters=args.min_group_filters,
        scan=args.scan,
        incremental=args.incremental,
        kernel=args.kernel,
        components=args.components,
        **{k: v for k, v in (("outside_threshold", args.outside_threshold), ("neighbours", args.neighbours)) if v is not None},
    )
    spark = _session(args, "filterspark-analyze")
    options = dataclasses.replace(options, warehouse=args.warehouse)
    report = run_analysis(spark, options)
    for line in report.lines():
        print(line)
    print(f"tables: {', '.join(report.tables)} (views: <table>_latest) in {options.tables.describe()}")
    return 0


# --- sql -------------------------------------------------------------------------------------


def add_sql_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--limit", type=int, default=1000, help="most rows printed (default 1000; 0 = all)")
    parser.add_argument("query", help="SQL; tables are <database>.<table>, e.g. filterdb.filters")


def run_sql(args: argparse.Namespace) -> int:
    """Run one SQL statement against the warehouse's registered tables."""
    from filterspark.outputs.formatting import format_rows

    spark = _session(args, "filterspark-sql")
    df = spark.sql(args.query)
    if args.limit:
        df = df.limit(args.limit)
    format_rows(df.columns, [tuple(r) for r in df.collect()], args.format)
    return 0


# --- shifts, neighbours -----------------------------------------------------------------------


def add_shifts_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument(
        "--by", required=True,
        help="grouping: a Spark SQL expression over the columns of models (and metadata['key']), of layers and "
        "depth_decile, e.g. family, format, \"metadata['variant']\", \"concat(task, '/', family)\"",
    )
    parser.add_argument("--where", help="SQL predicate over the same columns: only those layers are grouped")
    parser.add_argument("--run-id", help="analysis run (default: the latest complete run of scope all and --kernel)")
    parser.add_argument("--kernel", default=None, help="kernel shape of the run, KxK (default 3x3; a --run-id knows its own)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")


def run_shifts(args: argparse.Namespace) -> int:
    """The shift matrix of any grouping, from the run's per-layer histograms (no filter scan)."""
    from filterspark.outputs.formatting import format_rows
    from filterspark.pipelines.analyze.regroup import ShiftsOptions, shifts_by

    spark = _session(args, "filterspark-shifts")
    options = ShiftsOptions(warehouse=args.warehouse, database=args.database, catalog_name=args.catalog_name,
                            by=args.by, where=args.where, run_id=args.run_id, kernel=args.kernel)
    result = shifts_by(spark, options)
    print(f"# run {result.run.run_id} (scope {result.run.scope}, kernel {result.run.kernel}): {result.note}", file=sys.stderr)
    format_rows(list(result.COLUMNS), [tuple(r[c] for c in result.COLUMNS) for r in result.rows], args.format)
    return 0


def add_neighbours_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--model", required=True, help="model name (models.name) or model id")
    parser.add_argument("--run-id", help="analysis run (default: the latest complete run of scope all and --kernel)")
    parser.add_argument("--kernel", default=None, help="kernel shape of the run, KxK (default 3x3; a --run-id knows its own)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")


def run_neighbours(args: argparse.Namespace) -> int:
    """A model's nearest models by the shift between their whole filter histograms."""
    from filterspark.delta.warehouse import WarehouseOptions
    from filterspark.outputs.formatting import format_rows
    from filterspark.pipelines.analyze.regroup import NEIGHBOUR_COLUMNS, nearest_models

    spark = _session(args, "filterspark-neighbours")
    options = WarehouseOptions(warehouse=args.warehouse, database=args.database, catalog_name=args.catalog_name)
    run, rows = nearest_models(spark, options, args.model, args.run_id, args.kernel)
    print(f"# nearest models to {args.model} (run {run.run_id}, scope {run.scope}, kernel {run.kernel})", file=sys.stderr)
    format_rows(list(NEIGHBOUR_COLUMNS), [tuple(r[c] for c in NEIGHBOUR_COLUMNS) for r in rows], args.format)
    return 0


# --- quality ---------------------------------------------------------------------------------


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    from filterspark.outputs import quality_report

    _add_common(parser)
    quality_report.add_arguments(parser)


def run_quality(args: argparse.Namespace) -> int:
    """Per-layer quality of one model, or the models ranked by degeneration."""
    from filterspark.outputs import quality_report

    return quality_report.run(_session(args, "filterspark-quality"), args)


# --- import-filterdb -------------------------------------------------------------------------


def add_import_filterdb_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--h5", required=True, help="the published dataset.h5 (a path every executor can open)")
    parser.add_argument(
        "--normalise-tasks",
        action="store_true",
        help="map every task label containing 'Segmentation' to 'Segmentation' (the authors' recommendation)",
    )
    from filterspark.pipelines.importer import DEFAULT_ROWS_PER_TASK

    parser.add_argument(
        "--rows-per-task", type=int, default=DEFAULT_ROWS_PER_TASK, help=f"filters per Spark task (default {DEFAULT_ROWS_PER_TASK:,})"
    )
    parser.add_argument("--force", action="store_true", help="re-import models even when unchanged")
    _add_write(parser)
    _add_kernels(parser)
    _add_quality_thresholds(parser)


def run_import_filterdb(args: argparse.Namespace) -> int:
    """The CNN Filter DB import job (``spark-submit jobs/import_filterdb.py``)."""
    from filterspark.pipelines.importer import ImportOptions, run_import
    from filterspark.sources.filterdb_h5 import read_filterdb

    db = read_filterdb(args.h5, normalise_tasks=args.normalise_tasks)
    thresholds = _thresholds(args)
    spark = _session(args, "filterspark-import-filterdb")
    options = ImportOptions(
        warehouse=args.warehouse,
        database=args.database,
        catalog_name=args.catalog_name,
        thresholds=thresholds,
        normalise_tasks=args.normalise_tasks,
        rows_per_task=args.rows_per_task,
        force=args.force,
        kernels=args.kernels,
        write=args.write,
    )
    report = run_import(spark, db, options)
    for line in report.lines():
        print(line)
    print(f"tables: models, layers, filters, kernels in {options.tables.describe()}")
    return 0


# --- report / notebook -----------------------------------------------------------------------


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from filterspark.outputs import report

    _add_common(parser)
    report.add_arguments(parser)


def run_report(args: argparse.Namespace) -> int:
    """Every figure and the summary tables as a static HTML page."""
    from filterspark.outputs import report

    return report.run(_session(args, "filterspark-report"), args)


def add_notebook_arguments(parser: argparse.ArgumentParser) -> None:
    from filterspark.outputs import notebooks as notebook

    notebook.add_arguments(parser)


def run_notebook(args: argparse.Namespace) -> int:
    """Execute a Databricks source notebook locally."""
    from filterspark.outputs import notebooks as notebook

    return notebook.run(args)


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="folder tree to scan (a Hugging Face cache, model folders, loose checkpoint files)")
    parser.add_argument("--out", required=True, help="CSV catalog to write")
    parser.add_argument("--append", action="store_true", help="keep the catalog's rows and add only paths it lacks")


def run_catalog(args: argparse.Namespace) -> int:
    """Write a CSV catalog of every checkpoint under a folder (see catalog_scan)."""
    from filterspark.sources.catalog_scan import write_catalog

    print("\n".join(write_catalog(args.dir, args.out, append=args.append).lines()))
    return 0


# --- serve ---------------------------------------------------------------------------------


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from filterspark.engine.server import TOKEN_ENV, ServeOptions

    defaults = ServeOptions()
    parser.add_argument("--warehouse", default=DEFAULT_WAREHOUSE, help="warehouse directory or URI (default: ./warehouse)")
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="database (schema) of the tables (default: filterdb)")
    parser.add_argument("--host", default=defaults.host,
                        help=f"address Spark Connect listens on (default {defaults.host}; any other needs a token)")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"Spark Connect port (default {defaults.port})")
    parser.add_argument("--jdbc-port", type=int, default=defaults.jdbc_port,
                        help=f"HiveServer2 JDBC/ODBC port, always on 127.0.0.1 (default {defaults.jdbc_port}; 0: off)")
    parser.add_argument("--token", default=None,
                        help=f"token clients must present (default: ${TOKEN_ENV}; prefer the variable, "
                        "a command line is visible to other users)")
    parser.add_argument("--master", default=None, help="Spark master (default: spark.master, else local[*])")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="any Spark setting")
    parser.add_argument("--refresh-seconds", type=float, default=defaults.refresh_seconds,
                        help=f"how often new tables are looked for (default {defaults.refresh_seconds:g}; 0: never)")


def run_serve(args: argparse.Namespace) -> int:
    """Serve the warehouse over Spark Connect and JDBC until SIGINT/SIGTERM."""
    import os

    from filterspark.engine.server import TOKEN_ENV, ServeOptions, serve
    from filterspark.errors import ServeError

    conf = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep:
            raise ServeError(f"--conf {item!r} is not KEY=VALUE")
        conf[key.strip()] = value
    options = ServeOptions(
        warehouse=args.warehouse, database=args.database, host=args.host, port=args.port, jdbc_port=args.jdbc_port,
        token=args.token or os.environ.get(TOKEN_ENV) or None, master=args.master, conf=conf,
        refresh_seconds=args.refresh_seconds,
    )
    return serve(options)


# --- dispatch --------------------------------------------------------------------------------

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "setup": ("configure spark-submit for Delta Lake and fetch its JARs", add_setup_arguments, run_setup),
    "demo-zoo": ("train the demo zoo of tiny CNNs and write its catalog", add_demo_zoo_arguments, run_demo_zoo),
    "catalog": ("write a model catalog of the checkpoints under a folder", add_catalog_arguments, run_catalog),
    "extract": ("extract a model catalog into Delta tables", add_extract_arguments, run_extract),
    "analyze": ("PCA, grouped coefficient histograms and shift matrices as tables", add_analyze_arguments, run_analyze),
    "sql": ("run a SQL query against the warehouse", add_sql_arguments, run_sql),
    "shifts": ("the shift matrix of any grouping of an analysis run's layers", add_shifts_arguments, run_shifts),
    "neighbours": ("a model's nearest models by filter-distribution shift", add_neighbours_arguments, run_neighbours),
    "quality": ("per-layer filter quality of one model, or models ranked by degeneration", add_quality_arguments, run_quality),
    "import-filterdb": (
        "import the published CNN Filter DB (dataset.h5) into Delta tables",
        add_import_filterdb_arguments,
        run_import_filterdb,
    ),
    "report": ("every figure and the summary tables as a static HTML page", add_report_arguments, run_report),
    "notebook": ("run a Databricks source notebook locally (notebook run X.py)", add_notebook_arguments, run_notebook),
    "serve": ("serve the warehouse to SQL clients: Spark Connect and JDBC (HiveServer2)", add_serve_arguments, run_serve),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with ``only``, only that command gets its arguments (the
    others keep their one-line help), so a command imports nothing of the others (the demo
    zoo's torch, the report's matplotlib: seconds at every start)."""
    parser = argparse.ArgumentParser(prog="filterspark", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            add_arguments(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a :class:`FilterSparkError` is printed as ``error: ...`` (exit 2)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(only=command).parse_args(argv)
    before = _active_classic_session()
    try:
        return COMMANDS[args.command][2](args)
    except FilterSparkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        # A session this command started ends with it: its executors are told to stop
        # (a local cluster's workers otherwise relaunch them while the JVM exits).
        started = _active_classic_session()
        if started is not None and before is None:
            from filterspark.delta.jvm import stop_session

            stop_session(started)


def _active_classic_session():
    """The classic SparkSession active in this process, if any (pyspark imported lazily)."""
    if "pyspark.sql" not in sys.modules:
        return None
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


if __name__ == "__main__":
    sys.exit(main())
