"""The report's inputs from the logs: CUPED's pre-period, latency per arm, new items — in memory and on Kafka.

These are the inputs the HTTP report and the CLI derive (serving.experiments.inputs); without them CUPED is
off and the p99-latency and new-item-share guardrails say "unavailable", which these tests refuse.
"""

from __future__ import annotations

import json

import pytest

from ingest.contract import ItemEvent, Reward, Served
from serving.experiments.config import ExperimentsConfig
from serving.experiments.inputs import (ItemFacts, first_exposure_ts, latency_by_arm, new_impressions_by_age,
                                        pre_period_rewards, report_inputs)
from serving.experiments.report import build_reward_report, markdown, report_from_records, rewards_of
from tests.serving.experiments.report_logs import DAY, EXP, HOUR, NEW_ITEMS, OLD_ITEMS, T0, logs


def _guard(rep, metric):
    return {g["arm"]: g for g in rep["guardrails"] if g["metric"] == metric}


def assert_inputs_used(rep: dict, n_users: int) -> None:
    """CUPED on with a variance ratio per metric, a p99 latency per arm, a new-item share and coverage."""
    json.dumps(rep, allow_nan=False)
    assert rep["analysis"]["cuped"] and rep["analysis"]["cuped_note"].startswith("CUPED on")
    w = rep["arms"]["beam4"]["metrics"]["ctr"]["vs_control"]
    assert 0 < w["variance_ratio"] < 0.9  # the pre-period propensity explains part of the variance
    assert 0 < rep["cuped"]["ctr"]["beam4"] < 1 and rep["cuped"]["mean_reward"]["beam4"] is not None
    assert rep["inputs"]["pre_period"]["users"] == n_users and rep["inputs"]["pre_period"]["end_ts"] == T0
    p99 = {a: r["p99_latency_ms"] for a, r in rep["arms"].items()}
    assert 25 < p99["greedy"] <= 30 and 75 < p99["beam4"] <= 80
    assert _guard(rep, "p99_latency_ms")["beam4"]["status"] == "breached"  # beam4 is slower by > 10 %
    for a in ("greedy", "beam4"):
        share = rep["arms"][a]["metrics"]["new_item_share"]["mean"]
        assert 0.04 < share < 0.12  # 40 % of sessions show one new item of 5
        assert 0 < rep["arms"][a]["catalog_coverage"] <= 1  # a share: the catalog size is known
    assert _guard(rep, "new_item_share")["beam4"]["status"] in ("ok", "breached")
    assert _guard(rep, "catalog_coverage")["beam4"]["status"] in ("ok", "breached")
    assert rep["inputs"]["new_items"]["catalog_size"] == len(OLD_ITEMS) + len(NEW_ITEMS) - 1
    assert not any("unavailable" in g["status"] for g in rep["guardrails"])
    md = markdown(rep)
    assert "CUPED on" in md and "p99 ms" in md and "new-item share" in md


def test_item_facts_new_items_and_the_catalog():
    facts = ItemFacts.from_records([ItemEvent("a", 10), ItemEvent("b", 50), ItemEvent("a", 70, title="x"),
                                    ItemEvent("c", 20), ItemEvent("c", 60, op="retire")])
    assert facts.first_ts == {"a": 10, "b": 50, "c": 20} and facts.catalog_size == 2
    back = ItemFacts.from_records([ItemEvent("c", 20), ItemEvent("c", 60, op="retire"), ItemEvent("c", 90)])
    assert back.catalog_size == 1  # retired, then upserted again
    s = Served("r", "u", 100, "v1", "e", "x", ["a", "b", "c", "zz"], [[0]] * 4, [0.0] * 4)
    # ages at ts 100: a 90, b 50, c 80 (its first record counts, not the retire); zz has none: never new
    assert new_impressions_by_age([s], facts.first_ts, 60) == {"r": 1}
    assert new_impressions_by_age([s], facts.first_ts, 80) == {"r": 2}
    assert new_impressions_by_age([s], facts.first_ts, 90) == {"r": 3}
    early = Served("q", "u", 40, "v1", "e", "x", ["b"], [[0]], [0.0])
    assert new_impressions_by_age([early], facts.first_ts, 1) == {"q": 1}   # served before its own record


def test_pre_period_first_exposure_and_latency_from_the_logs():
    served, rewards, _ = logs(n_users=20)
    assert first_exposure_ts("decode-ab", rewards, served) == T0
    assert first_exposure_ts("nope", rewards, served) is None
    pre = pre_period_rewards("decode-ab", rewards, T0 - 14 * DAY, T0)
    assert pre and all(r.ts < T0 and r.experiment == "" for r in pre)
    assert len(pre) == sum(1 for r in rewards if r.experiment == "")
    assert pre_period_rewards("decode-ab", rewards, T0 - 2 * HOUR, T0) == \
        [r for r in pre if r.ts >= T0 - 2 * HOUR]
    lat = latency_by_arm("decode-ab", served)
    assert set(lat) == {"greedy", "beam4"} and sum(map(len, lat.values())) == 60
    assert latency_by_arm("decode-ab", [s for s in served if s.latency_ms is None]) == {}


