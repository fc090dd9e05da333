"""Automatic promotion: only a sequential, significant, guardrail-clean win promotes — on real reports."""

from __future__ import annotations

import pytest

from serving.experiments.promotion import PromotionRule, decide_promotion
from serving.experiments.report import build_reward_report
from tests.serving.experiments.test_reward_report import EXP, _world
from tests.serving.experiments.two_arms import two_arms


NO_SERVED = PromotionRule(require_guardrail_data=False)   # these reports have no served records (latency, coverage)


def test_a_clear_sequential_win_promotes_and_says_why():
    cur, _ = _world(effect=0.25)
    d = decide_promotion(build_reward_report(EXP, cur), "b", NO_SERVED)
    assert d.promote, d.summary()
    assert d.evidence["ctr"]["significant"] and d.evidence["ctr"]["diff"] > 0
    assert "PROMOTE" in d.summary() and "primary ctr: significant and better" in d.summary()


def test_no_effect_waits():
    cur, _ = _world(effect=0.0, seed=3)
    d = decide_promotion(build_reward_report(EXP, cur), "b", NO_SERVED)
    assert not d.promote and any("not significant yet" in r for r in d.reasons)


def test_a_significant_loss_never_promotes():
    cur, _ = _world(effect=-0.4, seed=1)
    d = decide_promotion(build_reward_report(EXP, cur), "b")
    assert not d.promote and any("WORSE" in r for r in d.reasons)
    assert any("guardrail ctr breached" in r for r in d.reasons)       # the ctr guardrail catches it too


def test_a_fixed_horizon_report_never_promotes_however_strong():
    fixed = two_arms("{primary: [ctr], sequential: false}").experiment("exp")
    cur, _ = _world(effect=0.5)
    d = decide_promotion(build_reward_report(fixed, cur), "b")
    assert not d.promote and any("not sequential" in r for r in d.reasons)


def test_too_few_users_the_control_and_an_unknown_arm_wait():
    cur, _ = _world(n=150, effect=0.8)
    rep = build_reward_report(EXP, cur)
    assert any("too few users" in r for r in decide_promotion(rep, "b").reasons)
    assert decide_promotion(rep, "b", PromotionRule(min_users=10, require_guardrail_data=False)).promote
    assert not decide_promotion(rep, "a").promote
    assert "not in the report" in decide_promotion(rep, "zz").reasons[0]


def test_a_guardrail_without_data_blocks_unless_told_otherwise():
    cur, _ = _world(effect=0.25)
    rep = build_reward_report(EXP, cur)          # no served records: latency and coverage are unavailable
    d = decide_promotion(rep, "b")
    assert not d.promote and any("p99_latency_ms could not be checked" in r for r in d.reasons)
    assert decide_promotion(rep, "b", NO_SERVED).promote


def test_sample_ratio_mismatch_blocks():
    cur, _ = _world(effect=0.25, arm_of=lambda u: "b" if int(u[1:]) % 3 else "a")   # 2:1 instead of 1:1
    d = decide_promotion(build_reward_report(EXP, cur), "b")
    assert not d.promote and any("sample ratio mismatch" in r for r in d.reasons)


def test_rule_is_validated():
    with pytest.raises(ValueError, match="min_users"):
        PromotionRule(min_users=0)
