"""Delta-method and CUPED estimators for ratio metrics, vectorised over many experiments (numpy only).

A ratio metric R = Σ numerator / Σ denominator over the users of an arm is a
ratio of two means; its variance is taken by the delta method on the per-user
linearisation ``num − R·den`` (Deng et al., "Applying the Delta Method in
Metric Analytics", KDD 2018): ``var(R̂) ≈ var(num − R·den) / (n · mean(den)²)``.
CUPED (Deng et al., WSDM 2013) subtracts θ·(X̄_arm − X̄_all) where X is the
same ratio in a pre-exposure period and θ = cov(Y, X)/var(X) of the two
linearisations over both arms; the variance falls by a factor (1 − ρ²).

Invariant: every function takes a 0/1 weight (mask) over the last axis, so
one call analyses many simulated experiments, or many looks of one, at once.
This is the reference the report's library results (tea-tasting) are checked
against, and the engine of the A/A and power simulations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RatioDiff:
    """Treatment − control of a ratio metric; arrays over the leading axes."""

    control: np.ndarray       # control ratio (CUPED-adjusted when covariates were given)
    treatment: np.ndarray     # treatment ratio (idem)
    diff: np.ndarray          # treatment − control
    se: np.ndarray            # standard error of diff
    rel: np.ndarray           # treatment / control − 1
    se_log: np.ndarray        # standard error of log(treatment / control)
    n: np.ndarray             # users in both arms
    var_ratio: np.ndarray     # var(diff) with CUPED / without (1 when no covariates)


def _mean(x: np.ndarray, w: np.ndarray, n: np.ndarray) -> np.ndarray:
    return (w * x).sum(-1) / n


def _cov(x: np.ndarray, y: np.ndarray, w: np.ndarray, n: np.ndarray) -> np.ndarray:
    mx, my = _mean(x, w, n), _mean(y, w, n)
    return (w * (x - mx[..., None]) * (y - my[..., None])).sum(-1) / (n - 1)


def linearise(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ratio, n, lin)``: the arm's ratio, its user count and ``(num − ratio·den) / mean(den)`` per user."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n = w.sum(-1)
        mden = _mean(den, w, n)
        ratio = _mean(num, w, n) / mden
        lin = (num - ratio[..., None] * den) / mden[..., None]
    return ratio, n, lin


def ratio_mean_var(num: np.ndarray, den: np.ndarray, w: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, ratio, unit_var)`` of Σnum/Σden over the users where ``w`` is 1; ``se = sqrt(unit_var / n)``."""
    w = np.ones_like(num, dtype=float) if w is None else w.astype(float)
    ratio, n, lin = linearise(num, den, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        return n, ratio, _cov(lin, lin, w, n)


def ratio_diff(num: np.ndarray, den: np.ndarray, treated: np.ndarray, w: np.ndarray | None = None,
               cov_num: np.ndarray | None = None, cov_den: np.ndarray | None = None) -> RatioDiff:
    """Treatment − control of Σnum/Σden per arm (``treated`` 1 = treatment, 0 = control), CUPED if covariates.

    θ is estimated on both arms together (the tea-tasting / Deng et al. form);
    each arm's variance is ``var_Y + θ²·var_X − 2θ·cov_XY`` of the linearised
    per-user values, over its own users.
    """
    w = np.ones_like(num, dtype=float) if w is None else w.astype(float)
    t = treated.astype(float)
    wt, wc = w * t, w * (1.0 - t)
    with np.errstate(divide="ignore", invalid="ignore"):
        ry_t, n_t, ly_t = linearise(num, den, wt)
        ry_c, n_c, ly_c = linearise(num, den, wc)
        vy_t, vy_c = _cov(ly_t, ly_t, wt, n_t), _cov(ly_c, ly_c, wc, n_c)
        raw = vy_t / n_t + vy_c / n_c
        if cov_num is None:
            m_t, m_c, v_t, v_c = ry_t, ry_c, vy_t, vy_c
            var_ratio = np.ones_like(raw)
        else:
            rx_all, n_all, lx_all = linearise(cov_num, cov_den, w)
            _, _, ly_all = linearise(num, den, w)
            vx_all = _cov(lx_all, lx_all, w, n_all)
            theta = np.where(vx_all > 0, _cov(ly_all, lx_all, w, n_all) / vx_all, 0.0)
            rx_t, _, lx_t = linearise(cov_num, cov_den, wt)
            rx_c, _, lx_c = linearise(cov_num, cov_den, wc)
            m_t = ry_t - theta * (rx_t - rx_all)
            m_c = ry_c - theta * (rx_c - rx_all)
            v_t = vy_t + theta ** 2 * _cov(lx_t, lx_t, wt, n_t) - 2 * theta * _cov(ly_t, lx_t, wt, n_t)
            v_c = vy_c + theta ** 2 * _cov(lx_c, lx_c, wc, n_c) - 2 * theta * _cov(ly_c, lx_c, wc, n_c)
            var_ratio = (v_t / n_t + v_c / n_c) / raw
        diff = m_t - m_c
        se = np.sqrt(v_t / n_t + v_c / n_c)
        se_log = np.sqrt(v_t / (m_t ** 2 * n_t) + v_c / (m_c ** 2 * n_c))
        rel = m_t / m_c - 1.0
    return RatioDiff(m_c, m_t, diff, se, rel, se_log, n_t + n_c, var_ratio)
