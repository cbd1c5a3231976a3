"""Figures (filterspark.outputs.plots), their Spark aggregates (report_data) and the HTML report.

Each plot is drawn from the demo-zoo tables, rendered to PNG, and the data the figure
shows (image arrays, line and point coordinates, box extents) is compared with the rows
of the table it was drawn from, read here with independent SQL. The report is opened
in headless Chromium, which must load every image.
"""
from __future__ import annotations

import base64
import html.parser
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from filterspark.outputs import plots
from filterspark.outputs import report_data as rd
from filterspark.delta.registry import register_tables
from filterspark.delta.warehouse import Warehouse

DEPTH = ["[0.0,0.1]"] + [f"({k / 10:.1f},{(k + 1) / 10:.1f}]" for k in range(1, 10)]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def analysed(spark, analyzed_warehouse):
    warehouse = analyzed_warehouse["warehouse"]
    register_tables(spark, warehouse)
    run = rd.analysis_run(spark, "filterdb")
    assert run["run_id"] == analyzed_warehouse["analysis"].run_id
    return warehouse, run


@pytest.fixture()
def tables(spark, analysed):
    """Re-point ``filterdb.*`` at the analysed warehouse (other modules share the session)."""
    register_tables(spark, analysed[0])
    return analysed


def sql(spark, query: str, **values) -> pd.DataFrame:
    """``{name}`` placeholders filled with SQL literals."""
    return spark.sql(query.format(**{k: rd.sql_literal(v) for k, v in values.items()})).toPandas()


def png_ok(fig) -> bytes:
    """Render; the PNG must decode and not be blank."""
    data = plots.to_png(fig)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
    assert min(pixels.shape) > 100 and pixels.std() > 5
    return data


def image_of(ax) -> np.ndarray:
    arr = ax.images[0].get_array()
    return np.ma.filled(np.ma.asarray(arr).astype(np.float64), np.nan)


def tick_labels(ax, axis: str) -> list[str]:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks]


# --- figure data == table rows ------------------------------------------------------------------


def test_shift_heatmaps_equal_shift_rows(spark, tables):
    _, run = tables
    rows = sql(spark, "SELECT dimension, group_a, group_b, shift FROM filterdb.shifts WHERE run_id = {r}", r=run["run_id"])
    assert set(rows["dimension"]) == set(run["dimensions"]) and len(run["dimensions"]) == 6
    for dim in run["dimensions"]:
        fig = plots.shift_heatmap(rows, dim)
        png_ok(fig)
        ax = fig.axes[0]
        order_x, order_y = tick_labels(ax, "x"), tick_labels(ax, "y")
        assert order_x == order_y
        mine = rows[rows["dimension"] == dim]
        assert set(order_x) == set(mine["group_a"]) | set(mine["group_b"])
        expected = np.zeros((len(order_x), len(order_x)))
        lookup = {(a, b): s for a, b, s in zip(mine["group_a"], mine["group_b"], mine["shift"])}
        for i, a in enumerate(order_y):
            for j, b in enumerate(order_x):
                if a != b:
                    expected[i, j] = lookup[(a, b)]
        np.testing.assert_array_equal(image_of(ax), expected)
        if dim == "depth_decile":
            assert order_x == [d for d in DEPTH if d in order_x]
        else:
            means = mine.groupby("group_a")["shift"].mean()
            assert list(means.loc[order_x]) == sorted(means.loc[order_x])


def test_shift_boxplot_points_are_the_unordered_pairs(spark, tables):
    _, run = tables
    rows = sql(spark, "SELECT dimension, group_a, group_b, shift FROM filterdb.shifts WHERE run_id = {r}", r=run["run_id"])
    fig = plots.shift_boxplot(rows)
    png_ok(fig)
    ax = fig.axes[0]
    dims = tick_labels(ax, "x")
    assert dims == sorted(run["dimensions"])
    for k, dim in enumerate(dims):
        points = ax.collections[k]
        assert points.get_gid() == f"pairs|{dim}"
        mine = rows[(rows["dimension"] == dim) & (rows["group_a"] < rows["group_b"])]
        n = len(set(mine["group_a"]) | set(mine["group_b"]))
        assert len(mine) == n * (n - 1) // 2
        np.testing.assert_array_equal(np.sort(points.get_offsets()[:, 1]), np.sort(mine["shift"].to_numpy()))


