"""Schemas of every table filterspark writes: the public SQL contract, in one place.

Each schema is a Spark ``StructType``; the Arrow schema that executors stream is
derived from it, never written twice. Column meanings are documented in README.md.
"""
from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from filterspark.kernels.shapes import DEFAULT_KERNEL
from filterspark.sources.catalog import KNOWN_METADATA  # noqa: E402 - the catalog schema owns it

#: Model metadata denormalised into every ``filters`` row, for pruning and grouping.
FILTER_METADATA = ("task", "visual_category", "training_dataset", "family")

WEIGHT_COLUMNS = tuple(f"w{i}" for i in range(9))

#: Layer quality columns (null for 1x1 and non-square layers; the normalised entropies also
#: for k x k sizes without a random level, k > 11: see kernels/random_level.py).
LAYER_QUALITY_FIELDS = [
    StructField("sparsity", DoubleType()),
    StructField("variance_entropy", DoubleType()),
    StructField("variance_entropy_norm", DoubleType()),
    StructField("variance_entropy_clean", DoubleType()),
    StructField("variance_entropy_clean_norm", DoubleType()),
    StructField("nonfinite_count", LongType()),
    StructField("degenerate_random", BooleanType()),
    StructField("degenerate_sparse", BooleanType()),
    StructField("degenerate_low_variety", BooleanType()),
]

#: Per-model quality roll-up columns of ``models``.
MODEL_QUALITY_FIELDS = [
    StructField("layers_3x3", IntegerType()),
    StructField("mean_variance_entropy_norm", DoubleType()),
    StructField("min_variance_entropy_norm", DoubleType()),
    StructField("mean_variance_entropy_clean_norm", DoubleType()),
    StructField("mean_sparsity", DoubleType()),
    StructField("max_sparsity", DoubleType()),
    StructField("share_random", DoubleType()),
    StructField("share_sparse", DoubleType()),
    StructField("share_low_variety", DoubleType()),
    StructField("share_degenerate", DoubleType()),
    StructField("nonfinite_layers", IntegerType()),
    StructField("worst_layer_index", IntegerType()),
    StructField("worst_layer_reason", StringType()),  # its most severe flag: sparse | low_variety | random
]

MODELS = StructType(
    [
        StructField("model_id", LongType(), False),
        StructField("name", StringType(), False),
        StructField("path", StringType()),
        StructField("format", StringType()),
        StructField("checksum", StringType()),
        StructField("file_size", LongType()),
        *[StructField(c, StringType()) for c in KNOWN_METADATA],
        StructField("metadata", MapType(StringType(), StringType())),
        StructField("producer", StringType()),
        StructField("opset", IntegerType()),
        StructField("conv_layers", IntegerType()),
        StructField("conv_levels", IntegerType()),
        StructField("kernel_shape_counts", MapType(StringType(), LongType())),
        StructField("filters_3x3", LongType()),
        StructField("total_filters", LongType()),
        StructField("share_3x3", DoubleType()),
        *MODEL_QUALITY_FIELDS,
        StructField("status", StringType()),
        StructField("error", StringType()),
        StructField("device", StringType()),
        StructField("device_note", StringType()),  # why a GPU-assigned task ran elsewhere
        StructField("fingerprint", StringType()),
        StructField("extracted_at", TimestampType()),
        StructField("extraction_seconds", DoubleType()),
    ]
)

LAYERS = StructType(
    [
        StructField("model_id", LongType(), False),
        StructField("layer_index", IntegerType(), False),
        StructField("layer_name", StringType()),
        StructField("op", StringType()),
        StructField("conv_depth", IntegerType()),
        StructField("conv_depth_norm", DoubleType()),
        StructField("out_channels", IntegerType()),
        StructField("in_channels", IntegerType()),
        StructField("groups", IntegerType()),
        StructField("kernel_h", IntegerType()),
        StructField("kernel_w", IntegerType()),
        StructField("n_filters", LongType()),
        StructField("dtype", StringType()),
        *LAYER_QUALITY_FIELDS,
    ]
)

FILTERS = StructType(
    [
        StructField("model_id", LongType(), False),
        StructField("layer_index", IntegerType(), False),
        StructField("filter_index", IntegerType(), False),
        *[StructField(c, FloatType(), False) for c in WEIGHT_COLUMNS],
        *[StructField(c, StringType()) for c in FILTER_METADATA],
        StructField("conv_depth", IntegerType()),
        StructField("conv_depth_norm", DoubleType()),
    ]
)

