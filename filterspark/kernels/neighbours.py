"""Nearest models by the shift between their whole histograms (pure numpy).

With every bin of a normalised histogram positive (empty bins are float32 eps), the
symmetric KL divergence of one component is ``Σ_b (p_b - q_b)(log p_b - log q_b)``, so a
block of models against all models is one broadcast array expression; a Spark task
computes one block of rows and keeps each row's ``k`` nearest.
"""
from __future__ import annotations

import numpy as np

#: Bytes of the (rows, models, components, bins) difference array one block may use.
BLOCK_BYTES = 64 << 20


def block_rows(n_models: int, width: int) -> int:
    """Rows per block so that a block's difference array stays within :data:`BLOCK_BYTES`."""
    return max(1, BLOCK_BYTES // max(1, 8 * n_models * width))


def pair_shifts(hists: np.ndarray, rows: np.ndarray, evr: np.ndarray) -> np.ndarray:
    """Shifts ``(len(rows), M)`` between models ``rows`` and all ``M`` models.

    ``hists``: normalised histograms ``(M, components, bins)`` (all bins > 0), as
    :func:`shifts.normalised_histogram` makes them; the value for a pair equals
    :func:`shifts.shift` of the two to rounding.
    """
    p = np.asarray(hists, np.float64)
    logs = np.log(p)
    w = np.asarray(evr, np.float64).reshape(-1)
    d = p[rows, None] - p[None, :]
    d *= logs[rows, None] - logs[None, :]
    return d.sum(axis=-1) @ w


def nearest(hists: np.ndarray, rows: np.ndarray, evr: np.ndarray, k: int) -> list[tuple[int, int, int, float]]:
    """``(row, rank, neighbour, shift)`` of each of ``rows``' ``k`` nearest other models
    (rank 1 nearest; ties by index)."""
    rows = np.asarray(rows, np.intp)
    if rows.size == 0:
        return []
    s = pair_shifts(hists, rows, evr)
    s[np.arange(rows.size), rows] = np.inf  # a model is not its own neighbour
    s[np.isnan(s)] = np.inf
    out = []
    m = s.shape[1]
    for i, row in enumerate(rows):
        order = np.lexsort((np.arange(m), s[i]))[: min(k, m - 1)]
        out += [(int(row), rank, int(j), float(s[i, j])) for rank, j in enumerate(order, 1) if np.isfinite(s[i, j])]
    return out
