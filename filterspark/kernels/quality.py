"""Data-free layer quality metrics for k x k convolution filters (Gavrikov & Keuper, CVPR 2022,
defined there for 3x3; the same formulas over k*k weights for every square k).

Pure torch, no Spark. Every function takes a raw (unscaled) conv weight ``W`` of shape
``(out, in/groups, kh, kw)``; its filters are the ``n = out * in/groups`` rows of
``W.reshape(n, kh*kw)``. All math runs in float64 on the weight's own device (CPU, CUDA),
whatever the input dtype (float16/bfloat16/float32/float64 are all exact in float64).

Definitions (docs/definitions.md, "Filter quality"):

* **Sparsity**: share of filters whose every ``|w| < threshold * max|W|``.
* **Variance entropy** ``H``: with ``s`` the singular values of the column-centred
  ``n x k²`` filter matrix, ``v = s^2/(n-1)``, ``p = v/sum(v)``, ``H = -sum p log10 p``
  (over ``p > 0``). Maximum ``log10(k²)`` (``~0.954`` for 3x3).
* **Normalised**: ``H / TH_k(n)`` with the random level of k x k kernels
  (:mod:`random_level`: the published fit for 3x3, simulated ones for other k; NaN
  for a k it has no constants for, or a non-square kernel).
* **Clean**: the same on the non-sparse filters only (normalised with ``TH(n_nonsparse)``).

Conventions for the corner cases (documented here once, tested in
``tests/test_quality_math.py``):

* All-zero layer: ``max|W| = 0``, so the strict rule would mark nothing; we follow the
  reference implementation and count *every* filter as sparse (sparsity 1.0).
* Fewer than 2 filters (raw) or fewer than 2 non-sparse filters (clean): no variance can
  be estimated, ``H = 0.0`` (the 0-variance convention).
* ``TH(n) <= 0`` for ``n <= 2`` (the fit is meaningless there), so the *normalised*
  entropies are NaN ("undefined") for ``n <= 2`` / ``n_nonsparse <= 2``; no
  entropy-based flag is raised on an undefined value. ``H`` is 0 for such layers anyway
  (rank of the centred matrix <= 1).
* Any NaN/Inf weight: every metric is NaN, all flags are False and
  ``LayerQuality.nonfinite_count`` says how many non-finite values there were. Callers
  must check it; NaN never leaks into aggregates (``model_quality`` skips such layers).
* Empty layer (``n == 0``): every metric NaN, all flags False.

Efficiency: the singular values are never computed by an SVD of the ``n x k²`` matrix;
``s^2`` are the eigenvalues of the ``k² x k²`` Gram matrix ``Xc.T @ Xc`` (one matmul + one
tiny ``eigvalsh``). No ``n x n`` matrix is ever formed. The entropy agrees with the SVD
route to far better than 1e-9 (tested); eigenvalues agree to ~1e-15 relative to the
largest one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

from filterspark.kernels.random_level import has_random_level, random_entropy_level

__all__ = [
    "QualityThresholds",
    "LayerQuality",
    "sparsity",
    "variance_entropy",
    "variance_entropy_norm",
    "variance_entropy_clean",
    "variance_entropy_clean_norm",
    "random_entropy_level",
    "layer_quality",
    "model_quality",
]

_NAN = float("nan")


# --------------------------------------------------------------------------- config


@dataclass
class QualityThresholds:
    """Configuration of the quality metrics and degeneration flags.

    The defaults are justified with measurements in README.md (*Filter quality*) and
    checked by ``tests/test_quality_math.py`` (i.i.d. layers) and ``tests/test_quality.py``
    (the demo zoo).

    Attributes:
        sparsity_threshold: a filter is sparse when all its ``|w|`` are strictly below
            this fraction of the layer's peak ``max|W|``. 0.01 is the published 1 % rule.
        random_entropy_norm: ``degenerate_random`` when the (raw) normalised variance
            entropy is ``>=`` this (and the layer has ``random_min_filters`` filters).
            i.i.d. random layers of 32 or more filters score 1.00-1.05 on average (1st
            percentile >= 0.995, spread <= 0.015), while trained layers stay below: the published
            pretrained ResNet-18's highest layer is 0.96 (raw 0.916 at n = 8192), the
            trained demo classifiers <= 0.92. 0.98 = "within 2 % of the random level".
        random_min_filters: the random flag needs at least this many filters. ``TH(n)``
            underestimates the entropy of i.i.d. layers for small n (their normalised
            mean is 1.31 at n = 8, 1.13 at n = 16, 1.07 at n = 24, 1.05 at n = 32, <= 1.025
            from n = 48), so a trained 8-filter first layer (1.20-1.26 in the demo zoo)
            cannot be told from a random one; from 32 on the level is right within 5 %.
        low_variety_entropy_norm: ``degenerate_low_variety`` when the *clean* normalised
            entropy (non-sparse filters only) is ``<`` this. Using the clean value keeps a
            mostly-zero layer from also being called low-variety merely because of its
            zeros. A layer whose filters are scaled copies of k equally strong patterns
            has ``H = log10 k``, i.e. a normalised entropy ``log10(k) / TH(n)``: 0 for one
            pattern; for two 0.33 at n = 64 and 0.32 for large n (0.36 at n = 32); for
            three 0.50-0.53 (n >= 64). 0.35 flags layers made of about two patterns or
            fewer (demo zoo: replicated layers 0.13-0.31, trained layers >= 0.39).
        sparse_share: ``degenerate_sparse`` when sparsity is ``>`` this. 0.5: most of
            the layer's filters are dead (trained demo layers have 0.0, the published
            ResNet-18 at most 0.125).
    """

    sparsity_threshold: float = 0.01
    random_entropy_norm: float = 0.98
    random_min_filters: int = 32
    low_variety_entropy_norm: float = 0.35
    sparse_share: float = 0.5

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "QualityThresholds":
        """Build from a mapping: ``None`` values keep the default; values are cast to the
        field's type (``int`` fields must be whole numbers).

        Unknown keys raise ``KeyError`` (a typo in a config must not pass silently).
        """
        if not d:
            return cls()
        kinds = {f.name: type(f.default) for f in fields(cls)}
        unknown = set(d) - set(kinds)
        if unknown:
            raise KeyError(f"unknown QualityThresholds keys: {sorted(unknown)}")
        out: dict[str, Any] = {}
        for k, v in d.items():
            if v is None:
                continue
            if kinds[k] is int:
                if float(v) != int(float(v)):
                    raise ValueError(f"{k} must be a whole number, got {v!r}")
                out[k] = int(float(v))
            else:
                out[k] = float(v)
        return cls(**out)


@dataclass
class LayerQuality:
    """Quality metrics of one conv layer (see module docstring for conventions)."""

    n_filters: int
    sparsity: float
    variance_entropy: float
    variance_entropy_norm: float
    variance_entropy_clean: float
    variance_entropy_clean_norm: float
    nonfinite_count: int
    degenerate_random: bool
    degenerate_sparse: bool
    degenerate_low_variety: bool

    @property
    def is_degenerate(self) -> bool:
        """True when any degeneration flag is raised."""
        return self.degenerate_random or self.degenerate_sparse or self.degenerate_low_variety

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python dict (ints, floats, bools) in field order."""
        return asdict(self)

    def as_row(self) -> dict[str, Any]:
        """Like :meth:`as_dict` but NaN (undefined) metrics become ``None``: a table row.

        SQL aggregates skip NULL but propagate NaN (and Spark orders NaN above every
        number), so an undefined metric must never reach a table as NaN.
        """
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- internals


