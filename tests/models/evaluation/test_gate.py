"""The offline gate's verdict: every check can fail on its own, bounds are reported, the config is validated."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.gate import CanaryMetric, GateConfig, gate_verdict, paired_comparison, render_checks

PARENT = {"ndcg@10": 0.20, "coverage@10": 0.50, "validity": 1.0}
GOOD = {"ndcg@10": 0.199, "coverage@10": 0.45, "validity": 1.0}


def _canary(reward_shift=0.0, skip_shift=0.0, n=400, seed=0):
    rng = np.random.default_rng(seed)
    parent_r = rng.normal(2.0, 1.0, n)
    parent_s = rng.uniform(0.3, 0.6, n)
    return [paired_comparison("mean_reward", parent_r + reward_shift + rng.normal(0, 0.05, n), parent_r),
            paired_comparison("skip_rate", parent_s + skip_shift + rng.normal(0, 0.01, n), parent_s,
                              higher_is_better=False)]


def _failed(v):
    return {c.name for c in v.checks if not c.passed}


def test_a_good_candidate_passes_every_check():
    v = gate_verdict(GOOD, PARENT, _canary())
    assert v.passed and not _failed(v) and v.reason == "every check passed"
    assert {c.name for c in v.checks} == {"ndcg", "validity", "coverage", "canary_mean_reward", "canary_skip_rate"}
    ndcg = next(c for c in v.checks if c.name == "ndcg")
    assert ndcg.bound == pytest.approx(0.20 * 0.98) and ndcg.value == pytest.approx(0.199)
    d = v.to_dict()
    assert d["passed"] is True and len(d["checks"]) == 5 and d["config"]["max_ndcg_drop"] == 0.02


@pytest.mark.parametrize("candidate, canary, failing", [
    ({**GOOD, "ndcg@10": 0.19}, _canary(), {"ndcg"}),                 # 5 % below the parent
    ({**GOOD, "validity": 0.999}, _canary(), {"validity"}),           # one invalid ID in a thousand
    ({**GOOD, "coverage@10": 0.39}, _canary(), {"coverage"}),         # below 0.8 x 0.50
    (GOOD, _canary(reward_shift=-0.5), {"canary_mean_reward"}),       # simulated users reward it less
    (GOOD, _canary(skip_shift=0.1), {"canary_skip_rate"}),            # and skip more
    (GOOD, None, {"canary"}),                                         # no canary was run
])
def test_each_check_fails_alone(candidate, canary, failing):
    v = gate_verdict(candidate, PARENT, canary)
    assert not v.passed and _failed(v) == failing
    assert len(v.reasons) == 1 and v.reasons[0].startswith(next(iter(failing)))
    assert v.to_dict()["reason"] == v.reason and "FAIL" in render_checks(v)


def test_canary_noise_within_tolerance_or_not_significant_passes():
    # worse by less than 5 % of the parent's mean: within tolerance even though significant
    assert gate_verdict(GOOD, PARENT, _canary(reward_shift=-0.05)).passed
    # worse by a lot on average but on 3 noisy users: the interval includes no change
    noisy = [paired_comparison("mean_reward", [0.0, 5.0, 0.1], [3.0, 1.0, 2.0])]
    assert noisy[0].diff < -0.1 and noisy[0].ci_low < 0 < noisy[0].ci_high
    assert gate_verdict(GOOD, PARENT, noisy).passed


def test_paired_comparison_interval_covers_the_shift():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 2000)
    m = paired_comparison("r", base + 0.3 + rng.normal(0, 0.2, 2000), base)
    assert m.ci_low < 0.3 < m.ci_high and m.ci_high - m.ci_low < 0.05 and m.n_users == 2000
    assert isinstance(m, CanaryMetric) and m.to_dict()["diff"] == pytest.approx(m.diff)
    with pytest.raises(ValueError, match="one value per user"):
        paired_comparison("r", [1.0, 2.0], [1.0])


def test_config_is_validated_and_missing_metrics_are_named():
    for bad in ({"max_ndcg_drop": -0.1}, {"min_validity": 0}, {"min_coverage_ratio": 2}, {"alpha": 0.7},
                {"canary_tolerance": "x"}, {"require_canary": 1}):
        with pytest.raises(ValueError, match="GateConfig"):
            GateConfig(**bad)
    with pytest.raises(ValueError, match="unknown gate config keys"):
        GateConfig.from_dict({"max_drop": 0.1})
    assert GateConfig.from_dict({"max_ndcg_drop": 0.1}).max_ndcg_drop == 0.1
    with pytest.raises(ValueError, match="no 'ndcg@10'"):
        gate_verdict({"validity": 1.0}, PARENT, None)
    loose = GateConfig(max_ndcg_drop=0.1, require_canary=False)
    assert gate_verdict({**GOOD, "ndcg@10": 0.19}, PARENT, None, loose).passed
