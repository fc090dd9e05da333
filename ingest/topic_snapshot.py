"""Everything now on a contract topic, read from the beginning without a consumer group and without writes.

Readers that look at a whole topic (the auditor, the A/B report) must not act on it: a bad record is
returned undecoded (``record`` None) instead of being dead-lettered again (its consumer already did), and
no offsets are committed.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ingest.contract import topic_spec


@dataclass(frozen=True)
class TopicMessage:
    """One message of a topic: where it is and its decoded record (None when it does not decode)."""

    partition: int
    offset: int
    record: object | None


def read_topic_messages(kafka, topic: str, timeout_s: float = 60.0) -> list[TopicMessage]:
    """Every message now on contract ``topic``, decoded (None for one that does not decode); [] if absent."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    from ingest.kafka_client import as_config, connect

    kafka = as_config(kafka)
    physical = kafka.topic(topic)
    decode = msgspec.json.Decoder(topic_spec(topic).record).decode
    consumer = connect(KafkaConsumer, kafka, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        parts = consumer.partitions_for_topic(physical)
        if not parts:
            return []
        tps = [TopicPartition(physical, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
        out: list[TopicMessage] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp.partition] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {physical} took over {timeout_s:.0f} s; raise --timeout-s")
            for tp, msgs in consumer.poll(timeout_ms=500, max_records=10_000).items():
                for m in msgs:
                    try:
                        rec = decode(m.value)
                    except (msgspec.ValidationError, msgspec.DecodeError, ValueError, TypeError):
                        rec = None
                    out.append(TopicMessage(tp.partition, m.offset, rec))
        return out
    finally:
        consumer.close()