def test_pca_basis_and_explained_variance(spark, tables):
    _, run = tables
    basis = sql(spark, "SELECT * FROM filterdb.pca_basis WHERE run_id = {r} ORDER BY component", r=run["run_id"])
    fig = plots.pca_basis_figure(basis)
    png_ok(fig)
    images = [ax for ax in fig.axes if ax.get_gid() and ax.get_gid().startswith("component-")]
    assert len(images) == 9
    for k, ax in enumerate(images):
        np.testing.assert_array_equal(image_of(ax), basis.loc[k, [f"v{i}" for i in range(9)]].to_numpy(float).reshape(3, 3))
        assert ax.get_title() == f"c{k}: {basis.loc[k, 'explained_variance_ratio']:.1%}"
    fig = plots.explained_variance_figure(basis)
    png_ok(fig)
    line = next(li for li in fig.axes[0].lines if li.get_gid() == "cumulative")
    np.testing.assert_allclose(line.get_ydata(), np.cumsum(run["explained_variance_ratio"]), rtol=1e-12)
    assert line.get_ydata()[-1] == pytest.approx(1.0)


def test_ridge_plot_lines_are_the_histograms(spark, tables):
    _, run = tables
    hist = sql(spark, "SELECT * FROM filterdb.coefficient_histograms WHERE run_id = {r} AND component < 6", r=run["run_id"])
    for dim in ("task", "depth_decile"):
        fig = plots.ridge_plot(hist, dim)
        png_ok(fig)
        groups = tick_labels(fig.axes[0], "y")
        mine = hist[hist["dimension"] == dim]
        assert sorted(groups) == sorted(set(mine["group_value"]))
        if dim == "depth_decile":
            assert groups == [d for d in DEPTH if d in groups]
        lines = {li.get_gid(): li for ax in fig.axes for li in ax.lines}
        assert len(lines) == 6 * len(groups)
        for comp in range(6):
            panel = mine[mine["component"] == comp]
            peak = panel["probability"].max()
            for i, g in enumerate(groups):
                rows = panel[panel["group_value"] == g].sort_values("bin")
                assert len(rows) == run["bins"]
                line = lines[f"ridge|{comp}|{g}"]
                np.testing.assert_allclose(line.get_xdata(), (rows["bin_lo"] + rows["bin_hi"]) / 2)
                np.testing.assert_allclose(line.get_ydata(), i + 1.6 * rows["probability"].to_numpy() / peak)


def test_coefficient_density_is_computed_in_spark_and_matches_the_histograms(spark, tables):
    warehouse, run = tables
    basis = sql(spark, "SELECT * FROM filterdb.pca_basis WHERE run_id = {r}", r=run["run_id"])
    cells = rd.coefficient_pair_histogram(spark, Warehouse(warehouse), run, rd.basis_from_frame(basis))
    bins = run["bins"]
    assert len(cells) < bins * bins and cells["count"].min() > 0  # only non-empty cells travel
    assert cells["count"].sum() == run["n_filters"]
    fig = plots.coefficient_density(cells)
    png_ok(fig)
    counts = image_of(fig.axes[0])
    counts = np.nan_to_num(counts)  # empty cells are masked
    assert counts.shape == (bins, bins)
    np.testing.assert_array_equal(counts[cells["iy"], cells["ix"]], cells["count"])
    # the marginals are exactly the run's published 70-bin counts of the whole scope
    hist = sql(spark, "SELECT component, bin, count FROM filterdb.coefficient_histograms "
               "WHERE run_id = {r} AND dimension = 'all' AND component < 2 ORDER BY component, bin", r=run["run_id"])
    c0 = hist[hist["component"] == 0]["count"].to_numpy()
    c1 = hist[hist["component"] == 1]["count"].to_numpy()
    np.testing.assert_array_equal(counts.sum(axis=0), c0)
    np.testing.assert_array_equal(counts.sum(axis=1), c1)
    x0, x1, y0, y1 = fig.axes[0].images[0].get_extent()
    assert (x0, x1, y0, y1) == (run["range_lo"], run["range_hi"], run["range_lo"], run["range_hi"])


