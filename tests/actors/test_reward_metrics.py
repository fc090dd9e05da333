"""The reward joiners' Prometheus endpoint, over a real socket: families, labels, types, and a failing status.

The end-to-end scrape of real joiners (Ray, broker) is in ``test_reward_joiner.py``; here a status dict
stands in for the supervisor, and one short ``genrec rewards --metrics-port`` run is scraped while it runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors.reward_supervisor import MetricsServer


def _row(joiner: int, **kw) -> dict:
    row = {"joiner": joiner, "state": "running", "partitions": [joiner], "served": 10, "events": 40, "joined": 30,
           "duplicates": 2, "orphans": 3, "events_without_request": 1, "late_served": 0, "duplicate_served": 1,
           "closed": 9, "closed_without_feedback": 2, "rewards_sent": 9, "rewards_already_in_topic": 0,
           "dead_lettered": 1, "checkpoints": 4, "open_windows": 1, "waiting_events": 0, "lag": 5,
           "checkpoint_age_s": 1.5, "rewards_per_s": 3.0, "records_per_s": 12.0, "late": {"window_closed": 4},
           "watermark": 1_767_225_600_000, "reward_latency_p50_ms": 12.0, "reward_latency_p99_ms": 80.0}
    row.update(kw)
    return row


def _families(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _values(fam) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if not s.name.endswith("_created")}


def test_counters_and_gauges_per_joiner_with_late_events_by_reason():
    status = {"joiners": [_row(0), _row(1, orphans=7, late={"outside_window": 2}),
                          {"joiner": 2, "state": "restarting", "partitions": [2]}]}
    server = MetricsServer(lambda: status)
    try:
        fams = _families(server.url)
    finally:
        server.close()
    assert fams["genrec_rewards_orphan_events"].type == "counter"
    assert _values(fams["genrec_rewards_orphan_events"]) == {(("joiner", "0"),): 3.0, (("joiner", "1"),): 7.0}
    late = _values(fams["genrec_rewards_late_events"])
    assert late == {(("joiner", "0"), ("reason", "outside_window")): 0.0,
                    (("joiner", "0"), ("reason", "window_closed")): 4.0,
                    (("joiner", "1"), ("reason", "outside_window")): 2.0,
                    (("joiner", "1"), ("reason", "window_closed")): 0.0}
    assert _values(fams["genrec_rewards_joiner_up"]) == {(("joiner", "0"),): 1.0, (("joiner", "1"),): 1.0,
                                                         (("joiner", "2"),): 0.0}
    assert fams["genrec_rewards_open_windows"].type == "gauge"
    assert _values(fams["genrec_rewards_lag_messages"])[(("joiner", "1"),)] == 5.0
    assert _values(fams["genrec_rewards_close_to_ack_seconds"])[(("joiner", "0"), ("quantile", "0.99"))] == 0.08
    assert _values(fams["genrec_rewards_watermark_seconds"])[(("joiner", "0"),)] == 1_767_225_600.0
    assert _values(fams["genrec_rewards_status_ok"]) == {(): 1.0}
    assert "orphan" in fams["genrec_rewards_orphan_events"].documentation


def test_a_status_that_fails_is_reported_not_raised():
    def broken():
        raise TimeoutError("joiners did not answer")

    server = MetricsServer(broken)
    try:
        fams = _families(server.url)
    finally:
        server.close()
    assert _values(fams["genrec_rewards_status_ok"]) == {(): 0.0}
    assert "genrec_rewards_orphan_events" not in fams


@pytest.mark.slow
def test_genrec_rewards_serves_metrics_while_it_runs(broker, topic_name, tmp_path):
    from ingest.contract import DEAD_LETTERS, REWARDS, SERVED, USER_EVENTS
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.session_stream import closing_tail, session_stream
    from ingest.topics import TopicsConfig, ensure_topics

    ns = topic_name + "."
    kafka = KafkaConfig(bootstrap=broker, namespace=ns)
    ensure_topics(kafka, TopicsConfig(partitions={SERVED: 2, USER_EVENTS: 2, REWARDS: 2, DEAD_LETTERS: 1}))
    records = session_stream(60, n_users=10, window_ms=500, lateness_ms=100)
    records += closing_tail(2, max(r.ts for _, r in records) + 1200)
    with EventProducer(kafka) as prod:
        prod.send_many(rec for _, rec in records)
    env = {**os.environ, "RAY_worker_niceness": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "infra.cli", "rewards", "--bootstrap", broker, "--namespace", ns,
                             "--window-s", "0.5", "--lateness-s", "0.1", "--interval", "1", "--duration", "30",
                             "--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = re.search(r"metrics at (http://\S+/metrics)", line)
            url = m.group(1) if m else None
        assert url, "no metrics URL in the banner:\n" + proc.stderr.read()[-2000:]
        rewards = {}
        while sum(rewards.values()) < 60 and time.monotonic() < deadline:
            fams = _families(url)
            rewards = _values(fams["genrec_rewards_rewards"])
            time.sleep(0.5)
        assert sum(rewards.values()) == 60 and len(rewards) == 2        # two joiners, one per partition
        assert {dict(k)["reason"] for k in _values(fams["genrec_rewards_late_events"])} == {
            "window_closed", "outside_window"}
        assert "genrec_rewards_orphan_events" in fams
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "final checkpoints written" in out
