"""The study's figures (matplotlib, headless): each a function from a small pandas frame
of aggregates to a ``Figure``.

The frames are what :mod:`filterspark.outputs.report_data` loads from the tables (or any SQL
result with the same columns): PCA basis rows, coefficient histograms, shift rows, layer
quality rows, one model's filters, a 2-D coefficient histogram. No function here touches
Spark or raw population data. Colours: diverging ``RdBu_r`` for weights and components
(red positive), ``viridis`` for shifts and densities.
"""
from __future__ import annotations

import io
import math
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless; a no-op when pyplot is not imported yet

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from filterspark.kernels.coefficients import DEPTH_DECILES, NONE_LABEL

DEPTH_DIMENSION = "depth_decile"
WEIGHTS = [f"w{i}" for i in range(9)]
COMPONENTS = [f"v{i}" for i in range(9)]
DIVERGING = "RdBu_r"
SEQUENTIAL = "viridis"
RIDGE_COMPONENTS = 6
DPI = 100


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def group_order(labels: Iterable[str], dimension: str | None = None) -> list[str]:
    """Depth deciles in their natural order; other labels sorted; ``(none)`` last."""
    labels = list(dict.fromkeys(labels))
    if dimension == DEPTH_DIMENSION:
        rank = {label: i for i, label in enumerate(DEPTH_DECILES)}
        return sorted(labels, key=lambda g: (g == NONE_LABEL, rank.get(g, len(rank)), g))
    return sorted(labels, key=lambda g: (g == NONE_LABEL, g))


# --- one model's filters ---------------------------------------------------------------------


def filter_mosaic(weights: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """Tiles of 3x3 filters (rows of ``weights``, (n, 9)) on a grid of ``columns``; NaN
    between tiles and in unused cells."""
    n = weights.shape[0]
    rows = max(1, math.ceil(n / columns))
    step = 3 + gap
    out = np.full((rows * step - gap, columns * step - gap), np.nan)
    for k in range(n):
        r, c = divmod(k, columns)
        out[r * step : r * step + 3, c * step : c * step + 3] = weights[k].reshape(3, 3)
    return out


def mosaic_columns(n: int) -> int:
    """Tile columns for ``n`` filters: about twice as wide as high."""
    return max(1, math.ceil(math.sqrt(2 * n)))


def filter_grid(filters: pd.DataFrame, layers: pd.DataFrame | None = None, title: str | None = None) -> Figure:
    """The filters of each layer of one model as 3x3 tiles, each layer scaled by its peak.

    ``filters``: ``layer_index, filter_index, w0..w8`` and optionally ``layer_peak`` (the
    layer's max |w| over all its filters, when only some are given); ``layers``:
    ``layer_index`` with optional ``layer_name``, ``out_channels``, ``in_channels``,
    ``n_filters`` for the panel titles. Tiles follow ``filter_index`` row-major; the
    colour scale is [-1, 1] of the layer's peak.
    """
    info = {} if layers is None else {int(r["layer_index"]): r for r in layers.to_dict("records")}
    indices = sorted(int(i) for i in filters["layer_index"].unique())
    ncols = min(3, max(1, len(indices)))
    nrows = max(1, math.ceil(len(indices) / ncols))
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    cmap = matplotlib.colormaps[DIVERGING].with_extremes(bad="#8c8c8c")  # bad: the gaps between tiles
    image = None
    for ax, index in zip(axes, indices):
        rows = filters[filters["layer_index"] == index].sort_values("filter_index")
        w = rows[WEIGHTS].to_numpy(np.float64)
        peak = float(rows["layer_peak"].iloc[0]) if "layer_peak" in rows else float(np.nanmax(np.abs(w)))
        scaled = w / peak if peak > 0 else w
        image = ax.imshow(filter_mosaic(scaled, mosaic_columns(len(w))), cmap=cmap, vmin=-1, vmax=1,
                          interpolation="nearest")
        ax.set_gid(f"layer-{index}")
        ax.set_xticks([])
        ax.set_yticks([])
        meta = info.get(index, {})
        name = meta.get("layer_name") or f"layer {index}"
        total = meta.get("n_filters")
        shown = f"{len(w)} of {int(total)}" if total and int(total) > len(w) else f"{len(w)}"
        shape = f"{meta['out_channels']}x{meta['in_channels']}: " if meta.get("out_channels") else ""
        ax.set_title(f"{name}\n{shape}{shown} filters, peak {peak:.3g}", fontsize=8)
    for ax in axes[len(indices):]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes.tolist(), shrink=0.6, label="weight / layer peak")
    fig.suptitle(title or "3x3 filters per layer")
    return fig


