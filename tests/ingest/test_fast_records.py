"""ingest.fast_records: the lean decoder yields exactly kafka-python's ConsumerRecords (real broker),
and its varint/zig-zag decoding is right at the edges."""

from __future__ import annotations

import random

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record.util import encode_varint

from ingest.consumer_loop import ConsumerConfig, ContractConsumer
from ingest.contract import USER_EVENTS
from ingest.fast_records import LeanPartitionRecords, decode_varint_at, install_lean_records
from ingest.kafka_client import KafkaConfig, connect
from ingest.topics import TopicsConfig, ensure_topics

N_PARTITIONS = 3


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, -65, 127, 128, -129, 300, -300, 8191, 8192,
                                   2**31 - 1, -2**31, 2**40 + 7, -(2**40) - 7, 2**63 - 1, -2**63])
def test_varint_zigzag_round_trip(value):
    raw = b"\x07" + _varint_bytes(value) + b"\x09"  # neighbours: decoding must start and stop exactly
    got, pos = decode_varint_at(raw, 1)
    assert got == value and pos == len(raw) - 1
    assert decode_varint_at(raw, pos) == (-5, len(raw))  # 0x09 -> zig-zag -5


def test_varint_errors_like_kafka_python():
    with pytest.raises(IndexError):
        decode_varint_at(b"\x80\x80", 0)  # truncated
    with pytest.raises(ValueError):
        decode_varint_at(b"\xff" * 11, 0)  # more than 64 bits


def _produce(kafka: KafkaConfig, topic: str, rng: random.Random, n: int, **producer_kw) -> None:
    prod = connect(KafkaProducer, kafka, acks="all", **producer_kw)
    for i in range(n):
        key = None if rng.random() < 0.2 else rng.randbytes(rng.randrange(0, 40))
        r = rng.random()
        value = None if r < 0.1 else b"" if r < 0.2 else rng.randbytes(rng.choice([1, 60, 200, 5000]))
        if key is None and value is None:  # kafka-python's producer needs one of them
            key = b"k"
        # (kafka-python's producer refuses None header values: those are covered by the built batches below)
        headers = [(f"h{j}-{'é' * rng.randrange(3)}", rng.randbytes(rng.randrange(9))) for j in range(rng.randrange(4))]
        # explicit timestamps, some far apart: multi-byte and negative timestamp deltas inside a batch
        ts = 1_767_225_600_000 + rng.choice([0, 1, 5_000, 10**9, -60_000]) + i
        prod.send(topic, key=key, value=value, headers=headers, partition=rng.randrange(N_PARTITIONS),
                  timestamp_ms=ts)
        if i % 97 == 0:
            prod.flush()
    prod.flush()
    prod.close()


