"""Kafka's default key → partition mapping, computable by any process.

Kafka's default partitioner hashes the key bytes with murmur2 and takes
``(hash & 0x7fffffff) % num_partitions``. kafka-python's producer does the
same, so a user's partition — and so the shard that owns the user — can be
computed here without asking the broker.
"""

from __future__ import annotations

from kafka.partitioner.default import murmur2


def partition_for(key: str | bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner assigns to ``key``."""
    if num_partitions <= 0:
        raise ValueError(f"num_partitions={num_partitions} must be > 0")
    if isinstance(key, str):
        key = key.encode("utf-8")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


def partitions_for(keys, num_partitions: int) -> list[int]:
    """``partition_for`` over many keys."""
    return [partition_for(k, num_partitions) for k in keys]
