"""``genrec experiments report``: the A/B report from reward records on a real broker and from a Parquet archive."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from infra.cli import main
from actors.reward_spec import session_components
from infra.demo_parts.serving import EXPERIMENTS  # decode-ab: greedy vs beam4, as the demo runs it
from ingest.contract import REWARDS, SERVED, Reward, Served, UserEvent

T0 = 1_767_225_600_000


def sessions(n_users: int = 40, per_user: int = 3) -> tuple[list[Served], list[Reward]]:
    """Served sessions and their rewards for a two-arm experiment (users alternate arms)."""
    rng = np.random.default_rng(0)
    served, rewards = [], []
    for u in range(n_users):
        arm = "greedy" if u % 2 == 0 else "beam4"
        for k in range(per_user):
            rid, ts = f"r{u}-{k}", T0 + (u * per_user + k) * 1000
            items = [f"i{int(x)}" for x in rng.choice(200, size=5, replace=False)]
            served.append(Served(request_id=rid, user_id=f"u{u}", ts=ts, model_version="v1", experiment="decode-ab",
                                 arm=arm, items=items, sids=[[1, 2]] * 5, scores=[0.0] * 5))
            clicks = [UserEvent(event_id=f"{rid}-{p}", user_id=f"u{u}", item_id=items[p], type="click",
                                ts=ts + 100, request_id=rid, position=p)
                      for p in range(int(rng.integers(0, 3)))]
            comp = session_components(served[-1], clicks)  # what the reward joiners write
            rewards.append(Reward(request_id=rid, user_id=f"u{u}", experiment="decode-ab", arm=arm,
                                  model_version="v1", components=comp, reward=comp["clicks"],
                                  window_closed_ts=ts + 5000, ts=ts))
    return served, rewards


def _no_nan(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_no_nan(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_no_nan(v) for v in obj)
    return True


@pytest.fixture
def experiments_file(tmp_path):
    p = tmp_path / "experiments.yaml"
    p.write_text(EXPERIMENTS)
    return str(p)


def test_report_from_the_rewards_topic(broker, topic_name, experiments_file, tmp_path, capsys):
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import ensure_topics

    ns = topic_name + "."
    kafka = KafkaConfig(bootstrap=broker, namespace=ns)
    ensure_topics(kafka)
    served, rewards = sessions()
    flags = ["--bootstrap", broker, "--namespace", ns, "--experiments", experiments_file, "--timeout", "20"]

    assert main(["experiments", "report", "decode-ab", "--json", *flags]) == 2  # nothing joined yet
    assert "no reward records of experiment 'decode-ab'" in capsys.readouterr().err

    with EventProducer(kafka) as prod:
        prod.send_many([*served, *rewards])
    assert main(["experiments", "report", "decode-ab", "--json", *flags]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["source"] == "rewards" and rep["experiment"] == "decode-ab"
    assert set(rep["arms"]) == {"greedy", "beam4"}
    assert rep["sessions"] == len(rewards) and rep["users"] == 40
    assert {a: r["users"] for a, r in rep["arms"].items()} == {"greedy": 20, "beam4": 20}
    assert set(rep["arms"]["beam4"]["metrics"]["ctr"]["vs_control"]) >= {"relative", "p_value"}
    assert rep["arms"]["greedy"]["metrics"]["ctr"]["mean"] > 0
    assert _no_nan(rep)

    plot = tmp_path / "ab.png"
    assert main(["experiments", "report", "decode-ab", "--plot", str(plot), *flags]) == 0
    out = capsys.readouterr().out
    assert f"{len(rewards)} reward records of decode-ab" in out and "| beam4 |" in out
    assert plot.stat().st_size > 0

    assert main(["experiments", "report", "nope", *flags]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err


def _write_archive(root, topic: str, records) -> None:
    """One complete single-file flush of partition 0, laid out as ``genrec archive`` writes it."""
    from ingest.archive import file_name, topic_dir
    from ingest.arrow_schemas import to_table

    d = topic_dir(root, topic) / "date=2026-01-01"
    d.mkdir(parents=True)
    n = len(records)
    pq.write_table(to_table(records, topic, partitions=[0] * n, offsets=range(n)), d / file_name(0, 0, n, 1, 1))


def test_report_from_the_archive(experiments_file, tmp_path, capsys):
    served, rewards = sessions(n_users=10, per_user=2)
    root = tmp_path / "archive"
    base = ["experiments", "report", "decode-ab", "--source", "archive", "--experiments", experiments_file]

    assert main([*base, "--archive", str(root)]) == 2
    assert "does not exist; pass --archive PATH" in capsys.readouterr().err

    _write_archive(root, SERVED, served)
    assert main([*base, "--archive", str(root)]) == 2
    assert "no reward records" in capsys.readouterr().err

    _write_archive(root, REWARDS, rewards)
    assert main([*base, "--archive", str(root), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["source"] == "rewards" and rep["sessions"] == 20 and set(rep["arms"]) == {"greedy", "beam4"}
    assert rep["arms"]["beam4"]["exposures"] == 10 and _no_nan(rep)


def test_report_derives_cuped_latency_and_new_items_from_kafka(broker, topic_name, experiments_file, capsys):
    """The CLI on the real broker: the pre-period rewards, the served records' latency and item-events reach
    the report (CUPED on with a variance ratio, a p99 latency per arm, a new-item share)."""
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import ensure_topics
    from tests.serving.experiments.report_logs import logs
    from tests.serving.experiments.test_report_inputs import assert_inputs_used

    ns = topic_name + "."
    kafka = KafkaConfig(bootstrap=broker, namespace=ns)
    ensure_topics(kafka)
    served, rewards, item_events = logs()
    with EventProducer(kafka) as prod:
        prod.send_many([*item_events, *served, *rewards])
    flags = ["--bootstrap", broker, "--namespace", ns, "--experiments", experiments_file, "--timeout", "20"]
    assert main(["experiments", "report", "decode-ab", "--json", *flags]) == 0
    assert_inputs_used(json.loads(capsys.readouterr().out), 240)
    assert main(["experiments", "report", "decode-ab", *flags]) == 0
    out = capsys.readouterr().out
    assert "210 items' arrival times" in out and "CUPED on: 240 of 240 users" in out


def test_report_derives_cuped_latency_and_new_items_from_the_archive(experiments_file, tmp_path, capsys):
    from ingest.contract import ITEM_EVENTS
    from tests.serving.experiments.report_logs import logs
    from tests.serving.experiments.test_report_inputs import assert_inputs_used

    served, rewards, item_events = logs()
    root = tmp_path / "archive"
    for topic, recs in ((SERVED, served), (REWARDS, rewards), (ITEM_EVENTS, item_events)):
        _write_archive(root, topic, recs)
    assert main(["experiments", "report", "decode-ab", "--source", "archive", "--archive", str(root),
                 "--experiments", experiments_file, "--json"]) == 0
    assert_inputs_used(json.loads(capsys.readouterr().out), 240)


def test_promote_waits_on_no_effect_and_promotes_a_winner_with_a_passing_verdict(tmp_path, capsys):
    from actors.model_registry import ModelRegistry
    from serving.experiments.config import ExperimentsConfig
    from tests.serving.experiments.ab_archive import ab_archive
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GeneratorConfig, GenerativeRecommender

    exp = tmp_path / "experiments.yaml"
    exp.write_text("""