def _consume_all(kafka: KafkaConfig, topic: str, lean: bool, max_records: int) -> list:
    c = connect(KafkaConsumer, kafka, enable_auto_commit=False, fetch_max_wait_ms=20, max_poll_records=max_records)
    if lean:
        assert install_lean_records(c) and c._fetcher.PartitionRecords is LeanPartitionRecords
    tps = [TopicPartition(topic, p) for p in range(N_PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out, empty = [], 0
    while empty < 4:
        polled = c.poll(timeout_ms=100, max_records=max_records)
        empty = 0 if polled else empty + 1
        for msgs in polled.values():
            out += msgs
    positions = {p: c.position(tp) for p, tp in enumerate(tps)}
    c.close()
    return sorted(out, key=lambda m: (m.partition, m.offset)), positions


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_lean_records_equal_kafka_python_field_by_field(broker, topic_name, compression):
    kafka = KafkaConfig(bootstrap=broker)
    topic = f"{topic_name}.raw"
    ensure_topics(kafka, TopicsConfig(partitions={topic: N_PARTITIONS}))
    rng = random.Random(11 if compression else 7)
    # small and large batches: linger 0 + small batch_size, then a burst that fills big batches
    _produce(kafka, topic, rng, 400, compression_type=compression, linger_ms=0, batch_size=512)
    _produce(kafka, topic, rng, 1500, compression_type=compression, linger_ms=20, batch_size=1 << 18)
    for max_records in (7, 500):  # partial take() of a partition's records, and whole fetches
        plain, plain_pos = _consume_all(kafka, topic, lean=False, max_records=max_records)
        lean, lean_pos = _consume_all(kafka, topic, lean=True, max_records=max_records)
        assert len(plain) == 1900 and lean_pos == plain_pos
        for a, b in zip(plain, lean):
            assert type(b) is type(a)
            assert a._asdict() == b._asdict()
    assert any(m.key is None for m in lean) and any(m.value == b"" for m in lean)
    assert any(m.value is None for m in lean) and any(len(m.headers) == 3 for m in lean)
    assert any(m.timestamp < lean[0].timestamp for m in lean)


def _built_records(rng: random.Random) -> bytes:
    """Record batches built by kafka-python's own builders: v2 plain and gzip, v1 legacy, None header
    values, negative and multi-byte timestamp deltas, offsets that skip (as after compaction)."""
    from kafka.record.memory_records import MemoryRecordsBuilder

    out, offset = b"", 0
    for magic, codec, n in [(2, 0, 1), (2, 0, 300), (2, 1, 120), (1, 0, 40), (2, 0, 200), (0, 1, 30), (2, 0, 5)]:
        b = MemoryRecordsBuilder(magic=magic, compression_type=codec, batch_size=1 << 22, offset=offset)
        for i in range(n):
            key = None if rng.random() < 0.2 else rng.randbytes(rng.randrange(0, 200))
            value = None if rng.random() < 0.1 else rng.randbytes(rng.choice([0, 3, 150, 20_000]))
            headers = [(f"k{j}é", None if rng.random() < 0.4 else rng.randbytes(rng.randrange(140)))
                       for j in range(rng.randrange(4))] if magic == 2 else []
            b.append(1_767_225_600_000 + rng.choice([0, -1, 70, -200_000, 10**10]), key, value, headers)
            if rng.random() < 0.05:
                b.skip(rng.randrange(1, 300))
        b.close()
        out += bytes(b.buffer())
        offset = b.next_offset() + 3
    return out


def _parse(cls, data: bytes, fetch_offset: int = 0, take: int = 13) -> tuple[list, tuple]:
    from kafka.record import MemoryRecords

    pr = cls(fetch_offset, TopicPartition("t", 2), MemoryRecords(data), check_crcs=True, on_drain=lambda _: None)
    got = []
    while pr:
        got += pr.take(take)
    return got, (pr.next_fetch_offset, pr.records_read, pr.bytes_read)


@pytest.mark.parametrize("fetch_offset", [0, 57, 320])
def test_lean_parser_equals_kafka_python_on_built_batches(fetch_offset):
    from kafka.consumer.fetcher import Fetcher

    data = _built_records(random.Random(fetch_offset))
    plain, plain_state = _parse(Fetcher.PartitionRecords, data, fetch_offset)
    lean, lean_state = _parse(LeanPartitionRecords, data, fetch_offset)
    assert len(plain) > 500 and lean_state == plain_state
    assert [m._asdict() for m in lean] == [m._asdict() for m in plain]
    assert any(v is None for m in lean for _, v in m.headers) and any(m.value == b"" for m in lean)


def test_lean_parser_rejects_corrupt_batches_like_kafka_python():
    from kafka.consumer.fetcher import Fetcher
    from kafka.errors import CorruptRecordError
    from kafka.record.memory_records import MemoryRecordsBuilder

    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
    for i in range(20):
        b.append(1_767_225_600_000 + i, b"k%d" % i, b"v" * i, [])
    b.close()
    good = bytearray(b.buffer())
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF  # a payload byte: the batch CRC catches it
    for data in (bad_crc,):
        for cls in (Fetcher.PartitionRecords, LeanPartitionRecords):
            with pytest.raises(CorruptRecordError):
                _parse(cls, bytes(data))


def test_contract_consumer_uses_the_lean_decoder_unless_told_not_to(broker, topic_name):
    kafka = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(kafka, TopicsConfig(partitions={USER_EVENTS: 1}))
    with ContractConsumer(kafka, USER_EVENTS) as c:
        assert c.lean_records and c._consumer._fetcher.PartitionRecords is LeanPartitionRecords
    with ContractConsumer(kafka, USER_EVENTS, config=ConsumerConfig(lean_records=False)) as c:
        assert not c.lean_records and c._consumer._fetcher.PartitionRecords is not LeanPartitionRecords


def test_install_refuses_an_unknown_consumer():
    class NotKafkaPython:
        pass

    assert install_lean_records(NotKafkaPython()) is False


def _v2_batch(offset: int, n: int, attrs_or: int = 0) -> bytes:
    """One built v2 batch, with attribute bits OR-ed in afterwards (CRC recomputed): timestamp type
    LOG_APPEND_TIME (0x08) or a control batch (0x20) — what a broker, not a producer, writes."""
    import struct

    from kafka.record.default_records import DefaultRecordBatch
    from kafka.record.memory_records import MemoryRecordsBuilder
    from kafka.record.util import calc_crc32c

    b = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20, offset=offset)
    for i in range(n):
        b.append(1_767_225_600_000 + 37 * i, b"k%d" % i, b"v" * (i % 90), [("h", None)] if i % 3 else [])
    b.close()
    data = bytearray(b.buffer())
    if attrs_or:
        at, crc_at = DefaultRecordBatch.ATTRIBUTES_OFFSET, DefaultRecordBatch.CRC_OFFSET
        struct.pack_into(">h", data, at, struct.unpack_from(">h", data, at)[0] | attrs_or)
        struct.pack_into(">I", data, crc_at, calc_crc32c(bytes(data[at:])))
    return bytes(data)


def test_log_append_time_and_control_batches_like_kafka_python():
    from kafka.consumer.fetcher import Fetcher

    data = _v2_batch(0, 40) + _v2_batch(40, 30, attrs_or=0x08) + _v2_batch(70, 1, attrs_or=0x20) + _v2_batch(71, 9)
    plain, plain_state = _parse(Fetcher.PartitionRecords, data)
    lean, lean_state = _parse(LeanPartitionRecords, data)
    assert [m._asdict() for m in lean] == [m._asdict() for m in plain] and lean_state == plain_state
    assert len(lean) == 79 and 70 not in {m.offset for m in lean}          # the control batch is skipped
    appended = [m for m in lean if 40 <= m.offset < 70]
    assert {m.timestamp_type for m in appended} == {1} and len({m.timestamp for m in appended}) == 1


def test_deserializers_take_kafka_pythons_own_path():
    from kafka.consumer.fetcher import Fetcher
    from kafka.record import MemoryRecords

    data = _v2_batch(0, 25)
    got = {}
    for cls in (Fetcher.PartitionRecords, LeanPartitionRecords):
        pr = cls(0, TopicPartition("t", 0), MemoryRecords(data), value_deserializer=len, on_drain=lambda _: None)
        got[cls] = [m._asdict() for m in pr.take()]
    assert got[LeanPartitionRecords] == got[Fetcher.PartitionRecords] and got[LeanPartitionRecords][5]["value"] == 5
