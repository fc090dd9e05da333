"""Sample-ratio-mismatch checks: users per arm against the configured weights, overall and per day.

A chi-square goodness-of-fit test of unique users per arm against the
configured traffic weights (Fabijan et al., "Diagnosing Sample Ratio Mismatch
in Online Controlled Experiments", KDD 2019). p < 0.001 flags an SRM (at 0.05
about half of all alarms would be false); with an SRM no other number of the
report should be trusted. The per-day check counts users by the day of their
first exposure, so a split that broke on one day (a deploy, a salt change)
shows on that day. Invariant: pure functions of counts, no I/O.
"""

from __future__ import annotations

import numpy as np

#: p-value below which the split is declared broken.
SRM_ALPHA = 0.001
DAY_MS = 86_400_000


def srm_check(observed: dict[str, int], weights: dict[str, float], alpha: float = SRM_ALPHA) -> dict:
    """Chi-square test of observed counts per arm against expected traffic weights."""
    from scipy import stats

    arms = list(weights)
    obs = np.array([observed.get(a, 0) for a in arms], dtype=float)
    total = obs.sum()
    if total == 0 or len(arms) < 2:
        return {"chi2": 0.0, "p_value": 1.0, "srm": False, "observed": dict(observed),
                "expected": {a: 0.0 for a in arms}}
    w = np.array([weights[a] for a in arms], dtype=float)
    exp = total * w / w.sum()
    chi2, p = stats.chisquare(obs, exp)
    return {"chi2": float(chi2), "p_value": float(p), "srm": bool(p < alpha),
            "observed": {a: int(o) for a, o in zip(arms, obs)},
            "expected": {a: float(e) for a, e in zip(arms, exp)}}


def srm_by_day(first_ts: np.ndarray, arms: np.ndarray, weights: dict[str, float],
               alpha: float = SRM_ALPHA) -> list[dict]:
    """:func:`srm_check` of the users first exposed on each UTC day (``day`` = days since the epoch)."""
    days = np.asarray(first_ts, dtype=np.int64) // DAY_MS
    out = []
    for d in np.unique(days):
        sel = arms[days == d]
        counts = {a: int((sel == a).sum()) for a in weights}
        res = srm_check(counts, weights, alpha)
        out.append({"day": int(d), "date": str(np.datetime64(int(d), "D")), "users": int(len(sel)),
                    "p_value": res["p_value"], "srm": res["srm"], "observed": res["observed"]})
    return out


def srm_pvalues(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Chi-square p-values of many count vectors at once (``counts``: experiments × arms)."""
    from scipy import stats

    counts = np.asarray(counts, dtype=float)
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    exp = counts.sum(-1, keepdims=True) * w
    chi2 = ((counts - exp) ** 2 / exp).sum(-1)
    return stats.chi2.sf(chi2, counts.shape[-1] - 1)