def test_report_from_the_logs_uses_every_input():
    served, rewards, item_events = logs()
    rep = report_from_records(EXP, {"source": "rewards", "rewards": rewards, "served": served,
                                    "items": ItemFacts.from_records(item_events)})
    assert_inputs_used(rep, 240)
    assert rep["users"] == 240 and rep["sessions"] == 720


def test_missing_inputs_say_why():
    served, rewards, _ = logs(n_users=60, latency=False, pre_users=0)
    rep = report_from_records(EXP, {"source": "rewards", "rewards": rewards, "served": served, "items": None})
    json.dumps(rep, allow_nan=False)
    assert not rep["analysis"]["cuped"] and "no reward records served in the" in rep["analysis"]["cuped_note"]
    g = {r["metric"]: r for r in rep["guardrails"] if r["arm"] == "beam4"}
    assert g["p99_latency_ms"]["status"] == "unavailable" and "carry no latency_ms" in g["p99_latency_ms"]["note"]
    assert g["new_item_share"]["status"] == "unavailable" and "item-events" in g["new_item_share"]["note"]
    assert rep["arms"]["beam4"]["catalog_coverage"] > 1  # no catalog size: a count of distinct items
    # a pre-period outside the window does not count; one user with data turns CUPED on, the others get zeros
    served, rewards, _ = logs(n_users=60, pre_users=1)
    far = [Reward(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "ts": r.ts - 30 * DAY})
           if r.experiment == "" else r for r in rewards]
    kw = report_inputs(EXP, far, served, None)
    assert kw["pre_period"] is None and kw["inputs"]["pre_period"]["records"] == 0
    rep = build_reward_report(EXP, rewards_of("decode-ab", rewards), **report_inputs(EXP, rewards, served, None))
    assert rep["analysis"]["cuped"] and "1 of 60 users" in rep["analysis"]["cuped_note"]
    json.dumps(rep, allow_nan=False)


def test_the_windows_are_configurable_and_validated():
    base = "layers:\n  - name: l\n    experiments:\n      - name: e\n        arms: [{name: a}, {name: b}]\n"
    cfg = ExperimentsConfig.from_yaml(base + "        analysis: {pre_period_s: 3600, new_item_age_s: 600}\n")
    an = cfg.experiment("e").analysis
    assert (an.pre_period_s, an.new_item_age_s) == (3600, 600)
    assert ExperimentsConfig.from_yaml(base).experiment("e").analysis.pre_period_s == 14 * 86_400
    for bad in ("pre_period_s: 0", "pre_period_s: -5", "new_item_age_s: true", "new_item_age_s: soon",
                "pre_period_s: 1e12"):
        with pytest.raises(ValueError, match="must be a number of seconds"):
            ExperimentsConfig.from_yaml(base + f"        analysis: {{{bad}}}\n")
    # a window of an hour before the first exposure holds no pre-period session of these logs
    served, rewards, _ = logs(n_users=30)
    short = ExperimentsConfig.from_yaml(
        EXP_YAML_WITH("analysis: {pre_period_s: 3000, new_item_age_s: 60}")).experiment("decode-ab")
    rep = report_from_records(short, {"source": "rewards", "rewards": rewards, "served": served,
                                      "items": ItemFacts.from_records(logs(n_users=1)[2])})
    assert not rep["analysis"]["cuped"] and rep["analysis"]["pre_period_s"] == 3000
    assert all(r["metrics"]["new_item_share"]["mean"] == 0 for r in rep["arms"].values())  # an hour is > 60 s


def EXP_YAML_WITH(line: str) -> str:
    from infra.demo_parts.serving import EXPERIMENTS

    return EXPERIMENTS.replace("        arms:\n", f"        {line}\n        arms:\n", 1)


def test_report_on_the_embedded_broker_through_the_http_routes_code(broker, topic_name):
    """What ``GET /v1/experiments/{name}/report`` runs (read_report_records → report_from_records) on Kafka."""
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import ensure_topics
    from serving.experiments.report import read_report_records

    kafka = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(kafka)
    served, rewards, item_events = logs()
    with EventProducer(kafka) as prod:
        prod.send_many([*item_events, *served, *rewards])
    records = read_report_records(kafka, "decode-ab", 30.0)
    assert records["source"] == "rewards" and len(records["rewards"]) == len(rewards)
    rep = report_from_records(EXP, records)
    assert_inputs_used(rep, 240)
    assert rep["source"] == "rewards"
