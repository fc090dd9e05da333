"""Every use of kafka-python beyond its public API, checked against the version it was written for.

:mod:`ingest.fast_records` replaces the fetcher's per-partition record parser
(``Fetcher.PartitionRecords``) in one ``KafkaConsumer``; the classes and attributes it relies on are
reached only through this module. :func:`check_version` raises, naming the supported version, when
another kafka-python is installed; the lean parser is then not installed (kafka-python's own runs).
"""

from __future__ import annotations

from types import SimpleNamespace

#: The kafka-python release line whose internals this module uses (pyproject: ``kafka-python>=2.3.2,<3``).
SUPPORTED_KAFKA_PYTHON = "2.3"


def check_version(installed: str | None = None) -> None:
    """Raise ``RuntimeError`` naming :data:`SUPPORTED_KAFKA_PYTHON` when another release line is installed."""
    if installed is None:
        import kafka

        installed = kafka.__version__
    if ".".join(installed.split(".")[:2]) != SUPPORTED_KAFKA_PYTHON:
        raise RuntimeError(f"the lean record parser uses kafka-python {SUPPORTED_KAFKA_PYTHON}.x internals "
                           f"(ingest/compat_kafka.py) but kafka-python {installed} is installed: "
                           f"pip install 'kafka-python~={SUPPORTED_KAFKA_PYTHON}.2', or port ingest/compat_kafka.py")


def record_internals() -> SimpleNamespace:
    """The kafka-python internals the lean parser subclasses and reproduces; raises ``RuntimeError``
    (another version) or ``AttributeError`` (a missing internal, named)."""
    check_version()
    from kafka.consumer.fetcher import READ_UNCOMMITTED, ConsumerRecord, Fetcher
    from kafka.errors import CorruptRecordError
    from kafka.record.default_records import DefaultRecordBatch

    parent = Fetcher.PartitionRecords
    need = [(parent, "_unpack_records"), (parent, "drain"), (parent, "_deserialize"),
            (DefaultRecordBatch, "_maybe_uncompress"), (DefaultRecordBatch, "validate_crc"),
            (DefaultRecordBatch, "HEADER_STRUCT")]
    missing = [f"{c.__name__}.{a}" for c, a in need if not hasattr(c, a)]
    slots = getattr(DefaultRecordBatch, "__slots__", ())
    missing += [f"DefaultRecordBatch.{s}" for s in ("_buffer", "_header_data", "_pos") if s not in slots]
    if ConsumerRecord._fields != ("topic", "partition", "leader_epoch", "offset", "timestamp", "timestamp_type",
                                  "key", "value", "headers", "checksum", "serialized_key_size",
                                  "serialized_value_size", "serialized_header_size"):
        missing.append("ConsumerRecord fields")
    if missing:
        raise AttributeError("kafka-python internals changed: " + ", ".join(missing))
    return SimpleNamespace(PartitionRecords=parent, READ_UNCOMMITTED=READ_UNCOMMITTED, ConsumerRecord=ConsumerRecord,
                           CorruptRecordError=CorruptRecordError, DefaultRecordBatch=DefaultRecordBatch)


def partition_records_class(consumer):
    """The record parser class a ``KafkaConsumer``'s fetcher builds per fetched partition (None if not there)."""
    cls = getattr(getattr(consumer, "_fetcher", None), "PartitionRecords", None)
    return cls if isinstance(cls, type) else None


def set_partition_records_class(consumer, cls) -> None:
    """Make this consumer's fetcher parse fetched partitions with ``cls`` (this consumer only)."""
    consumer._fetcher.PartitionRecords = cls
