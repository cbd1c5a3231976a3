"""The random level ``TH_k(n)`` that normalises the variance entropy of a layer of ``n``
k x k kernels, and the simulation that derives it (docs/definitions.md, *Random level*).

``TH_k(n) = L / (1 + exp(-K (log2 n - X0))) + B``. For k = 3 the constants are the
published fit of Gavrikov & Keuper ("min distribution": the lowest variance entropy of
random layers of n filters). For every other k they come from
:func:`random_level_fit.fit_random_level`: per n of a half-octave grid, the minimum
entropy over ``sim_trials`` layers of n
i.i.d. N(0, 1) kernels (one seeded torch generator per (seed, k, n)), fitted with the
same logistic by least squares. ``benchmarks/random_level.py`` re-runs it and prints the
table below; run for k = 3 it reproduces the published curve within the fit's own
residual error (``tests/test_quality_math.py``).

Pure numpy/torch/scipy, no Spark.
"""
from __future__ import annotations

import math
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
#: simulated with seed SIM_SEED, SIM_TRIALS trials, ``random_level_fit.sim_grid``).
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
