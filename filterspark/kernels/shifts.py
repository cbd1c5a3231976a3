"""Coefficient histograms and the distribution shift between groups (pure numpy).

Counts are additive integers, so the distributed job sums them per group/component and
the driver finishes with :func:`normalised_histogram` and :func:`shift`/:func:`shift_matrix`.
All binning reproduces ``np.histogram(values, bins, range=(lo, hi))`` exactly (values
outside ``[lo, hi]``, NaN and ±inf ignored; last bin closed; ``lo == hi`` widened to
``[lo - 0.5, hi + 0.5]`` as numpy does). Values are binned as float64.
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterable, Mapping

import numpy as np

N_BINS = 70
_BLOCK = 65536  # values binned per block
EMPTY_BIN = float(np.finfo(np.float32).eps)


def bin_edges(lo: float, hi: float, bins: int = N_BINS) -> np.ndarray:
    """The exact float64 edges ``np.histogram`` uses for ``range=(lo, hi)``."""
    return np.histogram_bin_edges(np.empty(0), bins=bins, range=(float(lo), float(hi)))


def _bin_indices(a: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """numpy's uniform-bin index computation on flat float64 ``a``.

    Returns (indices of kept values, boolean keep mask or None when all are kept). As in
    ``np.histogram``: a float estimate of the bin, then one step down where the value is
    below its bin's lower edge and one step up where it reaches the next edge (not past
    the last bin), so every index agrees with the edges themselves. The corrections are
    done arithmetically (no masked assignment), which is what makes this fast.
    """
    bins = edges.size - 1
    first, last = edges[0], edges[-1]
    keep = a >= first
    keep &= a <= last
    if keep.all():
        mask = None
    else:
        mask = keep
        a = a[keep]
    est = a - first
    est /= last - first
    est *= bins
    idx = est.astype(np.intp)
    np.minimum(idx, bins - 1, out=idx)
    idx -= a < edges[idx]  # the float index can be 1 ULP off near an edge
    up = a >= edges[idx + 1]
    up &= idx != bins - 1
    idx += up
    return idx, mask


def histogram_counts(values: np.ndarray, lo: float, hi: float, bins: int = N_BINS) -> np.ndarray:
    """Counts (int64, ``bins``) equal to ``np.histogram(values, bins, (lo, hi))[0]``."""
    return histogram_counts_2d(np.asarray(values).reshape(-1, 1), lo, hi, bins)[0]


def histogram_counts_2d(coeffs: np.ndarray, lo: float, hi: float, bins: int = N_BINS) -> np.ndarray:
    """Per-column counts of an (n, k) batch, shape (k, bins), all columns in one pass.

    Row ``i`` equals ``np.histogram(coeffs[:, i], bins, (lo, hi))[0]``; counts are
    additive across batches.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"expected an (n, k) coefficient array, got shape {c.shape}")
    return counts_from_bin_ids(bin_ids_2d(c, lo, hi, bins), c.shape[1], bins)


def bin_ids_2d(coeffs: np.ndarray, lo: float, hi: float, bins: int = N_BINS) -> np.ndarray:
    """Flat bin ids of an (n, k) batch: ``column * bins + bin`` with ``np.histogram``'s
    binning over ``(lo, hi)``, and ``k * bins`` for a value outside the range or NaN.

    Bin a batch once, then count any subset of its rows with :func:`counts_from_bin_ids`:
    ``counts_from_bin_ids(bin_ids_2d(c, lo, hi, b)[rows], k, b)`` equals
    ``histogram_counts_2d(c[rows], lo, hi, b)``.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"expected an (n, k) coefficient array, got shape {c.shape}")
    n, k = c.shape
    edges = bin_edges(lo, hi, bins)
    out = np.empty((k, n), dtype=np.intp)  # component-major, returned as its (n, k) view
    for j, column in enumerate(c.T):
        for s in range(0, n, _BLOCK):  # cache-sized blocks: ~3x faster than one pass
            e = min(s + _BLOCK, n)
            idx, mask = _bin_indices(column[s:e], edges)
            if mask is None:
                np.add(idx, j * bins, out=out[j, s:e])
            else:
                block = out[j, s:e]
                block[:] = k * bins
                block[mask] = idx + j * bins
    return out.T


def counts_from_bin_ids(ids: np.ndarray, k: int, bins: int = N_BINS) -> np.ndarray:
    """(k, bins) int64 counts of :func:`bin_ids_2d` ids (out-of-range ids dropped)."""
    counts = np.bincount(np.asarray(ids).reshape(-1), minlength=k * bins + 1)
    return counts[: k * bins].astype(np.int64, copy=False).reshape(k, bins)


def normalised_histogram(counts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The published histogram from counts: density, empty bins → float32 eps, sum 1.

    Bit-identical to taking ``h = np.histogram(v, bins, (lo, hi), density=True)[0]``,
    setting ``h[h == 0] = eps`` and ``h /= h.sum()``. Works on the last axis of any
    ``(..., bins)`` array. A histogram with no counts (N == 0) gives all-NaN, as the
    published procedure does (so an empty group's shifts are NaN, never silently
    uniform). ``lo == hi`` uses numpy's widened range.
    """
    n = np.asarray(counts)
    if n.dtype.kind not in "iu":
        raise TypeError("counts must be integers")
    n = n.astype(np.int64)
    db = np.diff(bin_edges(lo, hi, n.shape[-1]))
    total = n.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        h = n / db / total
    h[h == 0] = EMPTY_BIN
    h /= h.sum(axis=-1, keepdims=True)
    return h