# --- PCA basis ---------------------------------------------------------------------------------


def basis_vectors(basis: pd.DataFrame) -> np.ndarray:
    """The components of ``pca_basis`` rows (sorted by component) as a (components, k²)
    array: ``vector``, or ``v0..v8`` for 3x3 rows without it (an older version's)."""
    b = basis.sort_values("component")
    if "vector" in b.columns and b["vector"].notna().all():
        return np.stack([np.asarray(v, np.float64) for v in b["vector"]])
    return b[COMPONENTS].to_numpy(np.float64)


def pca_basis_figure(basis: pd.DataFrame, title: str | None = None) -> Figure:
    """The principal components as k x k images with their explained-variance ratios (3x3:
    one row of nine; larger kernels: rows of up to ten tiles).

    ``basis``: ``component, vector`` (or ``v0..v8``), ``explained_variance_ratio``
    (``pca_basis`` rows of one run).
    """
    b = basis.sort_values("component")
    vectors = basis_vectors(b)
    n, d = vectors.shape
    k = int(round(math.sqrt(d)))
    vmax = float(np.abs(vectors).max()) or 1.0
    columns = n if k == 3 else min(n, 10)
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(10, 1.9) if rows == 1 else (10, 1.25 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).reshape(-1)
    image = None
    for ax, row, vector in zip(axes, b.itertuples(), vectors):
        image = ax.imshow(vector.reshape(k, k), cmap=DIVERGING, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_gid(f"component-{row.component}")
        ax.set_title(f"c{row.component}: {row.explained_variance_ratio:.1%}", fontsize=9 if k == 3 else 7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[n:]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title or f"PCA basis of the scaled {k}x{k} {'filters' if k == 3 else 'kernels'} (explained-variance ratio)")
    return fig


def explained_variance_figure(basis: pd.DataFrame, title: str | None = None) -> Figure:
    """Explained-variance ratio per component (bars) and its cumulative curve (line)."""
    b = basis.sort_values("component")
    k = b["component"].to_numpy()
    ratio = b["explained_variance_ratio"].to_numpy(np.float64)
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.bar(k, ratio, color="#9ecae1", label="per component")
    ax.plot(k, np.cumsum(ratio), "o-", color="#08519c", label="cumulative", gid="cumulative")
    step = max(1, math.ceil(len(k) / 12))  # at most about 12 labels (k x k bases have k² components)
    ax.set_xticks(k[::step], [f"c{i}" for i in k[::step]])
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("explained-variance ratio")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center right")
    ax.set_title(title or "Explained variance of the PCA basis")
    return fig


# --- coefficient distributions ------------------------------------------------------------------


def ridge_plot(
    histograms: pd.DataFrame,
    dimension: str,
    components: Sequence[int] = tuple(range(RIDGE_COMPONENTS)),
    height: float = 1.6,
    title: str | None = None,
) -> Figure:
    """Ridge plot of the coefficient distributions of each group of ``dimension``, one panel
    per component.

    ``histograms``: ``coefficient_histograms`` rows (``dimension, group_value, component,
    bin, bin_lo, bin_hi, probability``). Group ``i`` (in :func:`group_order`) is drawn at
    baseline ``i`` as ``i + height * probability / max_probability_of_the_panel``.
    """
    h = histograms[histograms["dimension"] == dimension]
    groups = group_order(h["group_value"], dimension)
    fig = Figure(figsize=(2.2 * len(components) + 1.2, 0.45 * len(groups) + 1.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(components), sharey=True, squeeze=False)).ravel()
    colors = matplotlib.colormaps["viridis"](np.linspace(0.05, 0.9, max(1, len(groups))))
    for ax, comp in zip(axes, components):
        panel = h[h["component"] == comp]
        peak = float(panel["probability"].max()) if len(panel) else 1.0
        for i, group in reversed(list(enumerate(groups))):  # lower ridges drawn on top
            rows = panel[panel["group_value"] == group].sort_values("bin")
            if rows.empty:
                continue
            x = ((rows["bin_lo"] + rows["bin_hi"]) / 2).to_numpy()
            y = i + height * rows["probability"].to_numpy() / peak
            ax.fill_between(x, i, y, color=colors[i], alpha=0.75, linewidth=0, zorder=len(groups) - i)
            ax.plot(x, y, color="black", linewidth=0.6, zorder=len(groups) - i, gid=f"ridge|{comp}|{group}")
        ax.set_title(f"c{comp}", fontsize=9)
        ax.set_gid(f"component-{comp}")
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.2)
    axes[0].set_yticks(range(len(groups)), groups, fontsize=8)
    fig.supxlabel("coefficient", fontsize=9)
    fig.suptitle(title or f"Coefficient distributions by {dimension} (first {len(components)} components)")
    return fig