def test_pair_counts_equal_numpy_histograms():
    rng = np.random.default_rng(1)
    c = rng.normal(size=(5000, 2))
    edges = np.linspace(c.min(), c.max(), 31)
    counts = rd.pair_counts(c, edges, edges)
    np.testing.assert_array_equal(counts.sum(axis=0), np.histogram(c[:, 0], edges)[0])
    np.testing.assert_array_equal(counts.sum(axis=1), np.histogram(c[:, 1], edges)[0])


def test_quality_figures_show_every_3x3_layer(spark, tables):
    layers = rd.quality_layers(spark, "filterdb")
    direct = sql(spark, """SELECT m.name, l.layer_index, l.sparsity, l.variance_entropy_norm, m.share_degenerate, l.conv_depth_norm
                           FROM filterdb.layers l JOIN filterdb.models m USING (model_id)
                           WHERE m.status = 'ok' AND l.kernel_h = 3 AND l.kernel_w = 3""")
    assert len(layers) == len(direct) > 20
    assert set(layers["group"]) == {"degenerated", "healthy"}
    fig = plots.entropy_sparsity_scatter(layers)
    png_ok(fig)
    key = lambda df: sorted(zip(df["sparsity"].round(12), df["variance_entropy_norm"].round(12)))  # noqa: E731
    for points in fig.axes[0].collections:
        group = points.get_gid().split("|", 1)[1]
        degenerated = direct["share_degenerate"] > 0
        expected = direct[degenerated if group == "degenerated" else ~degenerated].dropna(subset=["sparsity"])
        got = points.get_offsets()
        assert sorted(zip(np.round(got[:, 0], 12), np.round(got[:, 1], 12))) == key(expected)

    by_task = rd.quality_layers(spark, "filterdb", "task")
    fig = plots.depth_boxplot(by_task)
    png_ok(fig)
    boxes = [p for p in fig.axes[0].patches if (p.get_gid() or "").startswith("box|")]
    assert boxes
    for box in boxes:
        _, decile, task = box.get_gid().split("|")
        values = by_task.loc[(by_task["depth_decile"] == decile) & (by_task["group"] == task), "variance_entropy_norm"]
        y = box.get_path().vertices[:, 1]
        q1, q3 = np.percentile(values.dropna(), [25, 75])
        assert (y.min(), y.max()) == pytest.approx((q1, q3))
        depth = direct.merge(by_task[["name", "layer_index", "depth_decile"]], on=["name", "layer_index"])
        for d, x in zip(depth["depth_decile"], depth["conv_depth_norm"]):
            assert d == DEPTH[int(np.searchsorted(np.arange(1, 10) / 10, x, side="left"))]
    ticks = tick_labels(fig.axes[0], "x")
    assert ticks == [d for d in DEPTH if d in ticks]


def test_filter_grid_reads_one_model_and_scales_each_layer_by_its_peak(spark, tables):
    model = spark.sql("SELECT model_id, name FROM filterdb.models WHERE name = 'digits-cnn-pt'").first()
    model = model or spark.sql("SELECT model_id, name FROM filterdb.models WHERE status = 'ok' AND layers_3x3 > 1 "
                               "ORDER BY name").first()
    filters = rd.model_filters(spark, "filterdb", model.model_id, max_per_layer=40)
    layers = rd.model_layers(spark, "filterdb", model.model_id)
    assert (filters.groupby("layer_index").size() <= 40).all()
    fig = plots.filter_grid(filters, layers, title=model.name)
    png_ok(fig)
    everything = sql(spark, "SELECT * FROM filterdb.filters WHERE model_id = {m}", m=int(model.model_id))
    w = [f"w{i}" for i in range(9)]
    axes = {ax.get_gid(): ax for ax in fig.axes if (ax.get_gid() or "").startswith("layer-")}
    assert set(axes) == {f"layer-{i}" for i in everything["layer_index"].unique()}
    for index, rows in everything.groupby("layer_index"):
        rows = rows.sort_values("filter_index")
        peak = np.abs(rows[w].to_numpy(np.float64)).max()
        shown = rows[rows["filter_index"] < 40][w].to_numpy(np.float64) / peak
        mosaic = image_of(axes[f"layer-{index}"])
        cols = plots.mosaic_columns(len(shown))
        for k, filt in enumerate(shown):
            r, c = divmod(k, cols)
            np.testing.assert_allclose(mosaic[4 * r : 4 * r + 3, 4 * c : 4 * c + 3], filt.reshape(3, 3), rtol=1e-6)
        assert np.nanmax(np.abs(mosaic)) <= 1.0 + 1e-12
        title = axes[f"layer-{index}"].get_title()
        if len(rows) > 40:
            assert f"{len(shown)} of {len(rows)} filters" in title
        else:
            assert f"{len(rows)} filters" in title and " of " not in title


