"""The simulation behind the k x k random levels of :mod:`random_level` (docs/definitions.md,
*Random level*): minimum variance entropies of i.i.d. Gaussian layers and the logistic fit.
Used by ``benchmarks/random_level.py`` and the tests, never by extraction. Pure numpy/torch/scipy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from filterspark.kernels.quality import variance_entropy
from filterspark.kernels.random_level import (
    PUBLISHED_3X3, SIM_MAX_LOG2, SIM_MIN_TRIALS, SIM_SEED, SIM_TRIAL_WEIGHTS, SIM_TRIALS, logistic_level,
)


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
