"""The random level ``TH_k(n)`` that normalises the variance entropy of a layer of ``n``
k x k kernels, and the simulation that derives it (docs/definitions.md, *Random level*).

``TH_k(n) = L / (1 + exp(-K (log2 n - X0))) + B``. For k = 3 the constants are the
published fit of Gavrikov & Keuper ("min distribution": the lowest variance entropy of
random layers of n filters). For every other k they come from :func:`fit_random_level`:
per n of a half-octave grid, the minimum entropy over :func:`sim_trials` layers of n
i.i.d. N(0, 1) kernels (one seeded torch generator per (seed, k, n)), fitted with the
same logistic by least squares. ``benchmarks/random_level.py`` re-runs it and prints the
table below; run for k = 3 it reproduces the published curve within the fit's own
residual error (``tests/test_quality_math.py``).

Pure numpy/torch/scipy, no Spark.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The published 3x3 fit ``(L, K, X0, B)``.
PUBLISHED_3X3 = (1.2618047, 0.88767525, 2.30436435, -0.31050834)

#: Simulation settings of the table (``benchmarks/random_level.py`` defaults).
SIM_SEED = 0
SIM_TRIALS = 300
#: Weights per size above which fewer layers are drawn (see :func:`sim_trials`).
SIM_TRIAL_WEIGHTS = 1 << 16
SIM_MIN_TRIALS = 30
#: log2 of the largest n simulated: 13 for k <= 3, one more per doubling of k*k/9, at most 15.
SIM_MAX_LOG2 = 15

#: ``k -> (L, K, X0, B)``: the level of every k the table knows (3: published; the others
#: simulated with seed SIM_SEED, SIM_TRIALS trials, :func:`sim_grid`).
RANDOM_LEVEL_FITS: dict[int, tuple[float, float, float, float]] = {
    3: PUBLISHED_3X3,
    2: (2.7045354, 0.65764184, -0.14251636, -2.1014264),
    4: (1.604357, 0.78885604, 2.164738, -0.40204605),
    5: (1.9597953, 0.74437982, 2.1656703, -0.56268961),
    6: (1.8870211, 0.72057559, 2.586357, -0.33011261),
    7: (1.8787703, 0.7110865, 2.9577731, -0.1873837),
    8: (2.0234814, 0.67353003, 3.0505708, -0.21394181),
    9: (2.1147021, 0.64982419, 3.2101751, -0.20077754),
    10: (2.1824246, 0.62669966, 3.3640568, -0.17452724),
    11: (2.2337393, 0.61402072, 3.5334203, -0.14138077),
}


def logistic_level(log2_n, fit: tuple[float, float, float, float]):
    """``L / (1 + exp(-K (log2 n - X0))) + B`` (scalars or numpy arrays)."""
    big_l, k, x0, b = fit
    return big_l / (1.0 + np.exp(-k * (log2_n - x0))) + b


def random_entropy_level(n: int, k: int = 3) -> float:
    """``TH_k(n)``: the random-level entropy of a layer of ``n`` k x k kernels.

    ``<= 0`` for tiny n (the fit is meaningless there); ``ValueError`` for n < 1 and for a
    k the table has no constants for (extend it with ``benchmarks/random_level.py``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fit = RANDOM_LEVEL_FITS.get(k)
    if fit is None:
        raise ValueError(f"no random level for {k}x{k} kernels (known: {sorted(RANDOM_LEVEL_FITS)})")
    big_l, kk, x0, b = fit
    return big_l / (1.0 + math.exp(-kk * (math.log2(n) - x0))) + b


def has_random_level(k: int) -> bool:
    """Whether :func:`random_entropy_level` knows k x k kernels."""
    return k in RANDOM_LEVEL_FITS


def sim_grid(k: int) -> list[int]:
    """The layer sizes n simulated for k x k kernels: 4 to 2**m on a half-octave grid,
    m = 13 + ceil(log2(k*k/9)) (the curve saturates later for more weights), m <= 15."""
    extra = max(0, math.ceil(math.log2(k * k / 9))) if k > 3 else 0
    top = min(13 + extra, SIM_MAX_LOG2)
    return sorted({int(round(2 ** (e / 2))) for e in range(4, 2 * top + 1)})


def sim_trials(n: int, k: int, trials: int = SIM_TRIALS) -> int:
    """Layers drawn for size n: ``trials`` up to ``n*k*k = SIM_TRIAL_WEIGHTS`` weights, then
    proportionally fewer (at least SIM_MIN_TRIALS). Large layers scatter so little (the
    entropy's spread falls like 1/n) that their minimum barely depends on the count, and
    this bounds the cost of every size."""
    return max(min(trials, SIM_MIN_TRIALS), min(trials, trials * SIM_TRIAL_WEIGHTS // (n * k * k)))


def minimum_entropies(k: int, sizes: list[int], trials: int = SIM_TRIALS, seed: int = SIM_SEED) -> np.ndarray:
    """Per n of ``sizes``: the lowest variance entropy of :func:`sim_trials` layers of n
    i.i.d. N(0, 1) k x k kernels (float64; generator seeded by (seed, k, n))."""
    import torch

    from filterspark.kernels.quality import variance_entropy

    out = []
    for n in sizes:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + k * 100_003 + n)
        out.append(min(
            variance_entropy(torch.randn(n, 1, k, k, generator=generator, dtype=torch.float64))
            for _ in range(sim_trials(n, k, trials))
        ))
    return np.array(out)


@dataclass
class LevelFit:
    """A fitted random level: constants, their standard errors, the data and residual."""

    k: int
    fit: tuple[float, float, float, float]
    stderr: tuple[float, float, float, float]
    sizes: list[int]
    minima: np.ndarray
    residual_rms: float  # of the minima about the fitted curve

    def residual_rms_of(self, other: tuple[float, float, float, float]) -> float:
        """RMS of the same minima about another curve (e.g. the published one)."""
        return float(np.sqrt(np.mean((self.minima - logistic_level(np.log2(self.sizes), other)) ** 2)))


def fit_random_level(k: int, trials: int = SIM_TRIALS, seed: int = SIM_SEED,
                     sizes: list[int] | None = None) -> LevelFit:
    """Simulate the minimum entropies of ``k`` over :func:`sim_grid` and fit the logistic
    (least squares, started from the published 3x3 constants shifted to k*k weights)."""
    from scipy.optimize import curve_fit

    sizes = sizes or sim_grid(k)
    minima = minimum_entropies(k, sizes, trials, seed)
    x = np.log2(np.array(sizes, dtype=np.float64))
    top = math.log10(k * k)
    start = (top + 0.31, PUBLISHED_3X3[1], PUBLISHED_3X3[2] + math.log2(k * k / 9), -0.31)
    params, cov = curve_fit(lambda t, a, b, c, d: logistic_level(t, (a, b, c, d)), x, minima, p0=start, maxfev=50_000)
    residual = minima - logistic_level(x, tuple(params))
    return LevelFit(k, tuple(float(p) for p in params), tuple(float(s) for s in np.sqrt(np.diag(cov))), list(sizes),
                    minima, float(np.sqrt(np.mean(residual**2))))
