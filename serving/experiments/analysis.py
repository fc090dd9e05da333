"""User-level comparisons of every arm against control: delta method, CUPED, confidence sequences.

For each treatment arm and ratio metric (:data:`serving.experiments.metrics.METRICS`)
the per-user table is handed to tea-tasting's ``RatioOfMeans`` (delta method,
Deng et al. KDD 2018; with the pre-period sums as covariates it is CUPED, Deng
et al. WSDM 2013), normal approximation, two-sided at ``alpha``. Beside the
fixed-horizon interval, the always-valid confidence sequence of
:mod:`serving.experiments.sequential` is derived from the same standard error.
Invariant: no NaN or inf leaves this module — an impossible test (an arm with
fewer than two users, zero variance, no denominator) yields ``None`` values
and a ``note`` that says why; ``variance_ratio`` is var(CUPED) / var(raw) of
the difference, 1 without covariates.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np

from serving.experiments.delta import ratio_mean_var
from serving.experiments.metrics import METRICS
from serving.experiments.sequential import cs_halfwidth
from serving.experiments.units import UserTable


def finite(v) -> float | None:
    """``v`` as a float, or ``None`` when it is missing, NaN or infinite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def z_of(alpha: float) -> float:
    """The two-sided normal quantile of level ``1 − alpha``."""
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def arm_summary(table: UserTable, arm: str, metrics: Sequence[str], alpha: float) -> dict:
    """Per-metric mean of one arm with its delta-method interval (users as the unit)."""
    mask = (table.arm == arm).astype(float)
    z = z_of(alpha)
    out = {}
    for m in metrics:
        spec = METRICS[m]
        n, ratio, var = ratio_mean_var(table.cols[spec.numerator], table.cols[spec.denominator], mask)
        se = math.sqrt(var / n) if n > 1 and finite(var) is not None and var >= 0 else math.nan
        mean = finite(ratio)
        half = finite(z * se)
        out[m] = {"mean": mean, "ci_low": None if mean is None or half is None else mean - half,
                  "ci_high": None if mean is None or half is None else mean + half}
    return out


def _table(table: UserTable, arms: tuple[str, str], metrics: Sequence[str],
           covariates: Mapping[str, np.ndarray] | None):
    import pyarrow as pa

    mask = np.isin(table.arm, arms)
    cols = {"variant": pa.array(table.arm[mask].astype(str))}
    for m in metrics:
        spec = METRICS[m]
        for c in (spec.numerator, spec.denominator):
            cols[c] = pa.array(table.cols[c][mask])
            if covariates is not None:
                cols["pre_" + c] = pa.array(covariates[c][mask])
    return pa.table(cols)


def _untestable(table: UserTable, control: str, arm: str, metric: str) -> str | None:
    spec = METRICS[metric]
    stats = []
    for a in (control, arm):
        w = (table.arm == a).astype(float)
        den = table.cols[spec.denominator]
        if not (w * den).sum() > 0:
            return f"not testable: {metric} is undefined in arm {a!r} (no {spec.denominator})"
        stats.append(ratio_mean_var(table.cols[spec.numerator], den, w))
    if all(s[2] == 0 for s in stats):
        return f"not testable: {metric} has zero variance (every user has the same value)"
    return None