def coefficient_density(hist2d: pd.DataFrame, x: str = "c0", y: str = "c1", title: str | None = None) -> Figure:
    """Density of coefficient pairs as a 2-D histogram (log colour scale).

    ``hist2d``: one row per non-empty cell: ``ix, iy, count`` plus, on every row, the grid
    ``bins_x, bins_y, x_min, x_max, y_min, y_max`` (equal-width cells, as
    :func:`report_data.coefficient_pair_histogram` returns it). The image's array is the
    count matrix, rows = ``iy`` (bottom to top), columns = ``ix``.
    """
    nx, ny = int(hist2d["bins_x"].iloc[0]), int(hist2d["bins_y"].iloc[0])
    counts = np.zeros((ny, nx))
    counts[hist2d["iy"].to_numpy(), hist2d["ix"].to_numpy()] = hist2d["count"].to_numpy()
    extent = (hist2d["x_min"].iloc[0], hist2d["x_max"].iloc[0], hist2d["y_min"].iloc[0], hist2d["y_max"].iloc[0])
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.subplots()
    masked = np.ma.masked_equal(counts, 0)
    image = ax.imshow(masked, origin="lower", extent=extent, aspect="auto", cmap=SEQUENTIAL,
                      norm=LogNorm(vmin=1, vmax=max(1.0, counts.max())), interpolation="nearest")
    fig.colorbar(image, ax=ax, label="filters")
    ax.set_xlabel(f"{x} coefficient")
    ax.set_ylabel(f"{y} coefficient")
    ax.set_title(title or f"Density of ({x}, {y}) over {int(counts.sum()):,} filters")
    return fig


# --- shifts -------------------------------------------------------------------------------------


def shift_matrix_order(shifts: pd.DataFrame, dimension: str) -> list[str]:
    """Groups of ``dimension`` by ascending mean shift to the others (depth: natural order)."""
    s = shifts[shifts["dimension"] == dimension]
    groups = set(s["group_a"]) | set(s["group_b"])
    if dimension == DEPTH_DIMENSION:
        return group_order(groups, dimension)
    means = s.groupby("group_a")["shift"].mean()
    return sorted(groups, key=lambda g: (means.get(g, np.inf), g))


def shift_heatmap(shifts: pd.DataFrame, dimension: str, title: str | None = None, annotate_max: int = 12) -> Figure:
    """Matrix of the shifts between the groups of one dimension (diagonal 0).

    ``shifts``: ``dimension, group_a, group_b, shift`` rows. Rows and columns are ordered by
    :func:`shift_matrix_order`; cell ``[i, j]`` is the row ``group_a = order[i]``,
    ``group_b = order[j]``; a missing pair is NaN (blank).
    """
    s = shifts[shifts["dimension"] == dimension]
    order = shift_matrix_order(shifts, dimension)
    pos = {g: i for i, g in enumerate(order)}
    m = np.full((len(order), len(order)), np.nan)
    np.fill_diagonal(m, 0.0)
    for a, b, v in zip(s["group_a"], s["group_b"], s["shift"]):
        m[pos[a], pos[b]] = np.nan if v is None else v
    size = 1.4 + 0.48 * len(order)
    fig = Figure(figsize=(size + 1.6, size), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps[SEQUENTIAL].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    if len(order) <= annotate_max:
        top = np.nanmax(m) if np.isfinite(m).any() else 0.0
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.6 * top else "black")
    fig.colorbar(image, ax=ax, label="shift D(P, Q)")
    ax.set_title(title or f"Shift between groups of {dimension}", fontsize=10)
    return fig


