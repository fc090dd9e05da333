"""Guardrail checks: one-sided, uncorrected tests that an arm is not worse than control.

Per-user ratio metrics (dislike rate, skip rate, CTR, new-item share …) are
tested one-sided in the harmful direction with the user-level z statistic of
:mod:`serving.experiments.analysis`; a guardrail is breached when the relative
deterioration exceeds ``max_relative_drop`` *and* the one-sided p-value is
below the guardrail's ``alpha``. Guardrails are not corrected for multiplicity
(a missed harm costs more than a false alarm). Arm-level quantities without a
per-user variance (p99 latency, catalog coverage) are compared descriptively:
breached when the deterioration exceeds the bound. Invariant: every configured
guardrail and every default one yields exactly one row per treatment arm, with
a ``status`` (ok / breached / not testable / unavailable) and a ``note``.
"""

from __future__ import annotations

from typing import Mapping

from serving.experiments.analysis import finite
from serving.experiments.config import Experiment, Guardrail
from serving.experiments.metrics import ARM_LEVEL_HIGHER_IS_WORSE, METRICS

#: Watched in every experiment unless its YAML configures the same metric itself.
DEFAULT_GUARDRAILS = (Guardrail("dislike_rate", 0.05), Guardrail("skip_rate", 0.05),
                      Guardrail("p99_latency_ms", 0.10), Guardrail("catalog_coverage", 0.10),
                      Guardrail("new_item_share", 0.10))


def guardrails_of(experiment: Experiment) -> tuple[Guardrail, ...]:
    """The experiment's guardrails plus the defaults for metrics it does not configure."""
    own = {g.metric for g in experiment.guardrails}
    return tuple(experiment.guardrails) + tuple(g for g in DEFAULT_GUARDRAILS if g.metric not in own)


def evaluate(experiment: Experiment, comparisons: Mapping[str, Mapping[str, dict]],
             arm_level: Mapping[str, Mapping[str, float | None]], unavailable: Mapping[str, str]) -> list[dict]:
    """One row per guardrail × treatment arm.

    ``comparisons``: arm → metric → result of ``analysis.compare``;
    ``arm_level``: metric → arm → value (p99 latency, coverage);
    ``unavailable``: metric → why it cannot be computed from the data given.
    """
    from scipy.stats import norm

    rows = []
    control = experiment.control
    for g in guardrails_of(experiment):
        for arm in comparisons:
            row = {"metric": g.metric, "arm": arm, "relative": None, "p_value": None,
                   "max_relative_drop": g.max_relative_drop, "alpha": g.alpha, "ok": True, "status": "ok",
                   "test": "", "note": None}
            rows.append(row)
            if g.metric in unavailable:
                row.update(status="unavailable", note=unavailable[g.metric], test="none")
                continue
            if g.metric in METRICS:
                spec = METRICS[g.metric]
                r = comparisons[arm].get(g.metric)
                row["test"] = "one-sided z, user-level delta method, not corrected"
                if r is None or r.get("statistic") is None:
                    row.update(status="not testable", note=(r or {}).get("note") or "no comparison")
                    continue
                worse = -r["relative"] if spec.higher_is_better and r["relative"] is not None else r["relative"]
                p = float(norm.cdf(r["statistic"]) if spec.higher_is_better else norm.sf(r["statistic"]))
                row.update(relative=r["relative"], p_value=finite(p))
                breached = worse is not None and worse > g.max_relative_drop and p < g.alpha
            else:
                vals = arm_level.get(g.metric, {})
                v, c = finite(vals.get(arm)), finite(vals.get(control))
                row["test"] = "descriptive, arm-level (no per-user variance)"
                if v is None or c is None or c == 0:
                    row.update(status="not testable", note=f"{g.metric} missing or zero in an arm")
                    continue
                rel = v / c - 1
                worse = rel if ARM_LEVEL_HIGHER_IS_WORSE[g.metric] else -rel
                row["relative"] = rel
                breached = worse > g.max_relative_drop
            if breached:
                row.update(ok=False, status="breached")
    return rows
