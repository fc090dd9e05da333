"""Replay into the real broker: event-time order per partition, everything arrives, rate is respected."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from ingest.consumer_loop import ContractConsumer
from ingest.contract import ITEM_EVENTS, USER_EVENTS
from ingest.kafka_client import KafkaConfig
from ingest.partitioning import partition_for
from ingest.producer import EventProducer
from ingest.replay import ReplayConfig, TokenBucket, replay_dataset
from ingest.synthetic import SyntheticWorld, WorldConfig
from ingest.topics import ensure_topics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(WorldConfig(seed=3, n_users=60, n_items=120, n_topics=6, sessions_per_user=3, days=5))


@pytest.fixture
def kafka(broker, topic_name):
    cfg = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(cfg)
    return cfg


def _consume(kafka, topic):
    with ContractConsumer(kafka, topic) as c:
        return [m for b in c.drain(until_empty_polls=2) for m in b.messages]


def test_replay_keeps_event_time_order_and_sends_everything(kafka, world):
    ds = world.dataset()
    with EventProducer(kafka) as prod:
        stats = replay_dataset(ds, prod, ReplayConfig(progress=False))
    assert stats.user_events == len(ds.user_events) and stats.item_events == len(ds.item_events)
    got = _consume(kafka, USER_EVENTS)
    assert sorted(m.record.event_id for m in got) == sorted(e.event_id for e in ds.user_events)
    by_part: dict[int, list] = {}
    for m in sorted(got, key=lambda m: (m.partition, m.offset)):
        assert m.partition == partition_for(m.record.user_id, 4)  # Kafka's murmur2 default, by user
        by_part.setdefault(m.partition, []).append(m.record.event_id)
    for p, ids in by_part.items():  # each partition's log is the data set's event-time order
        assert ids == [e.event_id for e in ds.user_events if partition_for(e.user_id, 4) == p]
    items = _consume(kafka, ITEM_EVENTS)
    assert len(items) == len(ds.item_events)


def test_replay_rate_and_limit(kafka, world):
    ds = world.dataset()
    t0 = time.perf_counter()
    with EventProducer(kafka) as prod:
        stats = replay_dataset(ds, prod, ReplayConfig(rate=500, limit=300, include_items=False, progress=False))
    elapsed = time.perf_counter() - t0
    assert stats.user_events == 300 and stats.item_events == 0
    assert elapsed >= 299 / 500 * 0.95, elapsed  # never faster than the rate (the bucket starts with 1 token)
    assert stats.events_per_s <= 500 * 1.05, stats.events_per_s
    assert stats.events_per_s >= 100, stats.events_per_s  # and roughly at it, even on a loaded machine


@pytest.mark.timeout(10)
def test_token_bucket_paces_with_a_fake_clock():
    now = [0.0]
    bucket = TokenBucket(100, 10, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    for _ in range(1000):
        bucket.acquire()
    assert 9.8 <= now[0] <= 10.0  # 1000 tokens at 100/s, starting from one token


def test_replay_config_errors_name_the_value():
    with pytest.raises(ValueError, match="rate=-1"):
        ReplayConfig(rate=-1)


def test_genrec_replay_and_topics_commands(broker, topic_name):
    env = {**os.environ, "KAFKA_BOOTSTRAP": broker, "GENREC_TOPIC_NAMESPACE": topic_name + "."}
    out = subprocess.run([sys.executable, "-m", "infra.cli", "replay", "--source", "synthetic", "--small",
                          "--limit", "500", "--no-progress"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sent 500 user events and" in out.stdout
    out = subprocess.run([sys.executable, "-m", "infra.cli", "topics"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{topic_name}.user-events" in out.stdout and "4 partitions" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "infra.cli", "topics", "--bootstrap", "127.0.0.1:1"],
                         cwd=REPO, env={**env, "KAFKA_BOOTSTRAP": "", "GENREC_KAFKA__CONNECT_TIMEOUT_S": "2"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "127.0.0.1:1" in bad.stderr
