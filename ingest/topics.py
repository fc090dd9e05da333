"""Topic creation with configurable partition counts (idempotent)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, REWARDS, SERVED, USER_EVENTS
from ingest.kafka_client import KafkaConfig, as_config, connect


@dataclass(frozen=True)
class TopicsConfig:
    """Partition counts per contract topic (more partitions → more shards)."""

    partitions: dict = field(default_factory=lambda: {
        USER_EVENTS: 4, ITEM_EVENTS: 1, SERVED: 4, REWARDS: 2, DEAD_LETTERS: 1,
    })
    replication: int = 1

    def __post_init__(self) -> None:
        for t, n in self.partitions.items():
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"TopicsConfig.partitions[{t!r}]={n!r} must be a positive int")
        if self.replication < 1:
            raise ValueError(f"TopicsConfig.replication={self.replication} must be >= 1")


def existing_topics(kafka: KafkaConfig | str) -> set[str]:
    """Topic names the cluster knows."""
    from kafka import KafkaConsumer

    c = connect(KafkaConsumer, as_config(kafka))
    try:
        return set(c.topics())
    finally:
        c.close()


def partition_count(kafka: KafkaConfig | str, topic: str) -> int:
    """How many partitions the physical ``topic`` has (0 when it does not exist)."""
    from kafka import KafkaConsumer

    c = connect(KafkaConsumer, as_config(kafka))
    try:
        parts = c.partitions_for_topic(topic)
        return len(parts) if parts else 0
    finally:
        c.close()


def ensure_topics(kafka: KafkaConfig | str, config: TopicsConfig = TopicsConfig(),
                  timeout_s: float = 15.0) -> dict[str, int]:
    """Create the contract topics that do not exist yet; return ``{topic: partitions}``."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    kafka = as_config(kafka)
    have = existing_topics(kafka)
    missing = [NewTopic(kafka.topic(t), n, config.replication)
               for t, n in config.partitions.items() if kafka.topic(t) not in have]
    if missing:
        admin = connect(KafkaAdminClient, kafka)
        try:
            admin.create_topics(missing)
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()
    deadline = time.monotonic() + timeout_s
    counts = {}
    for t in config.partitions:
        while True:
            counts[t] = partition_count(kafka, kafka.topic(t))
            if counts[t] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    return counts
