"""Consumer building block against the real embedded broker: bad input goes to dead letters."""

from __future__ import annotations

import json

import pytest

from ingest.codec import decode, raw_of
from ingest.consumer_loop import ContractConsumer
from ingest.contract import DEAD_LETTERS, USER_EVENTS, UserEvent
from ingest.kafka_client import BrokerUnavailable, KafkaConfig
from ingest.producer import EventProducer
from ingest.topics import TopicsConfig, ensure_topics


@pytest.fixture
def kafka(broker, topic_name):
    cfg = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(cfg, TopicsConfig(partitions={USER_EVENTS: 3, DEAD_LETTERS: 1}))
    return cfg


def make_event(i: int) -> UserEvent:
    return UserEvent(event_id=f"e{i}", user_id=f"u{i % 7}", item_id=f"i{i % 11}", type="click", ts=1_000 + i)


BAD = [
    (b"{not json", "malformed JSON"),
    (json.dumps({"event_id": "x", "user_id": "u", "item_id": "i", "type": "click", "ts": "soon"}).encode(), "$.ts"),
    (json.dumps({"event_id": "x", "user_id": "u", "type": "click", "ts": 1}).encode(), "item_id"),
    (json.dumps({"event_id": "x", "user_id": "u", "item_id": "i", "type": "teleport", "ts": 1}).encode(), "$.type"),
    (b'{"event_id": "' + b"x" * (2 << 20) + b'"}', "exceeds the limit"),
    (None, "empty message"),
]


def test_bad_messages_go_to_dead_letters_and_counts_reconcile(kafka):
    with EventProducer(kafka) as prod:
        for i in range(300):
            prod.send(make_event(i))
            if i % 50 == 25:
                raw, _ = BAD[(i // 50) % len(BAD)]
                prod.send_raw(USER_EVENTS, b"u1", raw)
    with ContractConsumer(kafka, USER_EVENTS, group_id="t") as c:
        valid, dead = [], 0
        for b in c.drain():
            valid += b.records()
            dead += b.dead_lettered
        assert c.stats.consumed == c.stats.valid + c.stats.dead_lettered == 306
    assert len(valid) == 300 and dead == 6
    assert sorted(int(r.event_id[1:]) for r in valid) == list(range(300))
    with ContractConsumer(kafka, DEAD_LETTERS) as dl:
        letters = [r for b in dl.drain() for r in b.records()]
    assert len(letters) == 6
    reasons = " | ".join(l.error for l in letters)
    for _, expected in BAD:
        assert expected in reasons, (expected, reasons)
    for l in letters:
        assert l.source_topic == USER_EVENTS
        if l.error != "empty message (null value)":
            assert raw_of(l) in {r for r, _ in BAD} or "truncated" in l.error


def test_per_user_order_is_kept_within_a_partition(kafka):
    with EventProducer(kafka) as prod:
        for i in range(500):
            prod.send(make_event(i))
    with ContractConsumer(kafka, USER_EVENTS) as c:
        seen: dict[str, list[int]] = {}
        for b in c.drain():
            for m in b.messages:
                seen.setdefault(m.record.user_id, []).append(m.record.ts)
    assert sum(map(len, seen.values())) == 500
    for ts in seen.values():
        assert ts == sorted(ts)


def test_unreachable_broker_is_a_clear_error_not_a_hang():
    cfg = KafkaConfig(bootstrap="127.0.0.1:1", connect_timeout_s=2)
    with pytest.raises(BrokerUnavailable, match="127.0.0.1:1"):
        EventProducer(cfg)


def test_decode_roundtrip_keeps_every_field():
    e = UserEvent(event_id="e1", user_id="u1", item_id="i1", type="watch", ts=5, watch_ms=1200,
                  request_id="r1", position=2, context={"surface": "home"})
    from ingest.codec import encode
    assert decode(USER_EVENTS, encode(e)) == e
