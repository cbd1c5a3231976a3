"""Per-group aggregation of PCA coefficients (pure numpy, no Spark).

A Spark task feeds its filter batches to a :class:`PartitionAccumulator`, which keeps,
per (dimension, group): the published 70-bin counts (``shifts.histogram_counts_2d``),
a finer histogram for quantiles, per-component min/max and the scaled filters' moments
(``pca.FilterMoments``). :meth:`PartitionAccumulator.columns` flattens them into additive
"partial" rows; Spark sums those per key, and :func:`assemble` rebuilds the groups on the
driver from the (small) summed result. :func:`group_stats`, :func:`quantiles_from_counts`
and :func:`rest_shift` finish the tables' values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from filterspark.kernels.pca import N_WEIGHTS, FilterMoments, PCABasis, moments
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
HIST, FINE, MIN, MAX, MOMENT, COUNT = range(6)
PARTIAL_COLUMNS = ("kind", "dim", "grp", "component", "bin", "count", "value")
_N_PRODUCTS = N_WEIGHTS * (N_WEIGHTS + 1) // 2
_IU = np.triu_indices(N_WEIGHTS)  # the order of pca.upper_triangle_pairs()


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
    """

    lo: float
    hi: float
    bins: int
    ref: np.ndarray
    full_dims: frozenset[int]
    groups: dict[tuple[int, str], GroupPartial] = field(default_factory=dict)

    def add(self, scaled: np.ndarray, coeffs: np.ndarray, labels: list[tuple[np.ndarray, list[str]]]) -> None:
        """Add a batch: scaled filters and their coefficients (n, 9) and, per dimension,
        the rows' group codes with the code → label list.

        The batch is binned once (coarse and fine); each group then only counts its rows'
        bin ids, and a group holding the whole batch (the usual case: model-level labels
        are constant within a model's file) reuses the whole batch's counts and moments.
        """
        if coeffs.shape[0] == 0:
            return
        batch = _BinnedBatch(self, scaled, coeffs)
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
            g = GroupPartial(hist=np.zeros((N_WEIGHTS, self.bins), dtype=np.int64))
            if full:
                g.fine = np.zeros((N_WEIGHTS, FINE_BINS), dtype=np.int64)
                g.lo = np.full(N_WEIGHTS, np.inf)
                g.hi = np.full(N_WEIGHTS, -np.inf)
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
        return self

    def summaries(self) -> dict[tuple[int, str], "GroupSummary"]:
        """The groups as :class:`GroupSummary` (what :func:`assemble` gives for summed
        :meth:`columns` rows)."""
        return {k: GroupSummary(g.n, g.hist, g.fine, g.lo, g.hi, g.moments) for k, g in self.groups.items()}

    def columns(self) -> dict[str, np.ndarray]:
        """The partial rows (columns of :data:`PARTIAL_COLUMNS`); zero counts are left out."""
        parts: list[tuple] = []
        for (dim, label), g in self.groups.items():
            parts.append(_count_rows(HIST, dim, label, g.hist))
            parts.append(_value_rows(COUNT, dim, label, np.array([0.0]), count=g.n, component=np.array([-1])))
            if g.moments is not None:
                parts.append(_count_rows(FINE, dim, label, g.fine))
                parts.append(_value_rows(MIN, dim, label, g.lo))
                parts.append(_value_rows(MAX, dim, label, g.hi))
                flat = np.r_[g.moments.sum, g.moments.cross[_IU]]
                parts.append(_value_rows(MOMENT, dim, label, flat, count=g.moments.n))
        if not parts:
            return {c: np.empty(0) for c in PARTIAL_COLUMNS}
        return {c: np.concatenate([p[i] for p in parts]) for i, c in enumerate(PARTIAL_COLUMNS)}


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
        p = GroupPartial(hist=counts_from_bin_ids(pick(self.coarse), N_WEIGHTS, self.acc.bins), n=coeffs.shape[0])
        if full:
            p.fine = counts_from_bin_ids(pick(self.fine), N_WEIGHTS, FINE_BINS)
            p.lo, p.hi = coeffs.min(axis=0), coeffs.max(axis=0)
            p.moments = moments(pick(self.scaled), self.acc.ref)
        if rows is None:
            self.whole[full] = p
        return p