def _analyze(tt, tm: dict, data, control: str):
    """tea-tasting's result for the metrics ``tm``, or the exception it raised."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return tt.Experiment(tm).analyze(data, control=control)
    except Exception as e:  # noqa: BLE001 - a report must not crash on odd data
        return e


def compare(table: UserTable, control: str, arm: str, metrics: Sequence[str], alpha: float,
            covariates: Mapping[str, np.ndarray] | None = None, rho: float | None = None) -> dict:
    """``{metric: result}`` of ``arm`` − ``control`` (see the module docstring for the fields)."""
    n_c, n_t = int((table.arm == control).sum()), int((table.arm == arm).sum())
    empty = {k: None for k in ("diff", "ci_low", "ci_high", "relative", "rel_ci_low", "rel_ci_high", "p_value",
                               "se", "statistic", "cs_low", "cs_high", "rel_cs_low", "rel_cs_high")}
    if n_c < 2 or n_t < 2:
        note = (f"not testable: {'control ' + repr(control) if n_c < 2 else 'arm ' + repr(arm)} has "
                f"{min(n_c, n_t)} user(s); at least 2 per arm are needed")
        return {m: {**empty, "users": n_c + n_t, "variance_ratio": None, "note": note} for m in metrics}
    import tea_tasting as tt

    level = 1 - alpha
    tm = {m: tt.RatioOfMeans(METRICS[m].numerator, METRICS[m].denominator, use_t=False, confidence_level=level)
          for m in metrics}
    if covariates is not None:
        tm.update({m + "__cuped": tt.RatioOfMeans(METRICS[m].numerator, METRICS[m].denominator,
                                                  "pre_" + METRICS[m].numerator, "pre_" + METRICS[m].denominator,
                                                  use_t=False, confidence_level=level) for m in metrics})
    data = _table(table, (control, arm), metrics, covariates)
    res, failed = _analyze(tt, tm, data, control), {}
    if isinstance(res, Exception):   # one metric's failure must not hide the others: analyse them one by one
        res = {}
        for m in metrics:
            one = {k: v for k, v in tm.items() if k in (m, m + "__cuped")}
            got = _analyze(tt, one, data, control)
            if isinstance(got, Exception):
                failed[m] = got
            else:
                res.update({k: got[k] for k in one})
    z = z_of(alpha)
    n = n_c + n_t
    out = {}
    for m in metrics:
        if m in failed:
            e = failed[m]
            note = f"not testable: the analysis failed ({type(e).__name__}: {str(e)[:120]})"
            out[m] = {**empty, "users": n, "variance_ratio": None, "note": note}
            continue
        raw = res[m]
        use = res[m + "__cuped"] if covariates is not None else raw
        se_raw = (raw.effect_size_ci_upper - raw.effect_size_ci_lower) / (2 * z)
        se = (use.effect_size_ci_upper - use.effect_size_ci_lower) / (2 * z)
        r = {"users": n, "diff": finite(use.effect_size), "ci_low": finite(use.effect_size_ci_lower),
             "ci_high": finite(use.effect_size_ci_upper), "relative": finite(use.rel_effect_size),
             "rel_ci_low": finite(use.rel_effect_size_ci_lower), "rel_ci_high": finite(use.rel_effect_size_ci_upper),
             "p_value": finite(use.pvalue), "se": finite(se), "statistic": finite(use.statistic),
             "variance_ratio": finite(se * se / (se_raw * se_raw)) if covariates is not None and se_raw > 0 else
             (1.0 if covariates is None else None),
             "cs_low": None, "cs_high": None, "rel_cs_low": None, "rel_cs_high": None, "note": None}
        if not (finite(use.control) or 0) > 0 or not (finite(use.treatment) or 0) > 0:
            # a ratio of means is a lift only when both are positive (a reward may be negative)
            r.update({"relative": None, "rel_ci_low": None, "rel_ci_high": None,
                      "note": "relative lift undefined (a mean is <= 0): the absolute difference is reported"})
        why = _untestable(table, control, arm, m)
        if why or r["se"] is None or r["se"] == 0 or r["p_value"] is None:
            r.update({k: None for k in ("p_value", "statistic", "ci_low", "ci_high", "rel_ci_low", "rel_ci_high")})
            r["note"] = why or "not testable: no finite standard error"
        elif rho is not None:
            h = cs_halfwidth(se, n, alpha, rho)
            r["cs_low"], r["cs_high"] = finite(r["diff"] - h), finite(r["diff"] + h)
            ratio = 1 + (r["relative"] if r["relative"] is not None else math.nan)
            up = r["rel_ci_high"]
            if ratio > 0 and up is not None and up + 1 > 0:
                se_log = math.log((1 + up) / ratio) / z
                hl = cs_halfwidth(se_log, n, alpha, rho)
                r["rel_cs_low"], r["rel_cs_high"] = finite(ratio * math.exp(-hl) - 1), finite(ratio * math.exp(hl) - 1)
        out[m] = r
    return out
