"""The analysis input: the ``ok`` models' filters in scope, the dimensions as group-label
columns, and how the scans read the filters (files or a DataFrame)."""
from __future__ import annotations

from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, MapType, StructType

from filterspark.delta.schemas import WEIGHT_COLUMNS, depth_decile_sql
from filterspark.delta.tables import table_exists
from filterspark.engine.scans import FilterScan, filter_scan
from filterspark.errors import AnalyzeError
from filterspark.kernels import coefficients as co
from filterspark.pipelines.analyze.options import ALL, AnalyzeOptions, DEFAULT_BY, DEPTH_DIMENSION, MODEL_DIMENSION


# --- input ---------------------------------------------------------------------------------


def depth_decile(column: str = "conv_depth_norm") -> Column:
    """The depth group of a layer (:func:`schemas.depth_decile_sql`, the one definition)."""
    return F.expr(depth_decile_sql(column))


def group_label_sql(expr: str) -> str:
    """A group label as SQL: ``expr`` as a string, NULL and '' → ``(none)``."""
    text = f"CAST(({expr}) AS STRING)"
    return f"CASE WHEN {text} IS NULL OR {text} = '' THEN '{co.NONE_LABEL}' ELSE {text} END"


def _is_scalar(dtype: DataType) -> bool:
    return not isinstance(dtype, (ArrayType, MapType, StructType))


def resolve_dimensions(models: DataFrame, by: tuple[str, ...] | None) -> dict[str, str]:
    """SQL label expression of each requested dimension (over the joined filter+model rows,
    and over the ``layer_groups`` view): ``depth_decile``, a scalar column of ``models``
    or a key of ``models.metadata`` (a column wins over a key of the same name)."""
    columns = {f.name for f in models.schema.fields if _is_scalar(f.dataType)} - {"model_id"}
    requested = list(by) if by else list(DEFAULT_BY)
    keys: set[str] = set()
    if any(d != DEPTH_DIMENSION and d not in columns for d in requested):  # a small job: only if needed
        # One row per model: collected as they are (a distinct would add a shuffle stage,
        # seconds of a cold JVM's first job).
        keys = {k for r in models.select(F.map_keys("metadata")).collect() for k in (r[0] or ())}
    wanted = requested if by else [d for d in DEFAULT_BY if d == DEPTH_DIMENSION or d in columns or d in keys]
    out: dict[str, str] = {}
    for dim in wanted:
        if dim in (ALL, MODEL_DIMENSION):
            raise AnalyzeError(f"'{dim}' is reserved and cannot be a dimension")
        if dim == DEPTH_DIMENSION:
            out[dim] = DEPTH_DIMENSION
        elif dim in columns:
            out[dim] = group_label_sql(f"`{dim}`")
        elif dim in keys:
            out[dim] = group_label_sql("metadata['" + dim.replace("'", "\\'") + "']")
        else:
            raise AnalyzeError(
                f"unknown dimension '{dim}': use depth_decile, a column of models "
                f"({', '.join(sorted(columns))}) or a metadata key ({', '.join(sorted(keys)) or 'none'})"
            )
    return out


def kernel_table(options: AnalyzeOptions) -> str:
    """The table holding the run's kernels: ``filters`` (3x3) or ``kernels`` (any other k)."""
    return "filters" if options.k == 3 else "kernels"


def analysis_input(spark: SparkSession, options: AnalyzeOptions) -> tuple[DataFrame, DataFrame]:
    """(kernels of ``ok`` models joined with their model row and ``depth_decile``, after
    ``--where``; the ``ok`` models). 3x3: the ``filters`` rows; k x k: the ``kernels``
    rows of that ``k``. Kernels with a non-finite weight are left out."""
    source = kernel_table(options)
    tables = {t: options.tables.table(t) for t in (source, "models")}
    for name, table in tables.items():
        if not table_exists(spark, table):
            hint = "run the extraction first" if name != "kernels" else "extract with a version that writes k x k kernels"
            raise AnalyzeError(f"no {name} table ({table.location or table.sql}): {hint}")
    models = tables["models"].read(spark).where(F.col("status") == "ok")
    if source == "filters":
        filters = tables["filters"].read(spark).select(
            "model_id", "layer_index", "filter_index", *WEIGHT_COLUMNS, "conv_depth", "conv_depth_norm"
        )
        peak = F.greatest(*[F.abs(F.col(c).cast("double")) for c in WEIGHT_COLUMNS])
        finite = ~F.isnan(peak) & (peak < F.lit(float("inf")))
    else:
        filters = tables["kernels"].read(spark).where(F.col("k") == options.k).select(
            "model_id", "layer_index", "filter_index", "weights", "conv_depth", "conv_depth_norm"
        )
        finite = ~F.exists("weights", lambda w: F.isnan(w) | (F.abs(w) == F.lit(float("inf"))))
    joined = filters.join(F.broadcast(models), "model_id").withColumn(DEPTH_DIMENSION, depth_decile())
    joined = joined.where(finite)
    if options.where and options.where.strip():
        try:
            joined = joined.where(F.expr(options.where))
            joined.schema  # resolve now: a bad predicate is the user's error
        except PySparkException as err:  # AnalysisException / ParseException: the user's predicate
            raise AnalyzeError(f"bad where predicate {options.where!r}: {str(err).splitlines()[0]}") from err
    return joined, models


def is_model_level(models: DataFrame, where: str | None) -> bool:
    """Whether ``where`` can be decided from the model rows alone."""
    if not (where and where.strip()):
        return True
    try:
        models.where(F.expr(where)).schema
        return True
    except PySparkException:  # AnalysisException: a filter-level column
        return False


def plan_scan(spark: SparkSession, options: AnalyzeOptions, joined: DataFrame, models: DataFrame,
              ok_ids: set[int] | None = None) -> FilterScan:
    """The filters scan of one run: whole models' data files when the scope allows it.
    ``ok_ids``: the ok models' ids when the caller has them already."""
    model_level = is_model_level(models, options.where)
    ids: set[int] = set()
    if options.scan != "spark" and model_level:
        if options.scope == ALL and ok_ids is not None:
            ids = set(ok_ids)
        else:
            in_scope = models.where(F.expr(options.where)) if options.scope != ALL else models
            ids = {int(r[0]) for r in in_scope.select("model_id").collect()}
    return filter_scan(spark, options.tables.table(kernel_table(options)), ids, lambda: joined, options.scan, model_level,
                       options.k)


