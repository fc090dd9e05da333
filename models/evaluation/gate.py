"""The offline gate a candidate model version passes before it may take traffic (promotion, an A/B arm).

A candidate is compared with its parent on the same held-out split and the same simulated users:

* **NDCG@10** on the held-out split must not fall more than ``max_ndcg_drop`` (relative) below the parent's;
* **validity** — the share of generated IDs that are catalog items — must be at least ``min_validity``
  (100 %: the trie makes every ID valid by construction, and a model that breaks that must not ship;
  after RL, OneRec-V2 saw valid IDs fall below half until a format reward was added);
* **coverage@10** must not collapse: at least ``min_coverage_ratio`` of the parent's (RL narrows the
  candidate list — MiniOneRec's GRPO raised HR@1 while HR@50 fell);
* the **simulated canary** (closed-loop rewards of both models' sessions for the same users under the
  same request ids, so both meet the same random draws) must not be worse beyond a tolerance in mean
  reward or in the guardrails (skip rate, dislike rate when the world emits them). As the project's A/B
  guardrails (:class:`serving.experiments.config.Guardrail`), a canary metric fails when its point
  estimate is worse than the tolerance *and* the user-level paired interval excludes zero (significant).

Pure: metrics and per-user arrays in, a :class:`GateVerdict` out; the evaluation that feeds it is
:mod:`actors.gate_job`, the registry stores ``GateVerdict.to_dict()`` (:mod:`actors.model_registry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from models.config_fields import config_from_dict


@dataclass(frozen=True)
class GateConfig:
    """The gate's bounds (frozen, validated; errors name the fix).

    ``max_ndcg_drop``: largest relative NDCG@10 drop vs the parent (0.02 = 2 %).
    ``min_validity``: least share of generated IDs that are catalog items (1.0 = every one).
    ``min_coverage_ratio``: least candidate coverage@10 as a share of the parent's.
    ``canary_tolerance`` / ``canary_abs_floor``: a canary metric may be worse by
    ``max(canary_tolerance * |parent mean|, canary_abs_floor)`` before it can fail the gate.
    ``alpha``: two-sided level of the canary's paired user-level intervals.
    ``require_canary``: a verdict without a canary fails (the world was not available).
    ``ndcg_key`` / ``coverage_key`` / ``validity_key``: the metric names read from the metric mappings.
    """

    max_ndcg_drop: float = 0.02
    min_validity: float = 1.0
    min_coverage_ratio: float = 0.8
    canary_tolerance: float = 0.05
    canary_abs_floor: float = 0.005
    alpha: float = 0.05
    require_canary: bool = True
    ndcg_key: str = "ndcg@10"
    coverage_key: str = "coverage@10"
    validity_key: str = "validity"

    def __post_init__(self) -> None:
        for name, lo, hi, example in (("max_ndcg_drop", 0.0, 1.0, "0.02 (2 %)"),
                                      ("min_coverage_ratio", 0.0, 1.0, "0.8"),
                                      ("canary_tolerance", 0.0, 1.0, "0.05"),
                                      ("canary_abs_floor", 0.0, 1e9, "0.005")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"GateConfig.{name}={v!r} must be a number in [{lo:g}, {hi:g}], e.g. {example}")
        v = self.min_validity
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"GateConfig.min_validity={v!r} must be in (0, 1]; keep 1.0 (every generated ID "
                             "a catalog item) unless you know why not")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 0.5:
            raise ValueError(f"GateConfig.alpha={self.alpha!r} must be in (0, 0.5), e.g. 0.05")
        if not isinstance(self.require_canary, bool):
            raise ValueError(f"GateConfig.require_canary={self.require_canary!r} must be true or false")
        for name in ("ndcg_key", "coverage_key", "validity_key"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"GateConfig.{name} must name a metric, e.g. 'ndcg@10'")

    @staticmethod
    def from_dict(d: Mapping | None) -> "GateConfig":
        """From a mapping (YAML, CLI); unknown keys are an error that lists the known ones."""
        return config_from_dict(GateConfig, d, "gate config keys")


@dataclass(frozen=True)
class CanaryMetric:
    """One canary metric: both models' per-user means and the paired difference (candidate − parent).

    ``ci_low`` / ``ci_high``: the two-sided (1 − alpha) t interval of the mean per-user difference.
    """

    name: str
    candidate: float
    parent: float
    diff: float
    ci_low: float
    ci_high: float
    n_users: int
    higher_is_better: bool = True

    def to_dict(self) -> dict:
        return {"name": self.name, "candidate": self.candidate, "parent": self.parent, "diff": self.diff,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "n_users": self.n_users,
                "higher_is_better": self.higher_is_better}


def paired_comparison(name: str, candidate: Sequence[float], parent: Sequence[float], *,
                      higher_is_better: bool = True, alpha: float = 0.05) -> CanaryMetric:
    """The paired user-level comparison of two per-user arrays [U] (same users, same order)."""
    from scipy import stats

    c = np.asarray(candidate, dtype=np.float64).reshape(-1)
    p = np.asarray(parent, dtype=np.float64).reshape(-1)
    if c.shape != p.shape or c.size == 0:
        raise ValueError(f"canary metric {name!r}: candidate and parent need one value per user each "
                         f"(same users, same order); got {c.size} and {p.size}")
    d = c - p   # [U]
    mean = float(d.mean())
    if d.size > 1 and float(d.std(ddof=1)) > 0:
        half = float(stats.t.ppf(1 - alpha / 2, d.size - 1)) * float(d.std(ddof=1)) / math.sqrt(d.size)
    else:
        half = 0.0
    return CanaryMetric(name, float(c.mean()), float(p.mean()), mean, mean - half, mean + half, int(d.size),
                        higher_is_better)


@dataclass(frozen=True)
class CheckResult:
    """One check of the gate: its value, the bound it was held to and whether it passed."""

    name: str
    passed: bool
    value: float | None
    bound: float | None
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "value": self.value, "bound": self.bound,
                "detail": self.detail}


@dataclass(frozen=True)
class GateVerdict:
    """The gate's answer: passed only when every check passed; ``reasons`` say in words what failed."""

    passed: bool
    checks: tuple[CheckResult, ...]
    reasons: tuple[str, ...] = ()
    config: GateConfig = field(default_factory=GateConfig)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "every check passed"

    def to_dict(self) -> dict:
        """What the registry stores (``verdict.json``): ``passed``, ``reason`` and every check."""
        return {"passed": self.passed, "reason": self.reason, "reasons": list(self.reasons),
                "checks": [c.to_dict() for c in self.checks],
                "config": {k: getattr(self.config, k) for k in GateConfig.__dataclass_fields__}}


