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

from filterspark.sources.catalog import KNOWN_METADATA  # noqa: E402 - the catalog schema owns it

#: Model metadata denormalised into every ``filters`` row, for pruning and grouping.
FILTER_METADATA = ("task", "visual_category", "training_dataset", "family")

WEIGHT_COLUMNS = tuple(f"w{i}" for i in range(9))

#: Layer quality columns (null for layers that are not 3x3).
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

TABLES = {"models": MODELS, "layers": LAYERS, "filters": FILTERS}
PARTITION_COLUMNS = {"filters": FILTERS_PARTITION_COLUMNS}


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
    ]
)

#: One row per principal component of the scope's scaled filters.
PCA_BASIS = StructType(
    [
        *RUN_FIELDS,
        StructField("component", IntegerType(), False),
        *[StructField(f"v{i}", DoubleType()) for i in range(9)],
        StructField("mean", ArrayType(DoubleType())),
        StructField("explained_variance", DoubleType()),
        StructField("explained_variance_ratio", DoubleType()),
        StructField("n_filters", LongType()),
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
    ]
)

ANALYSIS_TABLES = {
    "pca_basis": PCA_BASIS,
    "coefficient_histograms": COEFFICIENT_HISTOGRAMS,
    "coefficient_stats": COEFFICIENT_STATS,
    "shifts": SHIFTS,
    "model_shifts": MODEL_SHIFTS,
    "coefficients": COEFFICIENTS,
    "analysis_runs": ANALYSIS_RUNS,
}

#: ``<table>_latest``: the rows of the latest complete run of each scope. Registered by
#: ``registry.register_tables`` (views are session-scoped without a metastore) whenever
#: the tables they read exist. ``{db}`` is the quoted schema (``Warehouse.schema_sql``).
VIEWS: dict[str, tuple[str, tuple[str, ...]]] = {
    f"{name}_latest": (
        f"SELECT t.* FROM {{db}}.`{name}` t WHERE t.run_id IN "
        f"(SELECT max(run_id) FROM {{db}}.`analysis_runs` GROUP BY scope)",
        (name, "analysis_runs"),
    )
    for name in ANALYSIS_TABLES
}

#: Every table the project writes, by name.
ALL_TABLES = {**TABLES, **ANALYSIS_TABLES}