#: ``filters`` is partitioned by model: one directory per model makes per-model
#: replacement a partition overwrite, and because each file then holds one model, the
#: per-file min/max statistics of the denormalised metadata columns let Delta skip
#: whole files on group predicates (``WHERE task = 'denoising'``).
FILTERS_PARTITION_COLUMNS = ("model_id",)

#: Kernels of every other square shape k x k (1 < k != 3; 3x3 stays in ``filters``): one
#: row per kernel, ``weights`` its k*k values row-major, the same denormalised columns as
#: ``filters``, partitioned by model like ``filters``.
KERNELS = StructType(
    [
        StructField("model_id", LongType(), False),
        StructField("layer_index", IntegerType(), False),
        StructField("filter_index", IntegerType(), False),
        StructField("k", IntegerType(), False),
        StructField("weights", ArrayType(FloatType(), containsNull=False), False),
        *[StructField(c, StringType()) for c in FILTER_METADATA],
        StructField("conv_depth", IntegerType()),
        StructField("conv_depth_norm", DoubleType()),
    ]
)
KERNELS_PARTITION_COLUMNS = ("model_id",)

TABLES = {"models": MODELS, "layers": LAYERS, "filters": FILTERS, "kernels": KERNELS}
PARTITION_COLUMNS = {"filters": FILTERS_PARTITION_COLUMNS, "kernels": KERNELS_PARTITION_COLUMNS}


