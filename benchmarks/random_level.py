"""Derive the random level ``TH_k(n)`` of k x k kernels by simulation (docs/definitions.md).

    python benchmarks/random_level.py                 # k = 2, 4..11: the table in kernels/random_level.py
    python benchmarks/random_level.py --k 3           # the check against the published 3x3 fit
    python benchmarks/random_level.py --k 13,31       # extend the table to other sizes

Per k: the minimum variance entropy of ``--trials`` layers of n i.i.d. N(0, 1) kernels
for every n of ``random_level.sim_grid(k)``, fitted with the published logistic
(``random_level.fit_random_level``). Prints each fit with its standard errors and
residual RMS, then the ``RANDOM_LEVEL_FITS`` entries to paste into
``filterspark/kernels/random_level.py`` and the table rows of docs/definitions.md.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from filterspark.kernels.random_level import PUBLISHED_3X3, SIM_SEED, SIM_TRIALS, logistic_level
from filterspark.kernels.random_level_fit import fit_random_level
from filterspark.kernels.shapes import ALL_KERNEL_SIZES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", default=None, help="comma list of sizes (default: 2, 4..11; 3 checks the published fit)")
    parser.add_argument("--trials", type=int, default=SIM_TRIALS, help=f"layers per n (default {SIM_TRIALS})")
    parser.add_argument("--seed", type=int, default=SIM_SEED, help=f"seed (default {SIM_SEED})")
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.k.split(",")] if args.k else list(ALL_KERNEL_SIZES)
    if any(k < 2 for k in sizes):
        parser.error("--k: sizes must be at least 2")
    torch.set_num_threads(1)
    fits = []
    for k in sizes:
        started = time.perf_counter()
        fit = fit_random_level(k, args.trials, args.seed)
        fits.append(fit)
        print(f"k={k}: n {fit.sizes[0]}..{fit.sizes[-1]} ({len(fit.sizes)} sizes), L K X0 B = "
              f"{', '.join(f'{p:.6g}' for p in fit.fit)} (stderr {', '.join(f'{s:.2g}' for s in fit.stderr)}), "
              f"residual RMS {fit.residual_rms:.4f}, {time.perf_counter() - started:.1f} s", flush=True)
        if k == 3:
            x = np.log2(fit.sizes)
            gap = np.abs(logistic_level(x, fit.fit) - logistic_level(x, PUBLISHED_3X3)).max()
            print(f"  published 3x3 fit: residual RMS {fit.residual_rms_of(PUBLISHED_3X3):.4f} on these minima, "
                  f"largest gap to the simulated curve {gap:.4f}")
    print("\nRANDOM_LEVEL_FITS entries:")
    for fit in fits:
        if fit.k != 3:
            print(f"    {fit.k}: ({', '.join(f'{p:.8g}' for p in fit.fit)}),")
    print("\ndocs/definitions.md rows:")
    for fit in fits:
        print(f"| {fit.k} | {' | '.join(f'{p:.6g}' for p in fit.fit)} | {fit.residual_rms:.4f} | "
              f"{fit.sizes[0]}–{fit.sizes[-1]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
