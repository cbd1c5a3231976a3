"""PCA of scaled k x k kernels from mergeable moments (pure numpy, float64).

A kernel is a row of ``d = k²`` weights (3x3 filters: ``d = 9``); every function takes
``d`` from its input's shape.

The distributed job computes :class:`FilterMoments` per batch/partition, merges them, and
finishes on the driver with
:func:`pca_from_moments`. Coefficients are produced per batch with :func:`project`, whose
result for a row does not depend on how rows were batched.

Precision: moments are accumulated about a reference point ``ref`` (``x - ref``). With
``ref = 0`` the covariance is ``(S2 - S1 S1ᵀ/n)/(n-1)``, which cancels catastrophically
when ``|mean|² >> variance``; choosing ``ref`` near the mean (any provisional estimate,
e.g. the mean of the first batch, see :func:`provisional_reference`) removes that loss.
Moments with different references merge by an exact-in-exact-arithmetic re-centring.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_WEIGHTS = 9  # weights of a 3x3 filter
_ROWS = 8192  # rows per block in project()


def _as_filters(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"expected an (n, d) array of kernels (d = k², 9 for 3x3), got shape {x.shape}")
    return x


def scale_filters(x: np.ndarray) -> np.ndarray:
    """Divide each kernel (row of an (n, d) array) by its own max |w|.

    All-zero rows are returned unchanged. Purely row-wise, so the result of a row is
    bit-identical whatever the batch split. Rows containing NaN are returned unchanged
    (NaN propagates); the output is always a new float64 array.
    """
    x = _as_filters(x)
    peak = np.max(np.abs(x), axis=1, keepdims=True) if x.shape[0] else np.ones((0, 1))
    out = x.copy()
    np.divide(x, peak, out=out, where=peak > 0)
    return out


@dataclass
class FilterMoments:
    """Mergeable first/second moments of filters about a reference point ``ref``.

    ``sum = Σ (x - ref)`` (d,), ``cross = Σ (x - ref)ᵀ (x - ref)`` (d, d), ``n`` rows.
    ``ref`` defaults to zeros (raw moments); ``d`` is ``sum``'s length.
    """

    n: int
    sum: np.ndarray
    cross: np.ndarray
    ref: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.n = int(self.n)
        self.sum = np.asarray(self.sum, dtype=np.float64).reshape(-1)
        d = self.sum.size
        self.cross = np.asarray(self.cross, dtype=np.float64).reshape(d, d)
        self.ref = np.zeros(d) if self.ref is None else np.asarray(self.ref, dtype=np.float64).reshape(d)

    @classmethod
    def zeros(cls, ref: np.ndarray | None = None, d: int = N_WEIGHTS) -> "FilterMoments":
        """The empty (identity) element for :meth:`merge` (``d`` weights, or ``ref``'s)."""
        d = d if ref is None else np.asarray(ref).size
        return cls(0, np.zeros(d), np.zeros((d, d)), ref)

    @property
    def mean(self) -> np.ndarray:
        return self.ref + self.sum / self.n

    def recentred(self, ref: np.ndarray) -> "FilterMoments":
        """The same moments expressed about another reference point."""
        ref = np.asarray(ref, dtype=np.float64).reshape(self.sum.size)
        if np.array_equal(ref, self.ref):
            return self
        d = self.ref - ref  # x - ref = (x - self.ref) + d
        s = self.sum + self.n * d
        cross = (
            self.cross
            + np.outer(self.sum, d)
            + np.outer(d, self.sum)
            + self.n * np.outer(d, d)
        )
        return FilterMoments(self.n, s, cross, ref)

    def merge(self, other: "FilterMoments") -> "FilterMoments":
        """Sum of two moment sets; ``other`` is re-centred onto ``self.ref`` if needed."""
        if other.n == 0:
            return self
        if self.n == 0:  # an empty set of another size (the default 3x3 identity) takes other's
            return other.recentred(self.ref if self.ref.size == other.ref.size else np.zeros(other.ref.size))
        o = other.recentred(self.ref)
        return FilterMoments(self.n + o.n, self.sum + o.sum, self.cross + o.cross, self.ref)

    __add__ = merge

    def covariance(self) -> np.ndarray:
        """Unbiased (n-1) covariance; shift-invariant, accurate when ``ref ≈ mean``."""
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 filters, got {self.n}")
        cov = (self.cross - np.outer(self.sum, self.sum) / self.n) / (self.n - 1)
        return (cov + cov.T) / 2


def moments(x: np.ndarray, ref: np.ndarray | None = None) -> FilterMoments:
    """Moments of an (n, d) batch about ``ref`` (default zeros)."""
    x = _as_filters(x)
    r = np.zeros(x.shape[1]) if ref is None else np.asarray(ref, dtype=np.float64)
    d = x - r
    return FilterMoments(x.shape[0], d.sum(axis=0), d.T @ d, r)


def provisional_reference(x: np.ndarray) -> np.ndarray:
    """A reference point for :func:`moments` from a sample (e.g. the first batch).

    The sample mean, rounded to 2**-10 so it is short, exactly representable and easy
    to pass into SQL literals. Any value near the population mean works.
    """
    x = _as_filters(x)
    if x.shape[0] == 0:
        return np.zeros(x.shape[1])
    return np.round(x.mean(axis=0) * 1024.0) / 1024.0


@dataclass
class PCABasis:
    """Principal components of the scaled filters (rows of ``components``)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    n_filters: int

    def transform(self, x_scaled: np.ndarray) -> np.ndarray:
        return project(x_scaled, self)

    @property
    def k(self) -> int:
        """The kernel side (``d = k²`` weights)."""
        return int(round(np.sqrt(self.components.shape[1])))

    def leading(self, n: int) -> "PCABasis":
        """The first ``n`` components (their variances and ratios of the total, not renormalised)."""
        return PCABasis(self.mean, self.components[:n], self.explained_variance[:n],
                        self.explained_variance_ratio[:n], self.n_filters)


def _fix_signs(components: np.ndarray) -> np.ndarray:
    """Make the largest-|value| entry of each row positive (first index on ties)."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.where(components[np.arange(components.shape[0]), idx] < 0, -1.0, 1.0)
    return components * signs[:, None]


def _basis_from_cov(cov: np.ndarray, mean: np.ndarray, n: int) -> PCABasis:
    cov = (cov + cov.T) / 2
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals, kind="stable")
    ev = np.clip(evals[order], 0.0, None)
    comps = _fix_signs(evecs[:, order].T.copy())
    total = ev.sum()
    ratio = ev / total if total > 0 else np.zeros_like(ev)
    return PCABasis(np.array(mean, dtype=np.float64), comps, ev, ratio, int(n))


