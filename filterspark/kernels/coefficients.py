"""Per-group aggregation of PCA coefficients (pure numpy, no Spark).

A Spark task feeds its filter batches to a :class:`PartitionAccumulator`, which keeps,
per (dimension, group): the published 70-bin counts (``shifts.histogram_counts_2d``),
a finer histogram for quantiles, per-component min/max and the scaled filters' moments
(``pca.FilterMoments``). Each task's accumulator reaches the driver whole and
:meth:`PartitionAccumulator.merge` adds them up exactly; :meth:`PartitionAccumulator.summaries`
gives the groups, and :func:`group_stats`, :func:`quantiles_from_counts` and
:func:`rest_shift` finish the tables' values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from filterspark.kernels.layer_histograms import LayerAccumulator, extended_bin_ids
from filterspark.kernels.pca import FilterMoments, PCABasis, moments
from filterspark.kernels.shifts import bin_ids_2d, counts_from_bin_ids, normalised_histogram, shift

#: Depth groups: deciles of ``conv_depth_norm``, ``[0.0,0.1], (0.1,0.2], …, (0.9,1.0]``.
DEPTH_EDGES = tuple(k / 10 for k in range(1, 10))
DEPTH_DECILES = ("[0.0,0.1]",) + tuple(f"({k / 10:.1f},{(k + 1) / 10:.1f}]" for k in range(1, 10))

#: Group label for a missing (NULL or empty) metadata value.
NONE_LABEL = "(none)"

#: Bins of the finer histogram that coefficient_stats' quantiles are read from; a
#: quantile is exact to within one such bin ((hi - lo) / FINE_BINS).
FINE_BINS = 1024
QUANTILES = {"q01": 0.01, "q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95, "q99": 0.99}

#: Average filters per histogram bin below which a group is marked small.
MIN_FILTERS_PER_BIN = 10

# Kinds of partial rows (the ``kind`` column); all values are additive or min/max.


def default_min_group_filters(bins: int) -> int:
    """Smallest group whose histogram counts as meaningful: 10 filters per bin on average."""
    return MIN_FILTERS_PER_BIN * bins


@dataclass
class GroupPartial:
    """What one task saw of one group. ``moments`` etc. are None for count-only groups."""

    hist: np.ndarray
    n: int = 0
    fine: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    moments: FilterMoments | None = None


@dataclass
class PartitionAccumulator:
    """Accumulates one task's batches per (dimension index, group label).

    ``full_dims``: dimension indices that get stats (fine counts, min/max, moments);
    the others get only the published counts (used for per-model histograms).
    ``layers``: the per-layer histograms (``layer_histograms``), kept when given.
    """

    lo: float
    hi: float
    bins: int
    ref: np.ndarray
    full_dims: frozenset[int]
    groups: dict[tuple[int, str], GroupPartial] = field(default_factory=dict)
    layers: LayerAccumulator | None = None

    def add(self, scaled: np.ndarray, coeffs: np.ndarray, labels: list[tuple[np.ndarray, list[str]]],
            layer_keys: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Add a batch: scaled kernels (n, d) and their coefficients (n, components) and, per dimension,
        the rows' group codes with the code → label list; ``layer_keys``: the rows' model
        ids and layer indices, for the per-layer histograms.

        The batch is binned once (coarse and fine); each group then only counts its rows'
        bin ids, and a group holding the whole batch (the usual case: model-level labels
        are constant within a model's file) reuses the whole batch's counts and moments.
        """
        if coeffs.shape[0] == 0:
            return
        batch = _BinnedBatch(self, scaled, coeffs)
        if self.layers is not None and layer_keys is not None:
            ext = extended_bin_ids(batch.coarse, coeffs, self.lo, self.bins)
            self.layers.add(layer_keys[0], layer_keys[1], coeffs, ext)
        for dim, (codes, names) in enumerate(labels):
            codes = np.asarray(codes)
            if codes.size == 0:
                continue
            if np.all(codes == codes[0]):
                self._add_group(dim, names[int(codes[0])], batch, None)
                continue
            order = np.argsort(codes, kind="stable")
            sorted_codes = codes[order]
            starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
            ends = np.r_[starts[1:], codes.size]
            for s, e in zip(starts, ends):
                self._add_group(dim, names[int(sorted_codes[s])], batch, order[s:e])

    def _add_group(self, dim: int, label: str, batch: "_BinnedBatch", rows: np.ndarray | None) -> None:
        g = self.groups.get((dim, label))
        full = dim in self.full_dims
        if g is None:
            c = batch.coeffs.shape[1]  # components
            g = GroupPartial(hist=np.zeros((c, self.bins), dtype=np.int64))
            if full:
                g.fine = np.zeros((c, FINE_BINS), dtype=np.int64)
                g.lo = np.full(c, np.inf)
                g.hi = np.full(c, -np.inf)
                g.moments = FilterMoments.zeros(self.ref)
            self.groups[(dim, label)] = g
        part = batch.part(rows, full)
        g.n += part.n
        g.hist += part.hist
        if full:
            g.fine += part.fine
            np.minimum(g.lo, part.lo, out=g.lo)
            np.maximum(g.hi, part.hi, out=g.hi)
            g.moments = g.moments.merge(part.moments)

    def merge(self, other: "PartitionAccumulator") -> "PartitionAccumulator":
        """Add another task's groups into this one (in place; returns self)."""
        for key, g in other.groups.items():
            mine = self.groups.get(key)
            if mine is None:
                self.groups[key] = g
                continue
            mine.n += g.n
            mine.hist += g.hist
            if mine.moments is not None and g.moments is not None:
                mine.fine += g.fine
                np.minimum(mine.lo, g.lo, out=mine.lo)
                np.maximum(mine.hi, g.hi, out=mine.hi)
                mine.moments = mine.moments.merge(g.moments)
        if other.layers is not None:
            self.layers = other.layers if self.layers is None else self.layers.merge(other.layers)
        return self

    def summaries(self) -> dict[tuple[int, str], "GroupSummary"]:
        """The groups as :class:`GroupSummary`."""
        return {k: GroupSummary(g.n, g.hist, g.fine, g.lo, g.hi, g.moments) for k, g in self.groups.items()}