# --- the report ---------------------------------------------------------------------------------


class _Images(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.figures: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if tag == "figure":
            self.figures.append(a["id"])


def expected_figures(run: dict, result) -> list[str]:
    dims = run["dimensions"]
    grids = [f.name for f in result.figures if f.name.startswith("filters_")]
    assert len(grids) == 2
    return (["pca_basis", "explained_variance", "coefficient_density_c0_c1"] + [f"ridge_{d}" for d in dims]
            + [f"shift_heatmap_{d}" for d in dims] + ["shift_boxplot", "shift_heatmap_by_format", "quality_scatter",
                                                      "quality_depth_health",
                                                      "quality_depth_task"] + grids)


@pytest.fixture(scope="module")
def report(spark, analysed, tmp_path_factory):
    from filterspark.outputs.report import ReportOptions, build_report

    warehouse, run = analysed
    out = tmp_path_factory.mktemp("report") / "report"
    result = build_report(spark, ReportOptions(warehouse=warehouse, out=str(out), shifts_by=("format",)))
    print("\n".join(result.lines()))
    return out, result, run


def test_report_contains_every_figure_and_the_summary_tables(spark, report, tables):
    out, result, run = report
    page = (out / "index.html").read_text()
    parser = _Images()
    parser.feed(page)
    names = expected_figures(run, result)
    assert parser.figures == names == [f.name for f in result.figures]
    assert parser.srcs == [f"figures/{n}.png" for n in names]
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{n}.png" for n in names)
    for src in parser.srcs:
        with Image.open(out / src) as im:
            im.load()
            assert im.size[0] > 200
    assert result.bytes == (out / "index.html").stat().st_size + sum(p.stat().st_size for p in (out / "figures").iterdir())
    for name in sql(spark, "SELECT name FROM filterdb.models")["name"]:
        assert f"<td>{name}</td>" in page
    top = sql(spark, "SELECT dimension, group_a, group_b, shift FROM filterdb.shifts WHERE run_id = {r} AND group_a < group_b "
              "AND NOT small ORDER BY shift DESC LIMIT 1", r=run["run_id"]).iloc[0]  # well-populated pairs first
    largest = page.split("<h2>Largest shifts between groups</h2>", 1)[1]
    first_row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", largest, re.S).group(1)
    assert re.findall(r"<td>(.*?)</td>", first_row)[:4] == [top["dimension"], top["group_a"], top["group_b"], str(round(top["shift"], 4))]
    # the drawn models' nearest models, as model_neighbours has them
    nearest = page.split("<h2>Nearest models of the models drawn</h2>", 1)[1].split("<h2>", 1)[0]
    drawn = [f.name.removeprefix("filters_") for f in result.figures if f.name.startswith("filters_")]
    expected = sql(spark, "SELECT name, neighbour_name FROM filterdb.model_neighbours WHERE run_id = {r} ORDER BY name, rank",
                   r=run["run_id"])
    expected = expected[expected["name"].isin(drawn)]
    assert len(expected) > 0 and re.findall(r"<tr>\s*<td>[^<]*</td>\s*<td>\d+</td>\s*<td>([^<]*)</td>", nearest) == list(expected["neighbour_name"])
    flagged = sql(spark, "SELECT count(*) AS n FROM filterdb.layers WHERE degenerate_random OR degenerate_sparse "
                  "OR degenerate_low_variety")["n"][0]
    degenerated = page.split("<h2>Degenerated layers</h2>", 1)[1].split("<h2>", 1)[0]
    assert degenerated.count("<tr>") == flagged > 0  # body rows (the header row has a style)
    assert "http://" not in page and "https://" not in page  # nothing to fetch: opens offline


CHECK_SCRIPT = """<script>window.addEventListener('load', function () {
  var r = [];
  for (const im of document.images) r.push((im.complete && im.naturalWidth > 0 ? 'ok ' : 'broken ') + im.getAttribute('src').slice(0, 60));
  var p = document.createElement('pre'); p.id = 'imgcheck'; p.textContent = r.join('\\n'); document.body.appendChild(p);
});</script>"""


def chromium_check(report_dir: Path, tmp: Path) -> tuple[list[str], Path]:
    """Open the report (with a load-time image check added) in headless Chromium:
    the per-image verdicts, and a screenshot of the page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium package is not installed (apt-get install -y chromium)")
    page = (report_dir / "index.html").read_text().replace("</body>", CHECK_SCRIPT + "</body>")
    check = report_dir / "_check.html"
    check.write_text(page)
    shot = tmp / f"{report_dir.name}-screenshot.png"
    proc = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1280,2400",
         "--virtual-time-budget=10000", f"--screenshot={shot}", "--dump-dom", check.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    check.unlink()
    dom = re.search(r'<pre id="imgcheck">(.*?)</pre>', proc.stdout, re.S)
    assert dom, f"no image check in Chromium's DOM (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return dom.group(1).splitlines(), shot


def test_report_opens_in_headless_chromium_with_every_image(report, tmp_path):
    out, result, _ = report
    verdicts, shot = chromium_check(out, tmp_path)
    assert verdicts == [f"ok figures/{f.name}.png"[:63] for f in result.figures]
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1280) and pixels.std() > 10
    print(f"screenshot: {shot}")

    broken = tmp_path / "broken"  # the check must fail when an image is missing
    shutil.copytree(out, broken)
    victim = result.figures[3].name
    (broken / "figures" / f"{victim}.png").unlink()
    verdicts, _ = chromium_check(broken, tmp_path)
    assert [v for v in verdicts if not v.startswith("ok ")] == [f"broken figures/{victim}.png"]


def test_cli_inline_report_without_an_analysis_run(spark, demo_warehouse, analysed, tmp_path, capsys):
    """The CLI on the extracted-only warehouse (no analysis tables; the analysed one was
    registered earlier in this session): quality figures only, PNGs inlined, one file."""
    from filterspark.cli import main

    out = tmp_path / "inline"
    assert main(["report", "--warehouse", demo_warehouse["warehouse"], "--out", str(out), "--inline",
                 "--group-by", "family", "--model", "digits-cnn-pt"]) == 0
    printed = capsys.readouterr().out
    assert "from no analysis run" in printed and "(3 figures," in printed
    page = (out / "index.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert parser.figures == ["quality_scatter", "quality_depth_family", "filters_digits-cnn-pt"]
    assert len(parser.srcs) == 3 and not (out / "figures").exists()
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            im.load()
            assert im.size[0] > 200
    assert "no analysis run in this warehouse" in page and "<h2>Largest shifts" not in page
    assert "<h2>Degenerated layers</h2>" in page and "<td>digits-cnn-pt</td>" in page

    assert main(["report", "--warehouse", demo_warehouse["warehouse"], "--out", str(out), "--run-id", "x"]) == 2
    assert "no analysis run in" in capsys.readouterr().err
    assert main(["report", "--warehouse", demo_warehouse["warehouse"], "--out", str(out), "--group-by", "nosuch"]) == 2
    assert "unknown model group nosuch" in capsys.readouterr().err
    assert main(["report", "--warehouse", analysed[0], "--out", str(out), "--run-id", "nosuch"]) == 2
    assert "no analysis run 'nosuch'" in capsys.readouterr().err
    assert main(["report", "--warehouse", analysed[0], "--out", str(out), "--scope", "task = 'x'"]) == 2
    assert "no analysis run of scope" in capsys.readouterr().err
