"""Keyed, validated producer for contract topics.

Records are validated by construction (typed structs) and encoded with the
wire codec; the key is the record's contract key, so Kafka's default murmur2
partitioner (see :mod:`ingest.partitioning`) keeps one user's events in order
in one partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ingest.codec import encode
from ingest.contract import Record, record_key, topic_of
from ingest.kafka_client import KafkaConfig, as_config, connect


@dataclass(frozen=True)
class ProducerConfig:
    """Batching knobs of the producer. ``acks='all'`` by default: nothing lost on ack."""

    linger_ms: int = 5
    batch_size: int = 256 * 1024
    acks: str | int = "all"
    max_request_size: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.linger_ms < 0 or self.batch_size <= 0:
            raise ValueError(f"ProducerConfig: linger_ms={self.linger_ms} must be >= 0 and "
                             f"batch_size={self.batch_size} > 0")
        if self.acks not in ("all", 0, 1, -1):
            raise ValueError(f"ProducerConfig.acks={self.acks!r} must be 'all', 0, 1 or -1")


class EventProducer:
    """Send contract records (or pre-encoded bytes) to their topics, keyed."""

    def __init__(self, kafka: KafkaConfig | str, config: ProducerConfig = ProducerConfig()):
        from kafka import KafkaProducer

        self.kafka = as_config(kafka)
        self._p = connect(KafkaProducer, self.kafka, linger_ms=config.linger_ms,
                          batch_size=config.batch_size, acks=config.acks,
                          max_request_size=config.max_request_size)

    def send(self, record: Record, topic: str | None = None):
        """Queue one record on its contract topic (``topic`` overrides it, contract name).

        Returns kafka-python's future (``.get()`` waits for the ack).
        """
        key = record_key(record)
        return self._p.send(self.kafka.topic(topic or topic_of(record)),
                            key=None if key is None else key.encode("utf-8"), value=encode(record))

    def send_many(self, records: Iterable[Record]) -> int:
        """Queue many records; returns how many."""
        n = 0
        for r in records:
            self.send(r)
            n += 1
        return n

    def send_raw(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None):
        """Send bytes as they are to a contract topic (bad-input tests, dead-letter replays)."""
        return self._p.send(self.kafka.topic(topic), key=key, value=value, partition=partition)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything queued is acknowledged."""
        self._p.flush(timeout=timeout_s)

    def close(self) -> None:
        self._p.flush()
        self._p.close()

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