layers:
  - name: l
    experiments:
      - name: align-ab
        control: base
        analysis: {primary: [ctr], sequential: true, planned_users: 1000}
        arms: [{name: base, model_version: v1}, {name: aligned, model_version: v2}]
""")
    cfg = ExperimentsConfig.from_yaml(exp)
    reg = ModelRegistry(str(tmp_path / "registry"))
    sids = np.array([[a, b] for a in range(4) for b in range(4)], np.int64)      # 16 items, untrained models
    for v in ("v1", "v2"):
        model = GenerativeRecommender(GeneratorConfig(level_sizes=(4, 4), d_model=16, heads=2, enc_layers=1,
                                                      dec_layers=1, max_history=10, session_len=2))
        reg.publish(v, GeneratorBundle(model, None, tuple(f"i{k}" for k in range(16)), sids, "tv", b""))
    reg.promote("v1", require_verdict=False)
    reg.set_verdict("v2", {"passed": True, "reason": "test"})
    base = ["experiments", "promote", "align-ab", "--arm", "aligned", "--source", "archive", "--experiments", str(exp),
            "--registry", reg.uri, "--min-users", "50"]
    flat = ab_archive(tmp_path / "flat", cfg, effect=0.0, seed=3)
    assert main([*base, "--archive", flat]) == 0
    assert "align-ab/aligned: wait" in capsys.readouterr().out and reg.promoted() == "v1"
    win = ab_archive(tmp_path / "win", cfg, effect=0.5)
    assert main([*base, "--archive", win, "--dry-run", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["promote"] and d["promoted"] is None and reg.promoted() == "v1"
    assert main([*base, "--archive", win]) == 0
    assert "v2 is now the promoted version" in capsys.readouterr().out and reg.promoted() == "v2"
    assert main([*base[:3], "--arm", "nope", *base[5:], "--archive", win]) == 2
    assert "has no arm 'nope'" in capsys.readouterr().err
