"""murmur2 partitioning: what ingest.partitioning computes is what kafka-python's producer picks."""

from __future__ import annotations

import pytest

from ingest.contract import USER_EVENTS
from ingest.kafka_client import KafkaConfig
from ingest.partitioning import partition_for, partitions_for
from ingest.producer import EventProducer
from ingest.topics import TopicsConfig, ensure_topics

KEYS = [f"u{i}" for i in range(200)] + ["", "ü-ßer", "用户42", "a" * 300, "user with spaces", "0", "-1"]


def test_partition_for_matches_the_producer_on_the_real_broker(broker, topic_name):
    kafka = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(kafka, TopicsConfig(partitions={USER_EVENTS: 7}))
    with EventProducer(kafka) as p:
        futures = [(k, p.send_raw(USER_EVENTS, k.encode(), b"{}")) for k in KEYS]
        p.flush()
        got = {k: f.get(timeout=30).partition for k, f in futures}
    assert got == {k: partition_for(k, 7) for k in KEYS}
    assert len(set(got.values())) == 7  # the keys spread over every partition


def test_known_murmur2_values_and_validation():
    # Reference hashes from Apache Kafka's Java UtilsTest.testMurmur2 (signed 32-bit); the partition is
    # (hash & 0x7fffffff) % n, as in Kafka's default partitioner.
    java = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
            b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}
    for key, h in java.items():
        for n in (1, 3, 7, 1000):
            assert partition_for(key, n) == ((h & 0xFFFFFFFF) & 0x7FFFFFFF) % n
    assert partitions_for(["a", "b"], 1) == [0, 0]
    assert partition_for("u1", 4) == partition_for(b"u1", 4)
    with pytest.raises(ValueError, match="num_partitions=0"):
        partition_for("u1", 0)
