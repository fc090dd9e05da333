"""The report on reward records: user-level tests, CUPED, sequential bounds, guardrails, bad input."""

from __future__ import annotations

import json

import numpy as np

from ingest.contract import Reward, Served, UserEvent
from serving.experiments.report import build_reward_report, markdown
from serving.experiments.rewards import rewards_from_served_and_events_fallback
from serving.experiments.units import pre_period_sums
from tests.serving.experiments.two_arms import two_arms

CFG = two_arms("{primary: [ctr], secondary: [mean_reward, feedback_rate], correction: bh, sequential: true, "
               "planned_users: 2000}")
EXP = CFG.experiment("exp")
DAY = 86_400_000


def _reward(rid, user, arm, ts, engaged, items=5, dislikes=0.0, exp="exp"):
    comp = {"impressions": float(items), "clicks": float(engaged), "engaged": float(engaged),
            "events": float(engaged + dislikes), "dislikes": float(dislikes), "skips": 0.0,
            "watch_ms": 1000.0 * engaged}
    return Reward(request_id=rid, user_id=user, experiment=exp, arm=arm, model_version="v1", components=comp,
                  reward=float(engaged), window_closed_ts=ts + 60_000, ts=ts)


def _world(n=1500, effect=0.0, seed=0, arm_of=None):
    """Users with a latent propensity, 1-6 sessions each over two days, and a pre-period of the same kind."""
    rng = np.random.default_rng(seed)
    cur, pre = [], []
    for i in range(n):
        u = f"u{i}"
        arm = arm_of(u) if arm_of else EXP.arm_for(u).name
        p = rng.beta(1, 6)
        for s in range(rng.integers(1, 7)):
            q = min(1.0, p * (1 + effect)) if arm == "b" else p
            cur.append(_reward(f"r{i}-{s}", u, arm, 10 * DAY + int(rng.integers(0, 2 * DAY)), rng.binomial(5, q)))
        for s in range(rng.integers(1, 7)):
            pre.append(_reward(f"p{i}-{s}", u, "-", 5 * DAY + s, rng.binomial(5, p), exp="other"))
    return cur, pre


def _valid_json(rep):
    json.dumps(rep, allow_nan=False)


def test_user_level_report_with_cuped_sequential_and_bh(tmp_path):
    cur, pre = _world(effect=0.25)
    rep = build_reward_report(EXP, cur, pre_period=pre_period_sums(pre), plot_path=tmp_path / "r.png")
    _valid_json(rep)
    assert rep["unit"] == "user" and rep["users"] == 1500 and rep["analysis"]["cuped"]
    w = rep["arms"]["b"]["metrics"]["ctr"]["vs_control"]
    assert w["relative"] > 0.1 and w["significant"] and w["correction"] == "bh" and w["role"] == "primary"
    # The sequence is wider than the fixed interval; its p-value is larger.
    assert w["rel_cs_low"] < w["rel_ci_low"] < w["relative"] < w["rel_ci_high"] < w["rel_cs_high"]
    assert w["p_value_sequential"] >= w["p_value"]
    assert 0.1 < rep["cuped"]["ctr"]["b"] < 1  # the pre-period explains part of the variance
    assert len(rep["timeline"]["looks"]) == 10 and rep["timeline"]["metric"] == "ctr"
    assert rep["timeline"]["looks"][-1]["users"] == 1500
    assert {d["date"] for d in rep["srm_by_day"]} == {"1970-01-11", "1970-01-12"} and not rep["srm"]["srm"]
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    md = markdown(rep)
    assert "always-valid" in md and "| ctr | b |" in md


def test_no_effect_is_not_significant_and_guardrails_hold():
    cur, _ = _world(effect=0.0, seed=3)
    rep = build_reward_report(EXP, cur)
    _valid_json(rep)
    assert not any(rep["arms"]["b"]["metrics"][m]["vs_control"]["significant"] for m in rep["analysis"]["tested"])
    assert rep["analysis"]["cuped_note"].startswith("CUPED off")
    assert all(g["status"] in ("ok", "not testable", "unavailable") for g in rep["guardrails"])


def test_one_arm_empty_gives_a_message_not_a_crash(tmp_path):
    cur, _ = _world(n=200, arm_of=lambda u: "a")
    rep = build_reward_report(EXP, cur, plot_path=tmp_path / "e.png")
    _valid_json(rep)
    assert any("arm 'b' has no users" in m for m in rep["messages"])
    assert rep["arms"]["b"]["users"] == 0 and rep["arms"]["b"]["metrics"]["ctr"]["vs_control"]["p_value"] is None
    assert rep["srm"]["srm"]  # 200 users all in one of two equal arms
    assert markdown(rep)
    rep = build_reward_report(EXP, [])  # nothing at all
    _valid_json(rep)
    assert rep["users"] == 0 and markdown(rep)