def kl(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Kullback-Leibler divergence ``Σ p log(p/q)`` (natural log) along ``axis``.

    Terms with ``p == 0`` contribute 0; ``q == 0 < p`` gives inf. Inputs are used as
    given (not renormalised); for normalised p, q this is ``scipy.stats.entropy(p, q)``.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), np.where(p == 0, 0.0, np.nan))
    out = terms.sum(axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def shift(hist_a: np.ndarray, hist_b: np.ndarray, evr: np.ndarray) -> tuple[float, np.ndarray]:
    """Shift between two groups' normalised histograms, each (9, bins).

    ``per_component[i] = evr[i] · (KL(A_i‖B_i) + KL(B_i‖A_i))``; ``total`` is their sum.
    Exactly symmetric: ``shift(a, b) == shift(b, a)`` bit for bit.
    """
    a = np.asarray(hist_a, dtype=np.float64)
    b = np.asarray(hist_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"histograms must share a (k, bins) shape: {a.shape} vs {b.shape}")
    w = np.asarray(evr, dtype=np.float64).reshape(-1)
    if w.size != a.shape[0]:
        raise ValueError(f"evr has {w.size} entries for {a.shape[0]} components")
    per = w * (kl(a, b) + kl(b, a))
    return float(per.sum()), per


def shift_matrix(
    hists: Mapping[str, np.ndarray],
    evr: np.ndarray,
    both_orders: bool = True,
) -> list[tuple[str, str, float, np.ndarray]]:
    """Shifts between all pairs of groups: ``(group_a, group_b, total, per_component)``.

    Each unordered pair is computed once. With ``both_orders`` (default) every pair is
    emitted as (a, b) and (b, a) with identical values, so SQL can filter or average on
    ``group_a`` alone; otherwise only ``a < b``. The diagonal (always 0) is omitted.
    Rows are sorted by (group_a, group_b).
    """
    names = sorted(hists)
    rows: list[tuple[str, str, float, np.ndarray]] = []
    for a, b in combinations(names, 2):
        total, per = shift(hists[a], hists[b], evr)
        rows.append((a, b, total, per))
        if both_orders:
            rows.append((b, a, total, per.copy()))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def group_shifts(
    counts: Mapping[str, np.ndarray], sizes: Mapping[str, int], evr: np.ndarray, lo: float, hi: float, small: int
) -> list[tuple[str, str, float, np.ndarray, int, int, bool]]:
    """The ``shifts`` rows of one grouping from its groups' counts ``(components, bins)``:
    ``(group_a, group_b, shift, per_component, n_a, n_b, small)``, both orders, sorted.
    ``sizes``: filters per group; a pair is small when either group has fewer than ``small``."""
    hists = {label: normalised_histogram(c, lo, hi) for label, c in counts.items()}
    return [
        (a, b, total, per, int(sizes[a]), int(sizes[b]), bool(sizes[a] < small or sizes[b] < small))
        for a, b, total, per in shift_matrix(hists, evr)
    ]


def combine_ranges(ranges: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """The global (lo, hi) from per-batch or per-component (min, max) pairs.

    NaN/None entries (e.g. SQL NULL from an empty partition) are skipped. Raises if no
    finite value was seen at all.
    """
    lo, hi = float("inf"), float("-inf")
    for a, b in ranges:
        if a is not None and np.isfinite(a):
            lo = min(lo, float(a))
        if b is not None and np.isfinite(b):
            hi = max(hi, float(b))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("no finite coefficient in any batch: cannot choose a histogram range")
    return lo, hi