class _BinnedBatch:
    """One batch's bin ids (coarse and, if needed, fine), and its groups' partials; the
    partial of the whole batch is computed once and shared by every group that holds it."""

    def __init__(self, acc: PartitionAccumulator, scaled: np.ndarray, coeffs: np.ndarray) -> None:
        self.acc, self.scaled, self.coeffs = acc, scaled, coeffs
        self.coarse = bin_ids_2d(coeffs, acc.lo, acc.hi, acc.bins)
        self.fine = bin_ids_2d(coeffs, acc.lo, acc.hi, FINE_BINS) if acc.full_dims else None
        self.whole: dict[bool, GroupPartial] = {}

    def part(self, rows: np.ndarray | None, full: bool) -> GroupPartial:
        """The partial of ``rows`` (None: the whole batch); stats only when ``full``."""
        if rows is None and (full in self.whole or (not full and True in self.whole)):
            return self.whole[full] if full in self.whole else self.whole[True]
        pick = (lambda a: a) if rows is None else (lambda a: a[rows])
        coeffs = pick(self.coeffs)
        c = coeffs.shape[1]
        p = GroupPartial(hist=counts_from_bin_ids(pick(self.coarse), c, self.acc.bins), n=coeffs.shape[0])
        if full:
            p.fine = counts_from_bin_ids(pick(self.fine), c, FINE_BINS)
            p.lo, p.hi = coeffs.min(axis=0), coeffs.max(axis=0)
            p.moments = moments(pick(self.scaled), self.acc.ref)
        if rows is None:
            self.whole[full] = p
        return p


