"""``filterspark quality``: the quality columns of ``layers``/``models`` as readable tables.

With ``--model NAME``: one row per 3x3 layer of that model (shape, filters, sparsity,
variance entropy raw / normalised / clean-normalised, raised flags). Without: the models
ranked by degeneration (:data:`WORST_MODELS_SQL`, the same query README.md documents).
Only SQL over the tables written by extraction; no metric is recomputed here.
"""
from __future__ import annotations

import argparse
import sys

#: Models ranked by degeneration: non-finite layers first, then the share of degenerated
#: 3x3 layers, then the sum of the per-kind shares (a layer can carry several flags).
#: ``{db}`` is the database name. README.md (*Filter quality*) shows it for ``filterdb``.
WORST_MODELS_SQL = """\
SELECT m.name, m.task, m.layers_3x3 AS layers, m.nonfinite_layers AS nonfinite,
       round(m.share_degenerate, 3) AS degenerate, round(m.share_random, 3) AS random,
       round(m.share_sparse, 3) AS sparse, round(m.share_low_variety, 3) AS low_variety,
       round(m.mean_variance_entropy_norm, 3) AS mean_entropy_norm,
       round(m.min_variance_entropy_norm, 3) AS min_entropy_norm,
       round(m.mean_sparsity, 3) AS mean_sparsity,
       l.layer_name AS worst_layer, m.worst_layer_reason AS worst_reason
FROM {db}.models m
LEFT JOIN {db}.layers l ON l.model_id = m.model_id AND l.layer_index = m.worst_layer_index
WHERE m.status = 'ok' AND m.layers_3x3 > 0
ORDER BY m.nonfinite_layers DESC, m.share_degenerate DESC,
         m.share_random + m.share_sparse + m.share_low_variety DESC, m.name"""

#: The 3x3 layers of one model (``{db}``, ``{model_id}``), in forward order.
MODEL_LAYERS_SQL = """\
SELECT layer_index AS layer, layer_name AS name,
       concat(out_channels, 'x', in_channels, CASE WHEN groups > 1 THEN concat('/', groups) ELSE '' END) AS shape,
       n_filters AS n, round(sparsity, 3) AS sparsity, round(variance_entropy, 3) AS entropy,
       round(variance_entropy_norm, 3) AS entropy_norm, round(variance_entropy_clean_norm, 3) AS clean_norm,
       concat_ws(',', CASE WHEN nonfinite_count > 0 THEN concat('nonfinite(', nonfinite_count, ')') END,
                 CASE WHEN degenerate_random THEN 'random' END, CASE WHEN degenerate_sparse THEN 'sparse' END,
                 CASE WHEN degenerate_low_variety THEN 'low_variety' END) AS flags
FROM {db}.layers
WHERE model_id = {model_id} AND kernel_h = 3 AND kernel_w = 3
ORDER BY layer_index"""

DEFAULT_RANKING_LIMIT = 20


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def model_header(m) -> str:
    """One line with a ``models`` row's quality roll-up."""
    worst = "none" if m.worst_layer_index is None else f"layer {m.worst_layer_index} ({m.worst_layer_reason})"
    return (
        f"{m.name}: {m.layers_3x3} 3x3 layers, normalised entropy mean {_num(m.mean_variance_entropy_norm)} "
        f"min {_num(m.min_variance_entropy_norm)}, sparsity mean {_num(m.mean_sparsity)}; degenerate "
        f"{_pct(m.share_degenerate)} (random {_pct(m.share_random)}, sparse {_pct(m.share_sparse)}, "
        f"low-variety {_pct(m.share_low_variety)}), non-finite layers {m.nonfinite_layers}, worst {worst}"
    )


def print_model(spark, database: str, name: str, fmt: str, limit: int | None, out=None) -> int:
    """Print the per-layer table of one model; 2 when there is no such model, 1 when it failed."""
    from filterspark.outputs.formatting import format_rows

    out = out or sys.stdout
    from pyspark.sql import functions as F

    models = spark.table(f"`{database}`.models").where(F.col("name") == name).collect()
    if not models:
        print(f"error: no model named {name!r} in {database}.models", file=sys.stderr)
        return 2
    m = models[0]
    if m.status != "ok":
        print(f"{m.name}: {m.status}: {m.error}", file=out)
        return 1
    df = spark.sql(MODEL_LAYERS_SQL.format(db=f"`{database}`", model_id=int(m.model_id)))
    if limit:
        df = df.limit(limit)
    if fmt == "table":
        print(model_header(m), file=out)
    format_rows(df.columns, [tuple(r) for r in df.collect()], fmt, out)
    other = (m.conv_layers or 0) - (m.layers_3x3 or 0)
    if fmt == "table" and other:
        print(f"{other} other conv layer{'s' if other != 1 else ''} (not 3x3) not listed: 1x1 and non-square layers "
              "carry no quality metrics, k x k ones have theirs in the layers table", file=out)
    return 0


def print_ranking(spark, database: str, fmt: str, limit: int | None, out=None) -> int:
    """Print the models ranked by degeneration (worst first)."""
    from filterspark.outputs.formatting import format_rows

    df = spark.sql(WORST_MODELS_SQL.format(db=f"`{database}`"))
    if limit:
        df = df.limit(limit)
    format_rows(df.columns, [tuple(r) for r in df.collect()], fmt, out)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``filterspark quality`` (``--warehouse``/``--database`` come from cli)."""
    parser.add_argument("--model", help="catalog name of one model: print its layers (default: rank all models)")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help=f"most rows printed (default: {DEFAULT_RANKING_LIMIT} models in the ranking, every layer of one model; 0 = all)",
    )


def run(spark, args: argparse.Namespace) -> int:
    """``filterspark quality`` on ``spark`` (the warehouse's tables already named)."""
    if not spark.catalog.tableExists(f"{args.database}.models"):
        print(f"error: no {args.database}.models table in {args.warehouse} (run extract first)", file=sys.stderr)
        return 2
    if args.model:
        return print_model(spark, args.database, args.model, args.format, args.limit)
    limit = DEFAULT_RANKING_LIMIT if args.limit is None else args.limit
    return print_ranking(spark, args.database, args.format, limit)
