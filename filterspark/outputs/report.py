"""``filterspark report``: every figure and the summary tables as one static HTML page.

``<out>/index.html`` with its PNG figures in ``<out>/figures/`` (relative links), or, with
``--inline``, the PNGs embedded as data URIs in the one file. No script, no stylesheet or
font from the network: the page opens offline in any browser. The figures come from one
analysis run (default: the latest of scope ``all``), the quality figures and tables from
``models``/``layers``.
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
from PIL import Image
from matplotlib.figure import Figure

from filterspark.delta.registry import register_tables
from filterspark.delta.warehouse import WarehouseOptions
from filterspark.errors import ReportError
from filterspark.outputs import plots
from filterspark.outputs import report_data as rd
from filterspark.pipelines.analyze.regroup import BASIS_NOTE, ShiftsOptions, shifts_by

#: Rows shown in the long summary tables.
TABLE_LIMIT = 200
TOP_SHIFTS = 20

MODELS_SQL = """\
SELECT name, task, visual_category, family, format, status, filters_3x3, layers_3x3,
       round(share_degenerate, 3) AS degenerate, worst_layer_reason AS worst, error
FROM {db}.models ORDER BY status = 'ok', share_degenerate DESC, name"""

DEGENERATED_LAYERS_SQL = """\
SELECT m.name AS model, l.layer_index AS layer, l.layer_name AS name,
       concat(l.out_channels, 'x', l.in_channels) AS shape, l.n_filters AS filters,
       round(l.sparsity, 3) AS sparsity, round(l.variance_entropy_norm, 3) AS entropy_norm,
       concat_ws(',', CASE WHEN l.degenerate_random THEN 'random' END,
                 CASE WHEN l.degenerate_sparse THEN 'sparse' END,
                 CASE WHEN l.degenerate_low_variety THEN 'low_variety' END) AS flags
FROM {db}.layers l JOIN {db}.models m ON m.model_id = l.model_id
WHERE m.status = 'ok' AND (l.degenerate_random OR l.degenerate_sparse OR l.degenerate_low_variety)
ORDER BY m.name, l.layer_index"""

LARGEST_SHIFTS_SQL = """\
SELECT dimension, group_a, group_b, round(shift, 4) AS shift, n_a, n_b, small
FROM {db}.shifts WHERE run_id = {run_id} AND group_a < group_b AND shift IS NOT NULL
ORDER BY small, shift DESC, dimension, group_a, group_b"""

NEIGHBOURS_SQL = """\
SELECT name AS model, rank, neighbour_name AS neighbour, round(shift, 4) AS shift, neighbour_n_filters
FROM {db}.model_neighbours WHERE run_id = {run_id} AND model_id IN ({ids})
ORDER BY name, rank"""

MODEL_SHIFTS_SQL = """\
SELECT name, round(shift, 4) AS shift, n_filters, n_rest, small
FROM {db}.model_shifts WHERE run_id = {run_id} AND dimension = 'all' AND shift IS NOT NULL
ORDER BY shift DESC, name"""

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
figure{margin:1.2em 0;break-inside:avoid}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#555}.meta{color:#555;font-size:14px}nav li{font-size:14px}
"""


@dataclass
class ReportOptions(WarehouseOptions):
    """What the report draws, from which warehouse, into which directory."""

    out: str = "report"
    run_id: str | None = None
    scope: str = "all"
    models: tuple[str, ...] = ()  # filter grids of these models (default: healthiest and most degenerated)
    group_by: tuple[str, ...] = (rd.HEALTH, "task")  # model groups of the depth box plots
    shifts_by: tuple[str, ...] = ()  # any-grouping shift heatmaps (SQL expressions, as shifts --by)
    inline: bool = False
    kernels: tuple[str, ...] = ()  # k x k bases drawn besides 3x3 (default: every kernel with a run of scope)

    def __post_init__(self) -> None:
        from filterspark.kernels.shapes import kernel_name, parse_kernel

        self.kernels = tuple(kernel_name(parse_kernel(k)) for k in self.kernels)
        super().__post_init__()


@dataclass
class FigureEntry:
    name: str  # file stem and HTML id
    title: str
    caption: str
    source: str  # the table(s) it is drawn from
    seconds: float = 0.0  # loading its data (Spark) and rendering it