@dataclass
class GroupSummary:
    """One group after all tasks' partials are summed (or its layers' histograms:
    then ``total``/``total_sq``, the per-component coefficient sums, stand in for the
    moments and the fine counts)."""

    n: int
    hist: np.ndarray
    fine: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    moments: FilterMoments | None = None
    total: np.ndarray | None = None
    total_sq: np.ndarray | None = None


def quantiles_from_counts(counts: np.ndarray, lo: float, hi: float, qs: list[float]) -> np.ndarray:
    """Quantiles of each row of ``(k, bins)`` counts over ``[lo, hi]``, (k, len(qs)).

    numpy's default (linear) definition: the value at position ``q (n - 1)`` of the sorted
    values, interpolated between its two neighbouring order statistics, where each order
    statistic is placed evenly inside its bin. Every order statistic, hence every result,
    lies within one bin width of the exact ``np.quantile``. NaN for an empty row.
    """
    from filterspark.kernels.shifts import bin_edges

    c = np.asarray(counts, dtype=np.int64)
    edges = bin_edges(lo, hi, c.shape[-1])
    out = np.full((c.shape[0], len(qs)), np.nan)
    for r in range(c.shape[0]):
        cum = np.r_[0, np.cumsum(c[r])]
        n = int(cum[-1])
        if n == 0:
            continue

        def order_stat(j: np.ndarray) -> np.ndarray:  # 0-based j-th smallest value
            k = np.searchsorted(cum, j, side="right") - 1
            return edges[k] + (j - cum[k] + 0.5) / c[r, k] * (edges[k + 1] - edges[k])

        pos = np.asarray(qs, dtype=np.float64) * (n - 1)
        below = np.floor(pos).astype(np.int64)
        above = np.minimum(below + 1, n - 1)
        x0, x1 = order_stat(below), order_stat(above)
        out[r] = x0 + (pos - below) * (x1 - x0)
    return out


def group_stats(g: GroupSummary, basis: PCABasis, lo: float, hi: float) -> dict[str, np.ndarray]:
    """Per-component count, mean, std (n-1), min, max and quantiles of a group's coefficients.

    Mean and std come exactly from the group's scaled-filter moments (the coefficients
    are linear in the filters): ``mean_c = (mean_g - mean) Vᵀ``, ``var_c = diag(V Σ_g Vᵀ)``;
    for a group summed from layer histograms, from its coefficient sums, and the
    quantiles from its published counts (exact to within one of those bins).
    """
    c = g.hist.shape[0]  # components
    if g.moments is None:
        n = np.full(c, float(g.n))
        mean = g.total / n
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (g.total_sq - n * mean * mean) / (n - 1)
        std = np.sqrt(np.clip(var, 0.0, None)) if g.n >= 2 else np.full(c, np.nan)
        counts = g.hist
    else:
        comps = np.asarray(basis.components)
        m = g.moments
        mean = (m.mean - basis.mean) @ comps.T
        if m.n >= 2:
            var = np.einsum("ij,jk,ik->i", comps, m.covariance(), comps)
            std = np.sqrt(np.clip(var, 0.0, None))
        else:
            std = np.full(c, np.nan)
        counts = g.fine
    qs = quantiles_from_counts(counts, lo, hi, list(QUANTILES.values()))
    qs = np.clip(qs, g.lo[:, None], g.hi[:, None])
    stats = {"n_filters": np.full(c, g.n), "mean": mean, "std": std, "min": g.lo, "max": g.hi}
    stats.update({name: qs[:, j] for j, name in enumerate(QUANTILES)})
    return stats


def rest_shift(
    part: np.ndarray, whole: np.ndarray, evr: np.ndarray, lo: float, hi: float
) -> tuple[float, np.ndarray] | None:
    """Shift between a part of a group (counts ``part``) and the rest of it (``whole - part``).

    None when the rest is empty. Counts are additive, so the rest's histogram is exact.
    """
    rest = np.asarray(whole, np.int64) - np.asarray(part, np.int64)
    if rest[0].sum() == 0:
        return None
    return shift(normalised_histogram(part, lo, hi), normalised_histogram(rest, lo, hi), evr)
