"""A/B report (compatible entry point): served + user-events → fallback reward records → user-level report."""

from __future__ import annotations

import json

import numpy as np

from ingest.contract import Served, UserEvent
from serving.experiments.report import build_report, markdown, read_kafka, welch
from tests.serving.experiments.two_arms import CFG



def _world(n=400, p_a=0.2, p_b=0.4, seed=0):
    """Sessions of 5 items; arm b's users click twice as often."""
    rng = np.random.default_rng(seed)
    exp = CFG.experiment("exp")
    served, events = [], []
    for i in range(n):
        u = f"u{i}"
        arm = exp.arm_for(u).name
        rid = f"r{i}"
        items = [f"i{j}" for j in range(5)]
        served.append(Served(rid, u, 1000 + i, "v1", "exp", arm, items, [[j, 0] for j in range(5)], [0.0] * 5))
        p = p_a if arm == "a" else p_b
        for j, it in enumerate(items):
            if rng.random() < p:
                events.append(UserEvent(f"e{i}-{j}", u, it, "click", 2000 + i, request_id=rid))
                events.append(UserEvent(f"w{i}-{j}", u, it, "watch", 2001 + i, watch_ms=30_000, request_id=rid))
    # noise: events of other sessions / none
    events.append(UserEvent("x", "u1", "i1", "click", 5, request_id="unknown"))
    events.append(UserEvent("y", "u1", "i1", "click", 5))
    return served, events


def test_report_detects_a_real_difference(tmp_path):
    served, events = _world()
    rep = build_report(CFG.experiment("exp"), served, events, plot_path=tmp_path / "ab.png")
    json.dumps(rep)  # valid JSON (no NaN)
    a, b = rep["arms"]["a"], rep["arms"]["b"]
    assert a["exposures"] + b["exposures"] == 400 == rep["sessions"]
    assert abs(a["metrics"]["ctr"]["mean"] - 0.2) < 0.05 and abs(b["metrics"]["ctr"]["mean"] - 0.4) < 0.05
    assert a["metrics"]["ctr"]["ci_low"] < a["metrics"]["ctr"]["mean"] < a["metrics"]["ctr"]["ci_high"]
    w = b["metrics"]["ctr"]["vs_control"]
    assert w["diff"] > 0.1 and w["p_value"] < 1e-6 and w["ci_low"] > 0
    assert b["metrics"]["mean_reward"]["mean"] > a["metrics"]["mean_reward"]["mean"]
    assert b["metrics"]["watch_ms"]["mean"] > a["metrics"]["watch_ms"]["mean"]
    assert not rep["srm"]["srm"]
    assert all(g["ok"] for g in rep["guardrails"])  # b is better, no breach
    assert rep["unit"] == "user" and rep["users"] == 400
    assert (tmp_path / "ab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| b |" in markdown(rep)


def test_guardrail_breach_and_no_difference():
    served, events = _world(n=600, p_a=0.4, p_b=0.1, seed=1)
    rep = build_report(CFG.experiment("exp"), served, events)
    assert [g["ok"] for g in rep["guardrails"] if g["metric"] == "ctr"] == [False]
    served, events = _world(n=600, p_a=0.3, p_b=0.3, seed=2)
    rep = build_report(CFG.experiment("exp"), served, events)
    assert rep["arms"]["b"]["metrics"]["ctr"]["vs_control"]["p_value"] > 0.001


def test_welch_matches_scipy_and_handles_tiny_samples():
    from scipy import stats

    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 1, 50), rng.normal(0.5, 2, 80)
    w = welch(a, b)
    assert abs(w["p_value"] - stats.ttest_ind(a, b, equal_var=False).pvalue) < 1e-12
    assert w["ci_low"] < w["diff"] < w["ci_high"]
    assert np.isnan(welch(a[:1], b)["diff"])


def test_report_from_kafka(broker, topic_name):
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import ensure_topics

    kafka = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(kafka)
    served, events = _world(n=60)
    with EventProducer(kafka) as p:
        p.send_many(served)
        p.send_many(events)
    s2, e2 = read_kafka(kafka)
    assert len(s2) == 60 and len(e2) == len(events)
    rep = build_report(CFG.experiment("exp"), s2, e2)
    assert rep["sessions"] == 60