def test_zero_variance_and_a_user_in_two_arms():
    recs = [_reward(f"r{i}", f"u{i}", "a" if i % 2 else "b", 10 * DAY + i, 2) for i in range(100)]
    recs.append(_reward("x1", "u1", "b", 10 * DAY + 500, 2))  # u1 was in a: salt changed
    rep = build_reward_report(EXP, recs)
    _valid_json(rep)
    w = rep["arms"]["b"]["metrics"]["ctr"]["vs_control"]
    assert w["p_value"] is None and "zero variance" in w["note"]
    assert rep["users_in_several_arms"] == 1 and rep["users"] == 99
    assert any("more than one arm" in m for m in rep["messages"])
    assert any("zero variance" in m and "(ctr" in m for m in rep["messages"])   # the message names its metrics


def test_latency_new_items_and_coverage_guardrails():
    served, events = [], []
    rng = np.random.default_rng(4)
    for i in range(400):
        u = f"u{i}"
        arm = EXP.arm_for(u).name
        k_new = int(rng.integers(1, 4)) if arm == "a" else int(rng.integers(0, 2))
        items = [f"n{j}" if j < k_new else f"i{rng.integers(0, 50)}" for j in range(5)]
        served.append(Served(f"r{i}", u, 1000 + i, "v1", "exp", arm, items, [[0]] * 5, [0.0] * 5))
        if rng.random() < 0.3:
            events.append(UserEvent(f"e{i}", u, items[0], "click", 2000 + i, request_id=f"r{i}"))
    rewards = rewards_from_served_and_events_fallback(served, events)
    assert len(rewards) == 400 and sum(r.components["clicks"] for r in rewards) == len(events)
    lat = {"a": [10.0] * 99 + [20.0] * 5, "b": [10.0] * 90 + [80.0] * 10}
    rep = build_reward_report(EXP, rewards, served=served, new_items={"n0", "n1", "n2"}, latency_ms=lat,
                              catalog_size=53)
    _valid_json(rep)
    g = {r["metric"]: r for r in rep["guardrails"]}
    assert g["p99_latency_ms"]["status"] == "breached" and g["p99_latency_ms"]["relative"] > 1
    assert g["new_item_share"]["status"] == "breached"  # b shows far fewer new items
    assert g["catalog_coverage"]["status"] in ("ok", "breached") and g["catalog_coverage"]["relative"] is not None
    rep = build_reward_report(EXP, rewards)
    assert {r["metric"]: r["status"] for r in rep["guardrails"]}["p99_latency_ms"] == "unavailable"


def test_rewards_from_the_archive_feed_cuped(tmp_path):
    import pyarrow.parquet as pq

    from ingest.arrow_schemas import to_table
    from serving.experiments.report import read_rewards_archive

    cur, pre = _world(n=300, seed=5)
    d = tmp_path / "topic=rewards" / "date=1970-01-06"
    d.mkdir(parents=True)
    pq.write_table(to_table(pre + cur, "rewards"), d / "part-0.parquet")
    got = read_rewards_archive(tmp_path, end_ms=10 * DAY)  # the pre-period only
    assert len(got) == len(pre)
    rep = build_reward_report(EXP, cur, pre_period=pre_period_sums(got))
    assert rep["analysis"]["cuped"] and rep["cuped"]["ctr"]["b"] > 0
    assert read_rewards_archive(tmp_path / "nothing") == []


def test_a_metric_with_a_negative_mean_reports_the_absolute_difference_not_a_lift(tmp_path):
    """Rewards may be negative (skips, dislikes): a ratio of means is no lift then, so none is reported."""
    rng = np.random.default_rng(3)
    recs = []
    for i in range(600):
        u = f"u{i}"
        arm = EXP.arm_for(u).name
        for s in range(3):
            r = _reward(f"r{i}-{s}", u, arm, 10 * DAY + s, int(rng.binomial(5, 0.2)))
            recs.append(Reward(**{**{f: getattr(r, f) for f in r.__struct_fields__},
                                  "reward": float(rng.normal(-0.5 if arm == "a" else -0.2, 1.0))}))
    rep = build_reward_report(EXP, recs, plot_path=tmp_path / "r.png")
    _valid_json(rep)
    w = rep["arms"]["b"]["metrics"]["mean_reward"]["vs_control"]
    assert w["relative"] is None and w["rel_ci_low"] is None and "absolute" in w["note"]
    assert w["diff"] is not None and w["ci_low"] < w["diff"] < w["ci_high"] and w["p_value"] is not None
    assert "Δ" in markdown(rep) and "(absolute)" in markdown(rep)