def _metric(metrics: Mapping, key: str, who: str) -> float:
    if key not in metrics:
        raise ValueError(f"{who} metrics have no {key!r} (have {sorted(metrics)}); evaluate both models with "
                         "actors.gate_job, or name the key in GateConfig")
    v = float(metrics[key])
    if not math.isfinite(v):
        raise ValueError(f"{who} metric {key!r} is {v}; a gate needs finite metrics")
    return v


def _canary_check(m: CanaryMetric, cfg: GateConfig) -> CheckResult:
    allowed = max(cfg.canary_tolerance * abs(m.parent), cfg.canary_abs_floor)
    if m.higher_is_better:
        bound = -allowed
        worse_beyond = m.diff < bound
        significant = m.ci_high < 0
        word = "lower"
    else:
        bound = allowed
        worse_beyond = m.diff > bound
        significant = m.ci_low > 0
        word = "higher"
    passed = not (worse_beyond and significant)
    detail = (f"canary {m.name}: candidate {m.candidate:.4f} vs parent {m.parent:.4f} over {m.n_users} users, "
              f"difference {m.diff:+.4f} (CI {m.ci_low:+.4f} .. {m.ci_high:+.4f}); allowed {word} by "
              f"{allowed:.4f}")
    return CheckResult(f"canary_{m.name}", passed, m.diff, bound, detail)


def gate_verdict(candidate_metrics: Mapping, parent_metrics: Mapping, canary: Sequence[CanaryMetric] | None,
                 cfg: GateConfig = GateConfig()) -> GateVerdict:
    """Judge a candidate against its parent (see the module docstring); every check is reported."""
    checks: list[CheckResult] = []
    c_ndcg = _metric(candidate_metrics, cfg.ndcg_key, "candidate")
    p_ndcg = _metric(parent_metrics, cfg.ndcg_key, "parent")
    bound = p_ndcg * (1 - cfg.max_ndcg_drop)
    checks.append(CheckResult("ndcg", c_ndcg >= bound, c_ndcg, bound,
                              f"{cfg.ndcg_key} {c_ndcg:.4f} vs parent {p_ndcg:.4f}; at most "
                              f"{cfg.max_ndcg_drop:.1%} lower allowed (>= {bound:.4f})"))
    c_val = _metric(candidate_metrics, cfg.validity_key, "candidate")
    checks.append(CheckResult("validity", c_val >= cfg.min_validity, c_val, cfg.min_validity,
                              f"{c_val:.2%} of generated IDs are catalog items; {cfg.min_validity:.0%} required"))
    c_cov = _metric(candidate_metrics, cfg.coverage_key, "candidate")
    p_cov = _metric(parent_metrics, cfg.coverage_key, "parent")
    bound = p_cov * cfg.min_coverage_ratio
    checks.append(CheckResult("coverage", c_cov >= bound, c_cov, bound,
                              f"{cfg.coverage_key} {c_cov:.4f} vs parent {p_cov:.4f}; at least "
                              f"{cfg.min_coverage_ratio:.0%} of the parent's required (>= {bound:.4f})"))
    if canary:
        checks.extend(_canary_check(m, cfg) for m in canary)
    else:
        checks.append(CheckResult("canary", not cfg.require_canary, None, None,
                                  "no simulated canary was run" + (" and the gate requires one"
                                                                   if cfg.require_canary else " (not required)")))
    reasons = tuple(f"{c.name} failed: {c.detail}" for c in checks if not c.passed)
    return GateVerdict(not reasons, tuple(checks), reasons, cfg)


def render_checks(verdict: Mapping | GateVerdict) -> str:
    """A readable table of a verdict's checks (a :class:`GateVerdict` or its stored ``to_dict()``)."""
    d = verdict.to_dict() if isinstance(verdict, GateVerdict) else dict(verdict)

    def num(x) -> str:
        return "-" if x is None else f"{x:.4f}"

    rows = [f"{'check':<22} {'result':<7} {'value':>10} {'bound':>10}  detail"]
    for c in d.get("checks", []):
        rows.append(f"{c['name']:<22} {'pass' if c['passed'] else 'FAIL':<7} {num(c.get('value')):>10} "
                    f"{num(c.get('bound')):>10}  {c.get('detail', '')}")
    rows.append(f"verdict: {'PASSED' if d.get('passed') else 'FAILED'} — {d.get('reason', '')}")
    return "\n".join(rows)