def pca_from_moments(m: FilterMoments) -> PCABasis:
    """PCA basis from merged moments (centred covariance with n-1, as scikit-learn)."""
    return _basis_from_cov(m.covariance(), m.mean, m.n)


def pca_direct(x_scaled: np.ndarray) -> PCABasis:
    """In-memory reference: ``np.cov`` + ``eigh`` + the same ordering and sign rule."""
    x = _as_filters(x_scaled)
    if x.shape[0] < 2:
        raise ValueError(f"PCA needs at least 2 filters, got {x.shape[0]}")
    return _basis_from_cov(np.cov(x, rowvar=False), x.mean(axis=0), x.shape[0])


def project(x_scaled: np.ndarray, basis: PCABasis) -> np.ndarray:
    """Coefficients ``(x - mean) @ components.T``, (n, components).

    Evaluated as an explicit element-wise sum over the d weights in a fixed order (no
    BLAS), so each row's result is bit-identical however the rows are batched or laid
    out. Computed component-major (the result is the transposed view of a (9, n) array).
    """
    x = _as_filters(x_scaled)
    mean = np.asarray(basis.mean, dtype=np.float64)
    comp = np.asarray(basis.components, dtype=np.float64)
    k, n = comp.shape[0], x.shape[0]
    if comp.ndim != 2 or comp.shape[1] != x.shape[1]:
        raise ValueError(f"a basis of {comp.shape[-1]} weights cannot project kernels of {x.shape[1]}")
    out = np.empty((k, n))
    tmp = np.empty(min(n, _ROWS))
    d = np.empty((x.shape[1], min(n, _ROWS)))
    for s in range(0, n, _ROWS):  # cache-sized blocks; element-wise, so exact
        e = min(s + _ROWS, n)
        dd, t = d[:, : e - s], tmp[: e - s]
        np.subtract(x[s:e].T, mean[:, None], out=dd)
        for c in range(k):
            o = out[c, s:e]
            np.multiply(dd[0], comp[c, 0], out=o)
            for j in range(1, x.shape[1]):
                np.multiply(dd[j], comp[c, j], out=t)
                o += t
    return out.T
