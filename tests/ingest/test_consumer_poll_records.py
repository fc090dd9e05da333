"""ContractConsumer.poll_records (the batch hot path of the sequence shards) against the real broker:
the same records, order, dead letters and offsets as poll(); ConsumerConfig's fetch knobs."""

from __future__ import annotations

import pytest

from ingest.consumer_loop import ConsumerConfig, ContractConsumer
from ingest.contract import DEAD_LETTERS, USER_EVENTS
from ingest.kafka_client import KafkaConfig
from ingest.producer import EventProducer
from ingest.topics import TopicsConfig, ensure_topics
from test_consumer_loop import BAD, make_event


@pytest.fixture
def kafka(broker, topic_name):
    cfg = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(cfg, TopicsConfig(partitions={USER_EVENTS: 3, DEAD_LETTERS: 1}))
    return cfg


def test_poll_records_equals_poll_with_bad_messages_mid_partition(kafka):
    with EventProducer(kafka) as prod:
        for i in range(600):
            prod.send(make_event(i))
            if i % 90 == 45:
                prod.send_raw(USER_EVENTS, b"u1", BAD[(i // 90) % len(BAD)][0])
    cfg = ConsumerConfig(max_batch=97, poll_timeout_ms=50, fetch_max_wait_ms=20)
    with ContractConsumer(kafka, USER_EVENTS, config=cfg) as a:
        by_part_a, dead_a, next_a = {}, 0, {}
        for b in a.drain():
            for m in b.messages:
                by_part_a.setdefault(m.partition, []).append((m.record, m.timestamp_ms))
            dead_a += b.dead_lettered
            next_a.update(b.next_offsets)
    with ContractConsumer(kafka, USER_EVENTS, config=cfg) as c:
        by_part_c, dead_c, next_c, empty = {}, 0, {}, 0
        while empty < 3:
            b = c.poll_records()
            empty = 0 if b.consumed else empty + 1
            assert b.consumed == b.valid + b.dead_lettered
            for run in b.runs:
                assert len(run.records) == len(run.timestamps)
                by_part_c.setdefault(run.partition, []).extend(zip(run.records, run.timestamps))
            dead_c += b.dead_lettered
            next_c.update(b.next_offsets)
        assert c.stats.consumed == c.stats.valid + c.stats.dead_lettered == 600 + 7
    assert dead_a == dead_c == 7
    assert by_part_c == by_part_a and sum(map(len, by_part_c.values())) == 600
    assert next_c == next_a
    with ContractConsumer(kafka, DEAD_LETTERS) as dl:
        letters = [r for b in dl.drain() for r in b.records()]
    assert len(letters) == 14  # both consumers dead-lettered the same 7 messages
    assert sorted((l.partition, l.offset) for l in letters[:7]) == sorted((l.partition, l.offset) for l in letters[7:])


def test_fetch_knobs_are_validated_and_passed_to_the_client():
    kw = ConsumerConfig(max_batch=10, fetch_max_wait_ms=5, fetch_min_bytes=1).client_kwargs()
    assert kw["fetch_max_wait_ms"] == 5 and kw["fetch_min_bytes"] == 1 and kw["max_poll_records"] == 10
    assert "fetch_max_wait_ms" not in ConsumerConfig().client_kwargs()   # None: the client default
    with pytest.raises(ValueError, match="fetch_max_wait_ms=-1"):
        ConsumerConfig(fetch_max_wait_ms=-1)
    with pytest.raises(ValueError, match="fetch_min_bytes=0"):
        ConsumerConfig(fetch_min_bytes=0)


def test_poll_records_with_the_columns_decoder_dead_letters_the_same_messages(kafka):
    """batch_decoder=UserEventColumnsDecoder: clean runs come back as columns, a run holding a bad
    message (one with whitespace in an id, which only the batch check sees) is decoded one by one."""
    from ingest.codec_batch import UserEventColumns, UserEventColumnsDecoder

    with EventProducer(kafka) as prod:
        for i in range(400):
            prod.send(make_event(i))
            if i % 100 == 50:
                prod.send_raw(USER_EVENTS, b"u1", BAD[0][0])
        prod.send_raw(USER_EVENTS, b"u1", b'{"event_id":"e x","user_id":"u1","item_id":"i1","type":"click","ts":1}')
    cfg = ConsumerConfig(max_batch=97, poll_timeout_ms=50, fetch_max_wait_ms=20)
    with ContractConsumer(kafka, USER_EVENTS, config=cfg, batch_decoder=UserEventColumnsDecoder()) as c:
        got, dead, kinds, empty = [], 0, set(), 0
        while empty < 3:
            b = c.poll_records()
            empty = 0 if b.consumed else empty + 1
            assert b.consumed == b.valid + b.dead_lettered
            for run in b.runs:
                kinds.add(type(run.records).__name__)
                assert len(run.records) == len(run.timestamps)
                got += run.records.records() if isinstance(run.records, UserEventColumns) else run.records
            dead += b.dead_lettered
    assert dead == 4 + 1 and kinds == {"UserEventColumns", "list"}
    assert sorted(int(e.event_id[1:]) for e in got) == list(range(400))
    assert "e x" not in {e.event_id for e in got}
