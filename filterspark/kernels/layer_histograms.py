"""Per-layer coefficient histograms (pure numpy): the additive unit every grouping is built from.

A group's published 70-bin counts are the sum of its layers' counts on the same basis,
range and bins, so the analysis keeps them per ``(model_id, layer_index)`` and any
grouping of layers becomes a sum plus the shift formula. Besides the in-range bins
``0 .. bins-1`` each layer and component counts the coefficients below the range
(bin ``-1``) and above it (bin ``bins``): a run on a frozen range (``analyze
--incremental``) leaves them out of the histogram as ``np.histogram`` does, and says how
many. Per layer and component it also keeps the coefficient count, sum, sum of squares,
min and max, so any group's mean and standard deviation are exact too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from filterspark.kernels.pca import N_WEIGHTS

#: Bin index of coefficients below / above the range (``bins`` is the one above).
BELOW = -1


@dataclass
class LayerHistogram:
    """One layer's counts ``(components, bins + 2)`` (column 0: below, last: above) and
    per-component sums."""

    counts: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def zeros(cls, bins: int, k: int = N_WEIGHTS) -> "LayerHistogram":
        return cls(np.zeros((k, bins + 2), np.int64), np.zeros(k), np.zeros(k), np.full(k, np.inf), np.full(k, -np.inf))

    @property
    def n(self) -> int:
        """Filters of the layer (each has one coefficient per component)."""
        return int(self.counts[0].sum())

    @property
    def in_range(self) -> np.ndarray:
        """The published counts ``(components, bins)`` (out-of-range values left out)."""
        return self.counts[:, 1:-1]

    def add(self, other: "LayerHistogram") -> None:
        self.counts += other.counts
        self.total += other.total
        self.total_sq += other.total_sq
        np.minimum(self.low, other.low, out=self.low)
        np.maximum(self.high, other.high, out=self.high)


def extended_bin_ids(coarse: np.ndarray, coeffs: np.ndarray, lo: float, bins: int) -> np.ndarray:
    """``shifts.bin_ids_2d`` ids (``component * bins + bin``, ``k * bins`` outside) →
    ``component * (bins + 2) + bin + 1`` with below-range values at bin ``-1`` and
    above-range ones at ``bins``: shape (n, k)."""
    n, k = coarse.shape
    comp = np.arange(k, dtype=np.intp)
    ext = coarse + (2 * comp + 1)
    outside = coarse == k * bins
    if outside.any():
        rows, cols = np.nonzero(outside)
        below = coeffs[rows, cols] < lo
        ext[rows, cols] = cols * (bins + 2) + np.where(below, 0, bins + 1)
    return ext


def _layer_runs(model_ids: np.ndarray, layer_index: np.ndarray):
    """The batch's distinct (model, layer) keys ``(L, 2)``, each row's key code, the row
    order that sorts the codes (None when they are sorted already, the usual case: files
    hold a model's layers in order) and where each key's run starts in that order."""
    models, m_code = np.unique(model_ids, return_inverse=True)
    span = int(layer_index.max()) + 1 if layer_index.size else 1
    flat = m_code.reshape(-1).astype(np.int64) * span + layer_index
    if flat.size < 2 or (flat[1:] >= flat[:-1]).all():
        order = None
        sorted_flat = flat
    else:
        order = np.argsort(flat, kind="stable")
        sorted_flat = flat[order]
    starts = np.flatnonzero(np.r_[True, sorted_flat[1:] != sorted_flat[:-1]])
    keys_flat = sorted_flat[starts]
    run_code = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, flat.size]))
    if order is None:
        code = run_code
    else:
        code = np.empty_like(run_code)
        code[order] = run_code
    uniq = np.stack([models[keys_flat // span], keys_flat % span], axis=1)
    return uniq, code, order, starts


@dataclass
class LayerAccumulator:
    """Accumulates one task's batches per ``(model_id, layer_index)``."""

    bins: int
    layers: dict[tuple[int, int], LayerHistogram] = field(default_factory=dict)

    def add(self, model_ids: np.ndarray, layer_index: np.ndarray, coeffs: np.ndarray, ext_ids: np.ndarray) -> None:
        """Add a batch: its rows' model ids and layer indices, coefficients (n, k) and
        :func:`extended_bin_ids`."""
        n, k = coeffs.shape
        if n == 0:
            return
        uniq, code, order, starts = _layer_runs(np.asarray(model_ids, np.int64), np.asarray(layer_index, np.int64))
        width = k * (self.bins + 2)
        counts = np.bincount((code[:, None] * width + ext_ids).reshape(-1), minlength=len(uniq) * width)
        counts = counts.reshape(len(uniq), k, self.bins + 2)
        sorted_coeffs = coeffs if order is None else coeffs[order]
        low = np.minimum.reduceat(sorted_coeffs, starts, axis=0)
        high = np.maximum.reduceat(sorted_coeffs, starts, axis=0)
        total = np.add.reduceat(sorted_coeffs, starts, axis=0)
        total_sq = np.add.reduceat(sorted_coeffs * sorted_coeffs, starts, axis=0)
        for j, (m, layer) in enumerate(uniq):
            part = LayerHistogram(counts[j].astype(np.int64), total[j], total_sq[j], low[j], high[j])
            mine = self.layers.get((int(m), int(layer)))
            if mine is None:
                self.layers[(int(m), int(layer))] = part
            else:
                mine.add(part)

    def merge(self, other: "LayerAccumulator") -> "LayerAccumulator":
        """Add another task's layers into this one (in place; returns self)."""
        for key, h in other.layers.items():
            mine = self.layers.get(key)
            if mine is None:
                self.layers[key] = h
            else:
                mine.add(h)
        return self

    def columns(self) -> dict[str, np.ndarray]:
        """The flat rows of every layer, component and non-zero bin (bin ``-1`` and ``bins``
        for the out-of-range counts), with the layer-component's ``n_filters``,
        ``coef_sum``, ``coef_sumsq``, ``coef_min`` and ``coef_max`` on each of its rows."""
        keys = sorted(self.layers)
        if not keys:
            empty_i = np.empty(0, np.int64)
            empty_f = np.empty(0)
            return {"model_id": empty_i, "layer_index": empty_i.astype(np.int32), "component": empty_i.astype(np.int32),
                    "bin": empty_i.astype(np.int32), "count": empty_i, "n_filters": empty_i, "coef_sum": empty_f,
                    "coef_sumsq": empty_f, "coef_min": empty_f, "coef_max": empty_f}
        counts = np.stack([self.layers[key].counts for key in keys])  # (L, k, bins + 2)
        L, k, width = counts.shape
        layer_i, comp_i, bin_i = np.nonzero(counts)
        per = {name: np.stack([getattr(self.layers[key], attr) for key in keys])
               for name, attr in (("coef_sum", "total"), ("coef_sumsq", "total_sq"), ("coef_min", "low"), ("coef_max", "high"))}
        n_filters = counts[:, 0, :].sum(axis=1)
        ids = np.asarray(keys, np.int64)
        return {
            "model_id": ids[layer_i, 0],
            "layer_index": ids[layer_i, 1].astype(np.int32),
            "component": comp_i.astype(np.int32),
            "bin": (bin_i - 1).astype(np.int32),
            "count": counts[layer_i, comp_i, bin_i],
            "n_filters": n_filters[layer_i],
            **{name: values[layer_i, comp_i] for name, values in per.items()},
        }

