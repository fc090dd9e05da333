"""The lean batched producer: record batches kafka-python parses as written, sent once, acknowledged in order."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.batch_producer import (
    BatchProducer,
    ProduceFailed,
    encode_batch,
    encode_batches,
    send_all,
    zigzag_varint,
)
from ingest.kafka_client import KafkaConfig
from ingest.topics import TopicsConfig, ensure_topics

maybe_bytes = st.none() | st.binary(max_size=64)


def _parse(batch: bytes):
    from kafka.record.default_records import DefaultRecordBatch

    b = DefaultRecordBatch(batch)
    assert b.validate_crc()
    return b, [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in b]


def test_varints_match_kafka_python():
    from kafka.record.util import encode_varint

    for v in [0, 1, -1, 63, 64, -64, -65, 8191, 8192, 16383, 16384, 2**31 - 1, -(2**31), 2**62, -(2**63)]:
        out = bytearray()
        encode_varint(v, out.append)
        assert zigzag_varint(v) == bytes(out), v


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(maybe_bytes, maybe_bytes), min_size=1, max_size=30), st.integers(0, 10**14))
def test_kafka_pythons_parser_reads_back_what_was_encoded(records, ts):
    batch, got = _parse(encode_batch(records, ts))
    assert got == [(i, ts, k, v, []) for i, (k, v) in enumerate(records)]
    assert batch.magic == 2 and batch.compression_type == 0 and batch.producer_id == -1


def test_long_keys_values_and_many_records_take_the_long_varints():
    rng = random.Random(1)
    records = [(b"k%d" % i, b"v" * rng.randrange(400)) for i in range(20_000)]
    records += [(b"x" * 20_000, b"y" * 70_000), (None, None)]  # lengths and a record size past 2-byte varints
    _, got = _parse(encode_batch(records, 7))
    assert [(k, v) for _, _, k, v, _ in got] == records and got[-1][0] == len(records) - 1


def test_empty_batches_are_refused_and_batches_stay_under_the_bound():
    with pytest.raises(ValueError, match="at least one record"):
        encode_batch([], 0)
    assert encode_batches([], 0) == []
    records = [(b"k", b"v" * 1000)] * 50 + [(b"k", b"v" * 5000)] + [(b"k%d" % i, b"v" * 10) for i in range(300)]
    batches = encode_batches(records, 9, max_bytes=4096)
    got = []
    for n, batch in batches:
        _, recs = _parse(batch)
        assert len(recs) == n and [r[0] for r in recs] == list(range(n))   # each batch counts from offset 0
        assert n == 1 or len(batch) <= 4096
        got += [(k, v) for _, _, k, v, _ in recs]
    assert got == records and len(batches) > 10
    assert encode_batches(records, 9, max_bytes=1 << 30) == [(len(records), encode_batch(records, 9))]


@pytest.fixture
def kafka(broker, topic_name):
    cfg = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(cfg, TopicsConfig(partitions={"rewards": 2}))
    return cfg


def _read(kafka, topic, n, lean: bool) -> dict[int, list]:
    from kafka import KafkaConsumer, TopicPartition

    from ingest.fast_records import install_lean_records

    c = KafkaConsumer(bootstrap_servers=kafka.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    if lean:
        assert install_lean_records(c)
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got: dict[int, list] = {0: [], 1: []}
    deadline = time.monotonic() + 30
    while sum(map(len, got.values())) < n and time.monotonic() < deadline:
        for tp, msgs in c.poll(timeout_ms=200).items():
            got[tp.partition] += [(m.offset, m.key, m.value) for m in msgs]
    c.close()
    return got


def test_records_land_in_order_once_per_partition_and_acks_give_their_offsets(kafka):
    topic = kafka.topic("rewards")
    acks = []
    records = {0: [(b"u%d" % i, b"r%d" % i) for i in range(3000)], 1: [(None, b"x" * 300)] * 1200}
    with BatchProducer(kafka, topic, max_batch_bytes=16_384, on_ack=lambda *a: acks.append(a)) as prod:
        n_requests = prod.send(records, sent_at=42.0)
        prod.flush()
        assert n_requests > 2 and prod.in_flight == 0          # batches of ≤ 16 KiB: several requests
        prod.send({1: [(b"late", b"last")]})
        prod.flush()
    for lean in (True, False):  # the lean parser and kafka-python's own read the same records
        got = _read(kafka, topic, 4201, lean)
        assert [(k, v) for _, k, v in got[0]] == records[0]
        assert [(k, v) for _, k, v in got[1]] == records[1] + [(b"late", b"last")]
        assert [o for o, _, _ in got[0]] == list(range(3000))
    ends: dict[int, int] = {}
    for partition, base, count, sent_at in acks:
        assert base == ends.get(partition, 0)  # each batch starts where the one before ended
        ends[partition] = base + count
    assert ends == {0: 3000, 1: 1201} and acks[0][3] == 42.0


def test_a_failed_request_is_an_error_not_a_retry(kafka):
    from kafka.errors import KafkaConnectionError
    from kafka.future import Future

    topic = kafka.topic("rewards")
    prod = BatchProducer(kafka, topic)
    try:
        with pytest.raises(ValueError, match="no partition 7"):
            prod.send({7: [(b"k", b"v")]})
        sent: list = []

        def send(node, request, **kw):  # stands in for the wire: the request is out, its answer pending
            sent.append(Future())
            return sent[-1]

        prod._client.send = send
        prod.send({0: [(b"k", b"v")]})
        assert len(sent) == 1 and prod.in_flight == 1
        sent[0].failure(KafkaConnectionError("connection reset"))  # the connection dies before the answer
        with pytest.raises(ProduceFailed, match="connection reset"):
            prod.poll()
        assert len(sent) == 1 and prod.in_flight == 0            # sent once, never again
        with pytest.raises(ProduceFailed):                       # and the error stays
            prod.send({0: [(b"k2", b"v2")]})
        assert len(sent) == 1

        class Answer:  # a broker answer with an error code for one partition
            topics = [(topic, [(1, 6, -1, -1, -1)])]             # 6: NOT_LEADER_OR_FOLLOWER

        prod.error = None
        prod._answered(None, {1: 3}, 0.0, Answer())
        with pytest.raises(ProduceFailed, match="NotLeader"):
            prod.flush()
    finally:
        prod._client.close()


def test_send_all_groups_by_partition(kafka):
    topic = kafka.topic("rewards")
    with BatchProducer(kafka, topic) as prod:
        send_all(prod, [(1, b"a", b"1"), (0, b"b", b"2"), (1, b"c", b"3")])
    got = _read(kafka, topic, 3, lean=True)
    assert [(k, v) for _, k, v in got[1]] == [(b"a", b"1"), (b"c", b"3")] and len(got[0]) == 1