def _count_rows(kind: int, dim: int, label: str, counts: np.ndarray) -> tuple:
    comp, b = np.nonzero(counts)
    n = comp.size
    return (
        np.full(n, kind, np.int32), np.full(n, dim, np.int32), np.full(n, label, object),
        comp.astype(np.int32), b.astype(np.int32), counts[comp, b].astype(np.int64), np.zeros(n),
    )


def _value_rows(kind: int, dim: int, label: str, values: np.ndarray, count: int = 0,
                component: np.ndarray | None = None) -> tuple:
    n = values.size
    comp = np.arange(n, dtype=np.int32) if component is None else component.astype(np.int32)
    return (
        np.full(n, kind, np.int32), np.full(n, dim, np.int32), np.full(n, label, object),
        comp, np.full(n, -1, np.int32), np.full(n, count, np.int64), values.astype(np.float64),
    )


@dataclass
class GroupSummary:
    """One group after all tasks' partials are summed."""

    n: int
    hist: np.ndarray
    fine: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    moments: FilterMoments | None = None


def assemble(
    summed: dict[str, np.ndarray], bins: int, ref: np.ndarray
) -> dict[tuple[int, str], GroupSummary]:
    """Rebuild the groups from summed partial rows.

    ``summed`` has the key columns ``kind, dim, grp, component, bin`` and, per key, the
    sum of ``count`` (``count``), the sum of ``value`` (``total``) and its min/max
    (``vmin``, ``vmax``), as Spark's ``groupBy(...).agg`` produces them.
    """
    kind = np.asarray(summed["kind"])
    keys = list(zip(np.asarray(summed["dim"]).tolist(), np.asarray(summed["grp"]).tolist()))
    out: dict[tuple[int, str], GroupSummary] = {}
    moment_n: dict[tuple[int, str], int] = {}
    flat: dict[tuple[int, str], np.ndarray] = {}
    comp = np.asarray(summed["component"])
    b = np.asarray(summed["bin"])
    count = np.asarray(summed["count"])
    for i in np.flatnonzero(kind == COUNT):
        out[keys[i]] = GroupSummary(int(count[i]), np.zeros((N_WEIGHTS, bins), np.int64))
    for i in np.flatnonzero(kind == HIST):
        out[keys[i]].hist[comp[i], b[i]] += count[i]
    for i in np.flatnonzero(kind == FINE):
        g = out[keys[i]]
        if g.fine is None:
            g.fine = np.zeros((N_WEIGHTS, FINE_BINS), np.int64)
        g.fine[comp[i], b[i]] += count[i]
    for k, column, init in ((MIN, "vmin", np.inf), (MAX, "vmax", -np.inf)):
        values = np.asarray(summed[column])
        for i in np.flatnonzero(kind == k):
            g = out[keys[i]]
            attr = "lo" if k == MIN else "hi"
            if getattr(g, attr) is None:
                setattr(g, attr, np.full(N_WEIGHTS, init))
            getattr(g, attr)[comp[i]] = values[i]
    total = np.asarray(summed["total"])
    for i in np.flatnonzero(kind == MOMENT):
        flat.setdefault(keys[i], np.zeros(N_WEIGHTS + _N_PRODUCTS))[comp[i]] = total[i]
        moment_n[keys[i]] = int(count[i])
    for key, values in flat.items():
        out[key].moments = FilterMoments.from_flat(moment_n[key], values[:N_WEIGHTS], values[N_WEIGHTS:], ref)
    return out


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
    are linear in the filters): ``mean_c = (mean_g - mean) Vᵀ``, ``var_c = diag(V Σ_g Vᵀ)``.
    """
    comps = np.asarray(basis.components)
    m = g.moments
    mean = (m.mean - basis.mean) @ comps.T
    if m.n >= 2:
        var = np.einsum("ij,jk,ik->i", comps, m.covariance(), comps)
        std = np.sqrt(np.clip(var, 0.0, None))
    else:
        std = np.full(N_WEIGHTS, np.nan)
    qs = quantiles_from_counts(g.fine, lo, hi, list(QUANTILES.values()))
    qs = np.clip(qs, g.lo[:, None], g.hi[:, None])
    stats = {"n_filters": np.full(N_WEIGHTS, g.n), "mean": mean, "std": std, "min": g.lo, "max": g.hi}
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