def _kernel_size(weight) -> int | None:
    """k of a square ``(out, in/groups, k, k)`` weight; None when not square."""
    return int(weight.shape[2]) if weight.ndim == 4 and weight.shape[2] == weight.shape[3] else None


def _as_filters(weight: torch.Tensor) -> torch.Tensor:
    """Return the ``(n, kh*kw)`` float64 filter matrix on the weight's device."""
    if not isinstance(weight, torch.Tensor):
        weight = torch.as_tensor(weight)
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight (out, in/groups, kh, kw), got {tuple(weight.shape)}")
    w = weight.detach()
    if w.device.type == "mps":  # no float64 on MPS
        w = w.cpu()
    k = w.shape[2] * w.shape[3]
    return w.reshape(-1, k).to(torch.float64)


def _nonfinite(x: torch.Tensor) -> int:
    """Number of NaN/Inf entries (one cheap reduction when everything is finite)."""
    if x.numel() == 0 or bool(torch.isfinite(x.sum()).item()):
        return 0  # a finite sum implies finite entries
    return int((~torch.isfinite(x)).sum().item())  # may be 0 if only the sum overflowed


def _sparse_mask(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean mask of sparse filters (rows). All-zero layer: every filter is sparse."""
    lo, hi = torch.aminmax(x, dim=1)
    row_peak = torch.maximum(hi, -lo)  # max |w| per filter, without an n x k² temporary
    peak = row_peak.max()
    if peak.item() == 0.0:
        return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return row_peak < threshold * peak  # every |w| < t  <=>  max |w| < t


def _variances(x: torch.Tensor) -> torch.Tensor:
    """Squared singular values of the column-centred ``x`` (ascending), via the k²xk² Gram matrix,
    up to a common power-of-two factor.

    ``x`` is first divided by a power of two near its peak (exact; the entropy only needs
    the ratios), so neither huge (~1e308) nor tiny weights over/underflow the squares.
    """
    lo, hi = torch.aminmax(x)
    peak = torch.maximum(hi, -lo)
    if peak.item() > 0.0:
        xc = x / torch.ldexp(torch.ones_like(peak), torch.frexp(peak).exponent)
    else:
        xc = x.clone()
    xc -= xc.mean(dim=0, keepdim=True)
    gram = xc.T @ xc  # (k, k): s^2 are its eigenvalues
    return torch.linalg.eigvalsh(gram).clamp_min(0.0)


def _entropy_from_variances(v: torch.Tensor) -> float:
    """``-sum p log10 p`` with ``p = v / sum(v)`` over ``p > 0``; 0 when ``sum(v) == 0``."""
    total = v.sum()
    if total.item() <= 0.0:
        return 0.0
    p = v / total
    p = p[p > 0]
    return float(-(p * torch.log10(p)).sum().item())


def _entropy(x: torch.Tensor) -> float:
    """Variance entropy of a float64 filter matrix; 0 for fewer than 2 filters."""
    if x.shape[0] < 2:
        return 0.0
    return _entropy_from_variances(_variances(x))


def _norm(h: float, n: int, k: int | None = 3) -> float:
    """``h / TH_k(n)``; NaN where ``TH_k(n) <= 0`` (tiny n), ``h`` is NaN or k has no level."""
    if n < 1 or math.isnan(h) or k is None or not has_random_level(k):
        return _NAN
    th = random_entropy_level(n, k)
    return h / th if th > 0 else _NAN


# --------------------------------------------------------------------------- public metrics


def sparsity(weight: torch.Tensor, threshold: float = 0.01) -> float:
    """Share of filters whose every ``|w| < threshold * max|W|`` (strict).

    All-zero layer → 1.0 (every filter counts as sparse). NaN for non-finite or empty weights.
    """
    x = _as_filters(weight)
    if x.shape[0] == 0 or _nonfinite(x):
        return _NAN
    return float(_sparse_mask(x, threshold).double().mean().item())


def variance_entropy(weight: torch.Tensor) -> float:
    """Raw variance entropy ``H`` (log10). 0 when total variance is 0 or n < 2 (one filter)."""
    x = _as_filters(weight)
    if x.shape[0] == 0 or _nonfinite(x):
        return _NAN
    return _entropy(x)


def variance_entropy_norm(weight: torch.Tensor) -> float:
    """``H / TH_k(n)``; NaN for tiny n (``TH`` not positive), non-finite weights or a k without a level."""
    x = _as_filters(weight)
    if x.shape[0] == 0 or _nonfinite(x):
        return _NAN
    return _norm(_entropy(x), x.shape[0], _kernel_size(weight))


def _clean(x: torch.Tensor, threshold: float, k: int | None) -> tuple[float, float]:
    keep = x[~_sparse_mask(x, threshold)]
    h = _entropy(keep)
    return h, _norm(h, keep.shape[0], k)


def variance_entropy_clean(weight: torch.Tensor, threshold: float = 0.01) -> float:
    """Raw variance entropy of the non-sparse filters; 0.0 when fewer than 2 remain."""
    x = _as_filters(weight)
    if x.shape[0] == 0 or _nonfinite(x):
        return _NAN
    return _clean(x, threshold, _kernel_size(weight))[0]


def variance_entropy_clean_norm(weight: torch.Tensor, threshold: float = 0.01) -> float:
    """Clean entropy over ``TH(n_nonsparse)``; NaN when 2 or fewer non-sparse filters remain."""
    x = _as_filters(weight)
    if x.shape[0] == 0 or _nonfinite(x):
        return _NAN
    return _clean(x, threshold, _kernel_size(weight))[1]


def layer_quality(weight: torch.Tensor, thresholds: QualityThresholds | None = None) -> LayerQuality:
    """All metrics and flags of one layer: one float64 copy, one k²xk² eigen-solve (two with sparse filters).

    Flags: ``degenerate_random`` = normalised entropy ``>= random_entropy_norm`` on a
    layer of at least ``random_min_filters`` filters;
    ``degenerate_low_variety`` = clean normalised entropy ``< low_variety_entropy_norm``;
    ``degenerate_sparse`` = sparsity ``> sparse_share``. NaN metrics never raise a flag.
    """
    t = thresholds or QualityThresholds()
    x = _as_filters(weight)
    k = _kernel_size(weight)
    n = int(x.shape[0])
    bad = _nonfinite(x)
    if n == 0 or bad:
        return LayerQuality(n, _NAN, _NAN, _NAN, _NAN, _NAN, bad, False, False, False)

    mask = _sparse_mask(x, t.sparsity_threshold)
    n_sparse = int(mask.sum().item())
    h = _entropy(x)
    h_norm = _norm(h, n, k)
    if n_sparse == 0:  # clean == raw: reuse, no second solve
        hc, hc_norm = h, h_norm
    else:
        keep = x[~mask]
        hc = _entropy(keep)
        hc_norm = _norm(hc, keep.shape[0], k)
    sp = n_sparse / n
    return LayerQuality(
        n_filters=n,
        sparsity=sp,
        variance_entropy=h,
        variance_entropy_norm=h_norm,
        variance_entropy_clean=hc,
        variance_entropy_clean_norm=hc_norm,
        nonfinite_count=0,
        degenerate_random=bool(n >= t.random_min_filters and h_norm >= t.random_entropy_norm),  # False for NaN
        degenerate_sparse=bool(sp > t.sparse_share),
        degenerate_low_variety=bool(hc_norm < t.low_variety_entropy_norm),  # False for NaN
    )


# --------------------------------------------------------------------------- model roll-up


def _margins(q: LayerQuality, t: QualityThresholds) -> dict[str, float]:
    """How far past its threshold each raised flag is, relative to the threshold's range.

    sparse: ``(sparsity - sparse_share) / (1 - sparse_share)``;
    low_variety: ``(thr - clean_norm) / thr``; random: ``(norm - thr) / thr``.
    """
    out: dict[str, float] = {}
    if q.degenerate_sparse:
        out["sparse"] = (q.sparsity - t.sparse_share) / max(1.0 - t.sparse_share, 1e-12)
    if q.degenerate_low_variety:
        thr = t.low_variety_entropy_norm
        out["low_variety"] = (thr - q.variance_entropy_clean_norm) / max(thr, 1e-12)
    if q.degenerate_random:
        thr = t.random_entropy_norm
        out["random"] = (q.variance_entropy_norm - thr) / max(thr, 1e-12)
    return out


def _mean(xs: list[float]) -> float | None:
    return float(sum(xs) / len(xs)) if xs else None


def model_quality(layers: list[LayerQuality], thresholds: QualityThresholds | None = None) -> dict[str, Any]:
    """Per-model roll-up of its 3x3 layers (in layer order), JSON-able (floats/ints/None).

    Layers with non-finite weights (or no filters) are counted in ``nonfinite_layers`` /
    ``n_layers_3x3`` but excluded from every mean, min, max and share; NaN normalised
    entropies (n <= 2) are likewise skipped in the entropy statistics. Shares are over the
    evaluated (finite, non-empty) layers; ``None`` when there is nothing to aggregate.

    ``worst_layer_index``: among layers with any flag raised, the one with the most flags,
    ties broken by the largest severity (how far past its threshold the worst flag is, see
    ``_margins``; pass the same ``thresholds`` used for ``layer_quality``), then the lowest
    index. ``None`` when no layer is degenerate. ``worst_layer_reason`` names its most
    severe flag (``"sparse"``, ``"low_variety"`` or ``"random"``).
    """
    t = thresholds or QualityThresholds()
    ok = [q for q in layers if q.nonfinite_count == 0 and q.n_filters > 0 and not math.isnan(q.sparsity)]
    norms = [q.variance_entropy_norm for q in ok if not math.isnan(q.variance_entropy_norm)]
    clean_norms = [q.variance_entropy_clean_norm for q in ok if not math.isnan(q.variance_entropy_clean_norm)]
    spars = [q.sparsity for q in ok]
    m = len(ok)

    def share(flag: str) -> float | None:
        return float(sum(bool(getattr(q, flag)) for q in ok) / m) if m else None

    worst: int | None = None
    reason: str | None = None
    best_key: tuple[int, float] | None = None
    for i, q in enumerate(layers):
        margins = _margins(q, t)
        if not margins:
            continue
        key = (len(margins), max(margins.values()))
        if best_key is None or key > best_key:
            best_key, worst = key, i
            reason = max(margins, key=margins.__getitem__)

    return {
        "n_layers_3x3": len(layers),
        "n_layers_evaluated": m,
        "mean_variance_entropy_norm": _mean(norms),
        "min_variance_entropy_norm": float(min(norms)) if norms else None,
        "mean_variance_entropy_clean_norm": _mean(clean_norms),
        "mean_sparsity": _mean(spars),
        "max_sparsity": float(max(spars)) if spars else None,
        "share_random": share("degenerate_random"),
        "share_sparse": share("degenerate_sparse"),
        "share_low_variety": share("degenerate_low_variety"),
        "share_degenerate": float(sum(q.is_degenerate for q in ok) / m) if m else None,
        "nonfinite_layers": sum(1 for q in layers if q.nonfinite_count > 0),
        "worst_layer_index": worst,
        "worst_layer_reason": reason,
    }