def shift_boxplot(shifts: pd.DataFrame, title: str | None = None) -> Figure:
    """Box plot of the pairwise shifts (each unordered pair once) per dimension, with the
    pairs as points. Point set ``k`` (collection ``k``) holds dimension ``k``'s shifts."""
    s = shifts[(shifts["group_a"] < shifts["group_b"]) & shifts["shift"].notna()]
    dims = sorted(s["dimension"].unique())
    data = [s.loc[s["dimension"] == d, "shift"].to_numpy(np.float64) for d in dims]
    fig = Figure(figsize=(1.3 * max(3, len(dims)) + 1.5, 3.8), layout="constrained")
    ax = fig.subplots()
    if dims:
        ax.boxplot(data, tick_labels=dims, showfliers=False, widths=0.55)
        rng = np.random.default_rng(0)
        for k, values in enumerate(data, start=1):
            jitter = rng.uniform(-0.15, 0.15, len(values))
            ax.scatter(k + jitter, values, s=10, alpha=0.6, color="#08519c", gid=f"pairs|{dims[k - 1]}")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    ax.set_ylabel("shift D(P, Q)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Pairwise shifts per dimension")
    return fig


# --- layer quality ------------------------------------------------------------------------------


def entropy_sparsity_scatter(layers: pd.DataFrame, group: str = "group", title: str | None = None) -> Figure:
    """Layer normalised variance entropy against sparsity, one colour per group.

    ``layers``: 3x3 layer rows with ``sparsity``, ``variance_entropy_norm`` and ``group``.
    Collection ``k`` holds the layers of the ``k``-th group of :func:`group_order`.
    """
    q = layers.dropna(subset=["sparsity", "variance_entropy_norm"])
    groups = group_order(q[group].astype(str))
    colors = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(5.6, 4.2), layout="constrained")
    ax = fig.subplots()
    for k, g in enumerate(groups):
        rows = q[q[group].astype(str) == g]
        ax.scatter(rows["sparsity"], rows["variance_entropy_norm"], s=22, alpha=0.75, color=colors(k % 10),
                   label=f"{g} ({len(rows)})", gid=f"group|{g}")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("sparsity (share of near-zero filters)")
    ax.set_ylabel("normalised variance entropy")
    ax.legend(fontsize=8, title=group, title_fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Layer entropy vs. sparsity")
    return fig


def depth_boxplot(
    layers: pd.DataFrame, metric: str = "variance_entropy_norm", group: str = "group", title: str | None = None
) -> Figure:
    """Box plots of a layer metric per depth decile (natural order), one box per group.

    ``layers``: rows with ``depth_decile``, ``group`` and ``metric``. The box of group
    ``g`` in decile ``d`` has the gid ``box|<d>|<g>`` and summarises exactly those rows;
    the rows themselves are drawn as points over the boxes.
    """
    q = layers.dropna(subset=[metric])
    deciles = group_order(q["depth_decile"], DEPTH_DIMENSION)
    groups = group_order(q[group].astype(str))
    width = 0.8 / max(1, len(groups))
    colors = matplotlib.colormaps["tab10"]
    fig = Figure(figsize=(1.0 * max(4, len(deciles)) + 2.0, 3.8), layout="constrained")
    ax = fig.subplots()
    for k, g in enumerate(groups):
        color = colors(k % 10)
        positions, data, labels = [], [], []
        for i, d in enumerate(deciles):
            values = q.loc[(q["depth_decile"] == d) & (q[group].astype(str) == g), metric].to_numpy(np.float64)
            if len(values):
                positions.append(i + (k - (len(groups) - 1) / 2) * width)
                data.append(values)
                labels.append(d)
        if not data:
            continue
        parts = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False,
                           manage_ticks=False, medianprops={"color": "black"})
        for box, d in zip(parts["boxes"], labels):
            box.set_facecolor(color)
            box.set_alpha(0.45)
            box.set_gid(f"box|{d}|{g}")
        xs = np.concatenate([np.full(len(v), p) for p, v in zip(positions, data)])
        ax.scatter(xs, np.concatenate(data), s=12, color=color, zorder=3, label=g, gid=f"points|{g}")
    ax.set_xticks(range(len(deciles)), deciles, rotation=30, fontsize=8)
    ax.set_xlabel("depth decile (conv_depth_norm)")
    ax.set_ylabel(metric)
    ax.grid(axis="y", alpha=0.3)
    if groups:
        ax.legend(fontsize=8, title=group, title_fontsize=8)
    ax.set_title(title or f"{metric} per depth decile")
    return fig
