"""Independent numpy implementation of the published layer-quality formulas (test helper).

Written from docs/definitions.md, not from filterspark.kernels.quality: a full SVD of the
centred n x 9 matrix instead of the 9x9 Gram eigen-solve, numpy instead of torch.
"""

from __future__ import annotations

import numpy as np


def ref_th(n: int) -> float:
    """Published random-level fit TH(n)."""
    return 1.2618047 / (1.0 + np.exp(-0.88767525 * (np.log2(n) - 2.30436435))) - 0.31050834


def ref_entropy(f: np.ndarray) -> float:
    """Published definition via a full SVD of the centred n x 9 matrix."""
    if len(f) < 2:
        return 0.0
    s = np.linalg.svd(f - f.mean(axis=0), compute_uv=False)
    v = s**2 / (len(f) - 1)
    if v.sum() == 0:
        return 0.0
    p = v / v.sum()
    p = p[p > 0]
    return float(-(p * np.log10(p)).sum())


def ref_norm(h: float, n: int, th=ref_th) -> float:
    """H / TH(n); NaN (undefined) where TH(n) <= 0 (n <= 2 for the published fit)."""
    level = th(n) if n >= 1 else 0.0
    return h / level if level > 0 else float("nan")


def ref_metrics(w: np.ndarray, eps: float = 0.01, width: int = 9, th=ref_th) -> dict[str, float]:
    """The five layer metrics of a weight (any shape whose size is a multiple of ``width``,
    the weights per kernel; ``th`` the random level of that kernel size)."""
    f = np.asarray(w, dtype=np.float64).reshape(-1, width)
    peak = np.abs(f).max()
    t = peak * eps if peak > 0 else np.inf  # all-zero layer: every filter sparse
    sparse = np.all(np.abs(f) < t, axis=1)
    h, hc = ref_entropy(f), ref_entropy(f[~sparse])
    return {
        "sparsity": float(sparse.mean()),
        "variance_entropy": h,
        "variance_entropy_norm": ref_norm(h, len(f), th),
        "variance_entropy_clean": hc,
        "variance_entropy_clean_norm": ref_norm(hc, int((~sparse).sum()), th),
    }
