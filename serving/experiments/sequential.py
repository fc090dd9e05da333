"""Always-valid confidence sequences for a difference of means (normal mixture).

The asymptotic confidence sequence of Waudby-Smith et al. (2021) with the
normal-mixture boundary of Howard, Ramdas, McAuliffe & Sekhon ("Time-uniform,
nonparametric, nonasymptotic confidence sequences", Annals of Statistics 2021),
in the form GrowthBook documents: with ``n`` units, σ̂² = n·se² the per-unit
variance of the estimate and mixture parameter ρ,

    half-width = σ̂ · sqrt( 2(nρ² + 1) / (n²ρ²) · log( sqrt(nρ² + 1) / α ) ).

ρ is tuned so the sequence is tightest at a planned number of units n*:
ρ² = (−2 log α + log(−2 log α + 1)) / n*. Invariant: the interval covers the
true effect at *every* look simultaneously with probability ≥ 1 − α
(asymptotically), so the report may be read daily without inflating errors;
it is wider than the fixed-horizon interval at any one look.
"""

from __future__ import annotations

import math

import numpy as np


def mixture_rho(planned_n: float, alpha: float) -> float:
    """The mixture parameter ρ that makes the sequence tightest at ``planned_n`` units."""
    if not planned_n > 0 or not 0 < alpha < 1:
        raise ValueError(f"mixture_rho needs planned_n > 0 and 0 < alpha < 1, got {planned_n}, {alpha}")
    a = -2.0 * math.log(alpha)
    return math.sqrt((a + math.log(a + 1.0)) / planned_n)


def cs_halfwidth(se, n, alpha: float, rho: float):
    """Half-width of the confidence sequence for an estimate with standard error ``se`` from ``n`` units."""
    se = np.asarray(se, dtype=float)
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = se * np.sqrt(n)
        nr2 = n * rho * rho
        out = sigma * np.sqrt(2.0 * (nr2 + 1.0) / (n * n * rho * rho) * np.log(np.sqrt(nr2 + 1.0) / alpha))
    return out if out.ndim else float(out)


def always_valid_pvalue(diff, se, n, rho: float):
    """The smallest α at which the sequence (with this ρ) excludes 0: an always-valid p-value.

    Solving ``|diff| = half-width(α)`` for α gives
    ``min(1, sqrt(nρ² + 1) · exp(−diff² n²ρ² / (2σ²(nρ² + 1))))`` with σ² = n·se²;
    rejecting when it is ≤ α is the same decision as the sequence excluding 0.
    """
    diff, se, n = (np.asarray(v, dtype=float) for v in (diff, se, n))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s2 = se * se * n
        nr2 = n * rho * rho
        out = np.minimum(1.0, np.sqrt(nr2 + 1.0) * np.exp(-diff * diff * n * nr2 / (2.0 * s2 * (nr2 + 1.0))))
    return out if out.ndim else float(out)
