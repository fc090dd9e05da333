"""Contract validation: every kind of bad input is rejected with a reason; on the real broker every
bad message lands in dead-letters and the counts reconcile (consumed = valid + dead-lettered)."""

from __future__ import annotations

import json
import random

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.codec import ContractError, decode, encode, raw_of
from ingest.consumer_loop import ContractConsumer
from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, REWARDS, SERVED, USER_EVENTS
from ingest.kafka_client import KafkaConfig
from ingest.producer import EventProducer
from ingest.topics import TopicsConfig, ensure_topics

from contract_strategies import user_events

UE = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1}
SV = {"request_id": "r", "user_id": "u", "ts": 1, "model_version": "v1", "experiment": "x", "arm": "a",
      "items": ["i1"], "sids": [[1, 2]], "scores": [0.5]}
RW = {"request_id": "r", "user_id": "u", "experiment": "x", "arm": "a", "model_version": "v", "components": {},
      "reward": 1.0, "window_closed_ts": 2, "ts": 2}

BAD = [  # (topic, raw message, text the reason must contain)
    (USER_EVENTS, b"", "malformed JSON"),
    (USER_EVENTS, b"[1, 2]", "Expected `object`"),
    (USER_EVENTS, b'{"event_id": "e1", "user_id": "u1"', "malformed JSON"),
    (USER_EVENTS, b"\xff\xfe{}", "malformed JSON"),
    (USER_EVENTS, {**UE, "ts": "yesterday"}, "$.ts"),
    (USER_EVENTS, {**UE, "ts": -5}, "$.ts"),
    (USER_EVENTS, {**UE, "user_id": ""}, "$.user_id"),
    (USER_EVENTS, {**UE, "user_id": "has space"}, "user_id"),
    (USER_EVENTS, {**UE, "item_id": "x" * 129}, "$.item_id"),
    (USER_EVENTS, {**UE, "type": "teleport"}, "$.type"),
    (USER_EVENTS, {**UE, "watch_ms": -1}, "$.watch_ms"),
    (USER_EVENTS, json.dumps(UE)[:-1].encode() + b', "value": 1e999}', "$.value"),  # out of range
    (USER_EVENTS, {**UE, "context": {f"k{i}": i for i in range(40)}}, "at most 32"),
    (USER_EVENTS, {k: v for k, v in UE.items() if k != "event_id"}, "event_id"),
    (ITEM_EVENTS, {"item_id": "i", "ts": 1, "op": "delete"}, "$.op"),
    (ITEM_EVENTS, {"item_id": "i", "ts": 1, "tags": [""]}, "$.tags"),
    (ITEM_EVENTS, {"item_id": "i", "ts": 1, "embedding": []}, "$.embedding"),
    (SERVED, {**SV, "scores": [0.5, 0.1]}, "equal lengths"),
    (SERVED, {**SV, "sids": [[-1]]}, "$.sids"),
    (SERVED, {**SV, "latency_ms": -3.0}, "$.latency_ms"),
    (SERVED, {**SV, "latency_ms": "fast"}, "$.latency_ms"),
    (REWARDS, json.dumps({**RW, "reward": 0})[:-1].replace('"reward": 0', '"reward": -1e999').encode() + b"}",
     "$.reward"),
    (REWARDS, {**RW, "components": {"clicks": "many"}}, "$.components"),
]


def _raw(m) -> bytes:
    return m if isinstance(m, bytes) else json.dumps(m).encode()


@pytest.mark.parametrize("topic,msg,reason", BAD, ids=[f"{t}:{r}" for t, _, r in BAD])
def test_bad_message_rejected_with_reason(topic, msg, reason):
    with pytest.raises(ContractError) as e:
        decode(topic, _raw(msg))
    assert reason in e.value.reason


def test_oversized_message_rejected_before_parsing():
    big = json.dumps({**UE, "context": {"blob": "x" * 2_000_000}}).encode()
    with pytest.raises(ContractError, match="exceeds the limit"):
        decode(USER_EVENTS, big)


def test_unknown_fields_are_tolerated_for_forward_compatibility():
    assert decode(USER_EVENTS, _raw({**UE, "new_field": 3})).event_id == "e1"


def test_served_latency_is_optional_both_ways():
    """Records already in the topic (no latency) still decode; a record with one round-trips, and a reader
    built before the field existed (the old struct) still reads it."""
    import msgspec

    from ingest.contract import Served

    old = decode(SERVED, _raw(SV))
    assert old.latency_ms is None and b"latency_ms" not in encode(old)
    new = decode(SERVED, _raw({**SV, "latency_ms": 12.5}))
    assert new.latency_ms == 12.5 and decode(SERVED, encode(new)) == new

    class OldServed(msgspec.Struct, frozen=True):  # Served as it was before latency_ms
        request_id: str
        user_id: str
        ts: int
        model_version: str
        experiment: str
        arm: str
        items: list[str]
        sids: list[list[int]]
        scores: list[float]
        decode: dict = {}

    assert msgspec.json.decode(encode(new), type=OldServed).request_id == "r"
    with pytest.raises(ValueError, match="finite"):
        Served(**{**SV, "latency_ms": float("inf")})


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(user_events, min_size=50, max_size=120), st.randoms(use_true_random=False))
def test_random_mix_on_the_broker_reconciles(broker, good, rnd):
    import uuid

    kafka = KafkaConfig(bootstrap=broker, namespace=f"mix-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka, TopicsConfig(partitions={USER_EVENTS: 2, DEAD_LETTERS: 1}))
    bad = [_raw(m) for t, m, _ in BAD if t == USER_EVENTS]
    sent_bad = []
    with EventProducer(kafka) as p:
        for e in good:
            p.send(e)
            if rnd.random() < 0.2:
                raw = rnd.choice(bad)
                sent_bad.append(raw)
                p.send_raw(USER_EVENTS, str(rnd.random()).encode(), raw)
    with ContractConsumer(kafka, USER_EVENTS) as c:
        valid = [r for b in c.drain(until_empty_polls=2) for r in b.records()]
        assert c.stats.consumed == len(good) + len(sent_bad) == c.stats.valid + c.stats.dead_lettered
    assert sorted(map(encode, valid)) == sorted(map(encode, good))
    with ContractConsumer(kafka, DEAD_LETTERS) as dl:
        letters = [r for b in dl.drain(until_empty_polls=2) for r in b.records()]
    assert sorted(raw_of(l) for l in letters) == sorted(sent_bad)
    assert all(l.error and l.source_topic == USER_EVENTS for l in letters)


def test_served_files_archived_before_latency_existed_still_read(tmp_path):
    """Parquet files of ``served`` written without the ``latency_ms`` column read back with ``None``."""
    import pyarrow.parquet as pq

    from ingest.archive import file_name, read_records, topic_dir
    from ingest.arrow_schemas import to_table
    from ingest.contract import Served

    recs = [Served(**SV), Served(**{**SV, "request_id": "r2", "latency_ms": 7.0})]
    d = topic_dir(tmp_path, SERVED) / "date=2026-01-01"
    d.mkdir(parents=True)
    pq.write_table(to_table(recs[:1], SERVED, partitions=[0], offsets=[0]).drop_columns(["latency_ms"]),
                   d / file_name(0, 0, 1, 1, 1))
    pq.write_table(to_table(recs[1:], SERVED, partitions=[0], offsets=[1]), d / file_name(0, 1, 2, 1, 1))
    assert [r.latency_ms for r in read_records(tmp_path, SERVED)] == [None, 7.0]