@dataclass
class ReportResult:
    path: Path
    figures: list[FigureEntry] = field(default_factory=list)
    run: dict | None = None
    bytes: int = 0  # index.html + figures
    seconds: float = 0.0

    def lines(self) -> list[str]:
        run = f"run {self.run['run_id']} (scope {self.run['scope']})" if self.run else "no analysis run"
        return [
            f"report: {self.path}  ({len(self.figures)} figures, {self.bytes / 1024:.0f} KiB, {self.seconds:.1f} s)",
            f"from {run}",
            "figures: " + ", ".join(f.name for f in self.figures),
            "slowest: " + ", ".join(f"{f.name} {f.seconds:.1f} s" for f in sorted(self.figures, key=lambda f: -f.seconds)[:3]),
        ]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _sql(spark, query: str, database: str, **values) -> pd.DataFrame:
    """Run one of the queries above (``{db}``, ``{name}``: values inlined as SQL literals)."""
    literals = {k: rd.sql_literal(v) for k, v in values.items()}
    return spark.sql(query.format(db=f"`{database}`", **literals)).toPandas()


def _grid_models(spark, database: str, names: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(model_id, name, why) of the models whose filters are drawn (one small query)."""
    rows = spark.sql(
        f"SELECT model_id, name, share_degenerate, filters_3x3 FROM `{database}`.models "
        "WHERE status = 'ok' AND layers_3x3 > 0"
    ).collect()
    if names:
        by_name = {r.name: r for r in rows}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ReportError(f"no ok model with 3x3 layers named {', '.join(missing)}")
        return [(by_name[n].model_id, n, "requested") for n in names]
    if not rows:
        return []
    share = lambda r: r.share_degenerate or 0.0  # noqa: E731
    best = min(rows, key=lambda r: (share(r), -(r.filters_3x3 or 0), r.name))
    worst = min(rows, key=lambda r: (-share(r), r.name))
    out = [(best.model_id, best.name, "the least degenerated model")]
    if worst.name != best.name and share(worst) > 0:
        out.append((worst.model_id, worst.name, f"the most degenerated model ({share(worst):.0%} of its 3x3 layers)"))
    return out


def build_figures(spark, options: ReportOptions, run: dict | None):
    """Yield ``(FigureEntry, matplotlib Figure)`` for every figure of the report."""
    db = options.database
    if run is not None:
        rid = run["run_id"]
        basis_df = rd.run_frame(spark, db, "pca_basis", rid)
        yield FigureEntry("pca_basis", "PCA basis", f"The nine principal components of the {run['n_filters']:,} scaled "
                          "3x3 filters, with their explained-variance ratios.", "pca_basis"), plots.pca_basis_figure(basis_df)
        yield FigureEntry("explained_variance", "Explained variance", "Explained-variance ratio per component and "
                          "cumulative.", "pca_basis"), plots.explained_variance_figure(basis_df)
        hist2d = rd.coefficient_pair_histogram(spark, options.tables, run, rd.basis_from_frame(basis_df))
        yield FigureEntry("coefficient_density_c0_c1", "Density of c0 vs c1", "2-D histogram of the first two "
                          "coefficients (computed by the executors), log colour scale.", "filters, pca_basis"), \
            plots.coefficient_density(hist2d)
        hists = rd.run_frame(spark, db, "coefficient_histograms", rid,
                             "dimension, group_value, component, bin, bin_lo, bin_hi, probability",
                             f"component < {plots.RIDGE_COMPONENTS}")
        shifts = rd.run_frame(spark, db, "shifts", rid, "dimension, group_a, group_b, shift")
        for dim in run["dimensions"]:
            yield FigureEntry(f"ridge_{_slug(dim)}", f"Coefficient distributions by {dim}", "Normalised histograms of "
                              f"the first {plots.RIDGE_COMPONENTS} components' coefficients per group.",
                              "coefficient_histograms"), plots.ridge_plot(hists, dim)
        for dim in run["dimensions"]:
            yield FigureEntry(f"shift_heatmap_{_slug(dim)}", f"Shifts between groups of {dim}", "D(P,Q) per pair of "
                              "groups, ordered by mean shift (depth deciles in natural order).", "shifts"), \
                plots.shift_heatmap(shifts, dim)
        yield FigureEntry("shift_boxplot", "Pairwise shifts per dimension", "Each unordered pair of groups once.",
                          "shifts"), plots.shift_boxplot(shifts)
        for expr in options.shifts_by:
            rows = shifts_by(spark, ShiftsOptions(warehouse=options.warehouse, database=db,
                                                  catalog_name=options.catalog_name, by=expr, run_id=rid)).rows
            frame = pd.DataFrame([{"dimension": expr, **r} for r in rows], columns=["dimension", "group_a", "group_b", "shift"])
            yield FigureEntry(f"shift_heatmap_by_{_slug(expr)}", f"Shifts between groups of {expr}",
                              f"D(P,Q) per pair of groups of the expression, summed from the run's per-layer "
                              f"histograms ({BASIS_NOTE}).", "layer_histograms"), plots.shift_heatmap(frame, expr)
    for other in rd.kernel_runs(spark, db, run["scope"] if run else options.scope, options.kernels):
        kernel = other["kernel"]
        basis_df = rd.run_frame(spark, db, "pca_basis", other["run_id"])
        yield FigureEntry(f"pca_basis_{kernel}", f"PCA basis of the {kernel} kernels", f"The {len(basis_df)} principal "
                          f"components of the {other['n_filters']:,} scaled {kernel} kernels (run {other['run_id']}), "
                          "with their explained-variance ratios.", "pca_basis"), \
            plots.pca_basis_figure(basis_df)
        yield FigureEntry(f"explained_variance_{kernel}", f"Explained variance of the {kernel} basis",
                          "Explained-variance ratio per component and cumulative.", "pca_basis"), \
            plots.explained_variance_figure(basis_df, title=f"Explained variance of the {kernel} PCA basis")
    layers = rd.layer_rows(spark, db)
    groups = rd.model_groups(spark, db, (rd.HEALTH, *options.group_by))
    yield FigureEntry("quality_scatter", "Layer entropy vs. sparsity", "Every 3x3 layer of the ok models; a model is "
                      "'degenerated' when any of its 3x3 layers is flagged.", "layers, models"), \
        plots.entropy_sparsity_scatter(rd.with_group(layers, groups, rd.HEALTH))
    for group_by in options.group_by:
        yield FigureEntry(f"quality_depth_{_slug(group_by)}", f"Normalised entropy per depth decile by {group_by}",
                          "Box plots of the layers' normalised variance entropy.", "layers, models"), \
            plots.depth_boxplot(rd.with_group(layers, groups, group_by),
                                title=f"Normalised variance entropy per depth decile, by {group_by}")
    for model_id, name, why in _grid_models(spark, db, options.models):
        filters = rd.model_filters(spark, db, model_id)
        yield FigureEntry(f"filters_{_slug(name)}", f"Filters of {name}", f"{why[0].upper()}{why[1:]}; up to "
                          f"{rd.MAX_TILES_PER_LAYER} filters per layer, each layer scaled by its peak.", "filters"), \
            plots.filter_grid(filters, rd.model_layers(spark, db, model_id), title=f"3x3 filters of {name}")


def _table_html(df: pd.DataFrame, limit: int | None = TABLE_LIMIT) -> str:
    if df.empty:
        return "<p><em>none</em></p>"
    note = f"<p class=meta>first {limit} of {len(df)} rows</p>" if limit and len(df) > limit else ""
    shown = df.head(limit) if limit else df
    shown = shown.astype(object).where(shown.notna(), "")  # None and NaN as empty cells
    return shown.to_html(index=False, border=0, escape=True) + note


def _img(entry: FigureEntry, png: bytes, out: Path, inline: bool) -> str:
    width, height = Image.open(io.BytesIO(png)).size
    if inline:
        src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    else:
        (out / "figures" / f"{entry.name}.png").write_bytes(png)
        src = f"figures/{entry.name}.png"
    return f'<img src="{src}" alt="{html.escape(entry.title)}" width="{width}" height="{height}">'


def build_report(spark, options: ReportOptions, on_figure: Callable[[FigureEntry, Figure], None] | None = None) -> ReportResult:
    """Write the report; return where, which figures, its size and build time.

    ``on_figure(entry, figure)`` is called for each figure as it is drawn (the notebook
    shows them). A missing ``models`` table, or a requested run or scope that does not
    exist, is a ValueError raised before anything is written.
    """
    started = time.perf_counter()
    db = options.database
    tables = register_tables(spark, options.tables)
    if "models" not in tables:
        raise ReportError(f"no {db}.models table in {options.warehouse}: run the extraction first")
    if "analysis_runs" in tables:  # (a registration left from another warehouse does not count)
        run = rd.analysis_run(spark, db, options.run_id, options.scope)
    elif options.run_id or options.scope != "all":
        raise ReportError(f"no analysis run in {options.warehouse}: run the analysis first")
    else:
        run = None
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "figures").glob("*.png"):  # from an earlier build
        stale.unlink()
    if not options.inline:
        (out / "figures").mkdir(exist_ok=True)
    result = ReportResult(path=out / "index.html", run=run)

    figures_html = []
    tick = time.perf_counter()
    for entry, fig in build_figures(spark, options, run):
        png = plots.to_png(fig)
        entry.seconds = time.perf_counter() - tick
        if on_figure is not None:
            on_figure(entry, fig)
        result.figures.append(entry)
        figures_html.append(
            f'<figure id="{entry.name}"><h3>{html.escape(entry.title)}</h3>{_img(entry, png, out, options.inline)}'
            f"<figcaption>{html.escape(entry.caption)} <span class=meta>(from {html.escape(entry.source)})</span>"
            "</figcaption></figure>"
        )
        tick = time.perf_counter()

    sections = [("Models", _table_html(_sql(spark, MODELS_SQL, db))),
                ("Degenerated layers", _table_html(_sql(spark, DEGENERATED_LAYERS_SQL, db)))]
    if run is not None:
        sections += [
            ("Largest shifts between groups",
             "<p class=meta>Pairs of well-populated groups first: <code>small</code> marks a pair with a group of "
             f"fewer than {run['min_group_filters']:,} filters, whose histograms are noisy.</p>"
             + _table_html(_sql(spark, LARGEST_SHIFTS_SQL, db, run_id=run["run_id"]), TOP_SHIFTS)),
            ("Models farthest from the rest of the population",
             _table_html(_sql(spark, MODEL_SHIFTS_SQL, db, run_id=run["run_id"]), TOP_SHIFTS)),
        ]
        drawn = [m for m, _, _ in _grid_models(spark, db, options.models)]
        if drawn and "model_neighbours" in tables:
            sections.append((
                "Nearest models of the models drawn",
                "<p class=meta>By the shift between the two models' whole coefficient histograms "
                "(<code>model_neighbours</code>; <code>filterspark neighbours --model NAME</code>).</p>"
                + _table_html(_sql(spark, NEIGHBOURS_SQL.replace("{ids}", ",".join(str(int(m)) for m in drawn)), db,
                                 run_id=run["run_id"]))))
        about = (f"analysis run <code>{html.escape(run['run_id'])}</code>, scope <code>{html.escape(run['scope'])}</code>: "
                 f"{run['n_filters']:,} filters of {run['n_models']} models, {run['bins']} bins, dimensions "
                 f"{html.escape(', '.join(run['dimensions']))}")
    else:
        about = "no analysis run in this warehouse (run <code>filterspark analyze</code> for the PCA and shift figures)"
    nav = "".join(f'<li><a href="#{f.name}">{html.escape(f.title)}</a></li>' for f in result.figures)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>filterspark report</title>"
        f"<style>{_STYLE}</style></head><body><h1>filterspark report</h1>"
        f"<p class=meta>warehouse <code>{html.escape(str(options.warehouse))}</code>, database "
        f"<code>{html.escape(db)}</code>; {about}; generated {now}.</p>"
        + "".join(f"<h2>{html.escape(title)}</h2>{body}" for title, body in sections)
        + f"<h2>Figures</h2><nav><ul>{nav}</ul></nav>"
        + "".join(figures_html)
        + "</body></html>\n"
    )
    result.path.write_text(page, encoding="utf-8")
    result.bytes = result.path.stat().st_size + sum(p.stat().st_size for p in (out / "figures").glob("*.png"))
    result.seconds = time.perf_counter() - started
    return result


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``filterspark report`` (``--warehouse``/``--database`` come from cli)."""
    parser.add_argument("--out", default="report", help="output directory (default: ./report)")
    parser.add_argument("--run-id", help="analysis run to draw (default: the latest run of --scope)")
    parser.add_argument("--scope", default="all", help="scope of the default run (default: all)")
    parser.add_argument("--model", action="append", default=[], help="draw this model's filters (repeatable; "
                        "default: the least and the most degenerated model)")
    parser.add_argument("--group-by", default=",".join(ReportOptions.group_by), help="model groups of the depth "
                        "box plots: health, a column of models or a metadata key (comma-separated)")
    parser.add_argument("--shifts-by", action="append", default=[], help="also draw the shift heatmap of this "
                        "grouping (a SQL expression, as filterspark shifts --by; repeatable)")
    parser.add_argument("--inline", action="store_true", help="embed the PNGs in index.html (one file)")
    parser.add_argument("--kernel", action="append", default=[], help="also draw the basis of this kernel shape's "
                        "latest run (KxK, repeatable; default: every kernel other than 3x3 with a run of --scope)")


def run(spark, args: argparse.Namespace) -> int:
    """``filterspark report`` on ``spark`` (the warehouse's tables already named)."""
    options = ReportOptions(
        warehouse=args.warehouse, out=args.out, database=args.database, catalog_name=args.catalog_name,
        run_id=args.run_id, scope=args.scope,
        models=tuple(args.model), group_by=tuple(g.strip() for g in args.group_by.split(",") if g.strip()),
        shifts_by=tuple(args.shifts_by), inline=args.inline, kernels=tuple(args.kernel),
    )
    result = build_report(spark, options)
    for line in result.lines():
        print(line)
    return 0