def arrow_schema(schema: StructType):
    """The Arrow schema Spark expects for ``schema`` (e.g. from ``mapInArrow``); timestamps
    are UTC instants."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC")


# ==========================================================================================
# Analysis tables (issue 4: jobs/analyze.py). Every row carries its run: ``run_id``
# (sortable: start time + random suffix), ``scope`` (the ``--where`` predicate, or
# ``all``) and ``run_at`` (start time). ``analysis_runs`` is written last: a run is
# visible to the ``<table>_latest`` views only once all its tables are written.
# ==========================================================================================

RUN_FIELDS = [
    StructField("run_id", StringType(), False),
    StructField("scope", StringType(), False),
    StructField("run_at", TimestampType(), False),
]

#: The kernel shape a run analysed (``"3x3"``: ``filters``; ``"5x5"``, ...: ``kernels``),
#: the last column of every analysis table (added after issue 18: rows written before
#: it read NULL there, which means 3x3; the ``_latest`` views show them as ``3x3``).
KERNEL_FIELD = StructField("kernel", StringType())

#: One row per analysis run: its settings, size and results in brief (the commit record).
ANALYSIS_RUNS = StructType(
    [
        *RUN_FIELDS,
        StructField("finished_at", TimestampType()),
        StructField("seconds", DoubleType()),
        StructField("dimensions", ArrayType(StringType())),
        StructField("bins", IntegerType()),
        StructField("min_group_filters", LongType()),
        StructField("n_filters", LongType()),
        StructField("n_models", LongType()),
        StructField("range_lo", DoubleType()),
        StructField("range_hi", DoubleType()),
        StructField("explained_variance_ratio", ArrayType(DoubleType())),
        StructField("write_coefficients", BooleanType()),
        StructField("base_run_id", StringType()),  # incremental: the run whose basis and range it reused
        StructField("models_rescanned", LongType()),  # models whose filters this run read
        StructField("outside_share", DoubleType()),  # coefficients outside the range (left out of the bins)
        StructField("neighbours_k", IntegerType()),
        StructField("components", IntegerType()),  # components with coefficients (--components; NULL: 9, 3x3)
        KERNEL_FIELD,
    ]
)

#: One row per principal component (all k² of them) of the scope's scaled kernels:
#: ``vector`` the component's k² values row-major; ``v0..v8`` the same for 3x3 (NULL
#: for other kernels).
PCA_BASIS = StructType(
    [
        *RUN_FIELDS,
        StructField("component", IntegerType(), False),
        *[StructField(f"v{i}", DoubleType()) for i in range(9)],
        StructField("mean", ArrayType(DoubleType())),
        StructField("explained_variance", DoubleType()),
        StructField("explained_variance_ratio", DoubleType()),
        StructField("n_filters", LongType()),
        StructField("vector", ArrayType(DoubleType())),
        KERNEL_FIELD,
    ]
)

_GROUP_FIELDS = [
    StructField("dimension", StringType(), False),
    StructField("group_value", StringType(), False),
]

#: One row per (dimension, group, component, bin): the published normalised histogram.
COEFFICIENT_HISTOGRAMS = StructType(
    [
        *RUN_FIELDS,
        *_GROUP_FIELDS,
        StructField("component", IntegerType(), False),
        StructField("bin", IntegerType(), False),
        StructField("bin_lo", DoubleType()),
        StructField("bin_hi", DoubleType()),
        StructField("count", LongType()),
        StructField("probability", DoubleType()),
        StructField("n_filters", LongType()),
        StructField("small_group", BooleanType()),
        KERNEL_FIELD,
    ]
)

#: One row per (dimension, group, component): summary statistics of the coefficients.
COEFFICIENT_STATS = StructType(
    [
        *RUN_FIELDS,
        *_GROUP_FIELDS,
        StructField("component", IntegerType(), False),
        StructField("n_filters", LongType()),
        StructField("mean", DoubleType()),
        StructField("std", DoubleType()),
        StructField("min", DoubleType()),
        StructField("max", DoubleType()),
        *[StructField(q, DoubleType()) for q in ("q01", "q05", "q25", "median", "q75", "q95", "q99")],
        StructField("small_group", BooleanType()),
        KERNEL_FIELD,
    ]
)

#: One row per ordered pair of groups of a dimension (both orders, equal values).
SHIFTS = StructType(
    [
        *RUN_FIELDS,
        StructField("dimension", StringType(), False),
        StructField("group_a", StringType(), False),
        StructField("group_b", StringType(), False),
        StructField("shift", DoubleType()),
        StructField("kl_components", ArrayType(DoubleType())),
        StructField("n_a", LongType()),
        StructField("n_b", LongType()),
        StructField("small", BooleanType()),
        KERNEL_FIELD,
    ]
)

#: One row per (model, dimension): the model against the rest of its group
#: (dimension ``all``: the rest of the population).
MODEL_SHIFTS = StructType(
    [
        *RUN_FIELDS,
        StructField("model_id", LongType(), False),
        StructField("name", StringType()),
        *_GROUP_FIELDS,
        StructField("shift", DoubleType()),
        StructField("kl_components", ArrayType(DoubleType())),
        StructField("n_filters", LongType()),
        StructField("n_rest", LongType()),
        StructField("small", BooleanType()),
        KERNEL_FIELD,
    ]
)

#: One row per (layer, component, non-zero bin) of every analysed 3x3 layer: the additive
#: unit of any grouping (``filterspark shifts --by``). Bin -1 / ``bins`` count the
#: coefficients below / above the run's range (an incremental run's frozen range); the
#: layer-component's count, sum, sum of squares, min and max repeat on each of its rows,
#: as do the run's range, bins and the component's explained-variance ratio, so a
#: grouping query needs no other analysis table.
LAYER_HISTOGRAMS = StructType(
    [
        *RUN_FIELDS,
        StructField("model_id", LongType(), False),
        StructField("layer_index", IntegerType(), False),
        StructField("component", IntegerType(), False),
        StructField("bin", IntegerType(), False),
        StructField("count", LongType(), False),
        StructField("n_filters", LongType()),
        StructField("coef_sum", DoubleType()),
        StructField("coef_sumsq", DoubleType()),
        StructField("coef_min", DoubleType()),
        StructField("coef_max", DoubleType()),
        StructField("extracted_at", TimestampType()),  # the model version the counts are of
        StructField("range_lo", DoubleType()),
        StructField("range_hi", DoubleType()),
        StructField("bins", IntegerType()),
        StructField("explained_variance_ratio", DoubleType()),  # of this component
        StructField("min_group_filters", LongType()),
        KERNEL_FIELD,
    ]
)

#: One row per (model, rank): the model's ``k`` nearest models by the shift between the
#: two models' whole histograms.
MODEL_NEIGHBOURS = StructType(
    [
        *RUN_FIELDS,
        StructField("model_id", LongType(), False),
        StructField("name", StringType()),
        StructField("rank", IntegerType(), False),
        StructField("neighbour_id", LongType(), False),
        StructField("neighbour_name", StringType()),
        StructField("shift", DoubleType()),
        StructField("n_filters", LongType()),
        StructField("neighbour_n_filters", LongType()),
        KERNEL_FIELD,
    ]
)

#: Optional (``--write-coefficients``): one row per analysed filter.
COEFFICIENTS = StructType(
    [
        *RUN_FIELDS,
        StructField("model_id", LongType(), False),
        StructField("layer_index", IntegerType(), False),
        StructField("filter_index", IntegerType(), False),
        *[StructField(f"c{i}", DoubleType()) for i in range(9)],
        KERNEL_FIELD,
    ]
)

ANALYSIS_TABLES = {
    "pca_basis": PCA_BASIS,
    "coefficient_histograms": COEFFICIENT_HISTOGRAMS,
    "coefficient_stats": COEFFICIENT_STATS,
    "shifts": SHIFTS,
    "model_shifts": MODEL_SHIFTS,
    "layer_histograms": LAYER_HISTOGRAMS,
    "model_neighbours": MODEL_NEIGHBOURS,
    "coefficients": COEFFICIENTS,
    "analysis_runs": ANALYSIS_RUNS,
}

#: ``<table>_latest``: the rows of the latest complete run of each scope and kernel, with
#: ``kernel`` never NULL (an older version's rows: ``3x3``). Registered by
#: ``registry.register_tables`` (views are session-scoped without a metastore) whenever
#: the tables they read exist. ``{db}`` is the quoted schema (``Warehouse.schema_sql``);
#: ``{models}``, ``{layers}``: those tables' identifiers (names, or ``delta.`path```);
#: ``{columns}``, ``{run_kernel}``: :func:`latest_view_parts`.
VIEWS: dict[str, tuple[str, tuple[str, ...]]] = {
    f"{name}_latest": (
        f"SELECT {{columns}} FROM {{db}}.`{name}` t WHERE t.run_id IN "
        f"(SELECT max(run_id) FROM {{db}}.`analysis_runs` GROUP BY scope, {{run_kernel}})",
        (name, "analysis_runs"),
    )
    for name in ANALYSIS_TABLES
}


def latest_view_parts(table_has_kernel: bool, runs_have_kernel: bool) -> dict[str, str]:
    """The ``{columns}`` and ``{run_kernel}`` of a ``_latest`` view, for a table (and an
    ``analysis_runs``) with or without the ``kernel`` column (a warehouse an older
    version analysed and this one has not yet)."""
    default = f"'{DEFAULT_KERNEL}'"
    return {
        "columns": f"t.* EXCEPT (kernel), coalesce(t.kernel, {default}) AS kernel" if table_has_kernel
        else f"t.*, {default} AS kernel",
        "run_kernel": f"coalesce(kernel, {default})" if runs_have_kernel else default,
    }


def depth_decile_sql(column: str = "conv_depth_norm") -> str:
    """The depth group of a layer as SQL: the decile of ``column`` ([0.0,0.1], (0.1,0.2],
    ...), NULL/NaN → ``(none)``."""
    from filterspark.kernels.coefficients import DEPTH_DECILES, DEPTH_EDGES, NONE_LABEL

    cases = " ".join(f"WHEN {column} <= {edge!r} THEN '{label}'" for edge, label in zip(DEPTH_EDGES, DEPTH_DECILES))
    return f"CASE WHEN {column} IS NULL OR isnan({column}) THEN '{NONE_LABEL}' {cases} ELSE '{DEPTH_DECILES[-1]}' END"


#: ``layer_groups``: every layer of the ``ok`` models with all columns of its model and
#: itself and ``depth_decile``: what ``shifts --by`` / ``--where`` expressions are over.
VIEWS["layer_groups"] = (
    f"SELECT m.*, l.* EXCEPT (model_id), {depth_decile_sql('l.conv_depth_norm')} AS depth_decile "
    "FROM {models} m JOIN {layers} l ON m.model_id = l.model_id WHERE m.status = 'ok'",
    ("models", "layers"),
)

#: Every table the project writes, by name.
ALL_TABLES = {**TABLES, **ANALYSIS_TABLES}
