"""A lean record decoder for kafka-python: one tight loop per v2 record batch.

What and why: profiling kafka-python 2.3's consume path on the ``user-events``
topic (cProfile, 100k events) put nearly all of its ~7.5 µs/event in pure
Python per-record parsing — ``Fetcher.PartitionRecords._unpack_records``,
``DefaultRecordBatch._read_msg`` with seven ``decode_varint`` calls per
record, the ``timestamp_type``/``is_control_batch`` properties re-evaluated
per record, a ``DefaultRecord`` object, then a 13-field ``ConsumerRecord``
built through the namedtuple's Python-level ``__new__``. Every genrec
consumer (sequence shards, feeds, item indexer) pays that before doing any
work of its own.

:class:`LeanPartitionRecords` replaces only that parsing. For an ordinary
*magic-2, non-control* batch it walks the batch buffer itself — record
layout from the Kafka protocol spec (KIP-98 message format v2:
``length varint, attributes int8, timestampDelta varlong, offsetDelta varint,
key bytes, value bytes, headers [key string, value bytes]``; varints are
protobuf zig-zag varints) — with the one- and two-byte varint cases inlined, and yields
exactly the ``ConsumerRecord`` tuples kafka-python would: same fields
(offset = base offset + delta, timestamp = first timestamp + delta, or the
batch's max timestamp under LOG_APPEND_TIME, checksum None, serialized
sizes), same ``records_read`` / ``bytes_read`` / ``next_fetch_offset``
bookkeeping, same batch CRC check (``batch.validate_crc()``) and the same
``CorruptRecordError`` on a malformed record. Compressed v2 batches are
decompressed by the batch's own ``_maybe_uncompress`` and then take the same
loop. Everything else — legacy (magic 0/1) batches, ``read_committed``
isolation (aborted-transaction filtering), consumers with key/value
deserializers — goes through kafka-python's own code; control batches are
skipped exactly as the parent skips them.

:func:`install_lean_records` puts it into one ``KafkaConsumer`` (the fetcher
builds ``self.PartitionRecords(...)`` per fetched partition); the kafka-python
internals it relies on are reached through :mod:`ingest.compat_kafka`, which checks
the installed version first; otherwise it logs once why and leaves kafka-python's
parser in place. ``tests/ingest/test_fast_records.py`` checks
equality with kafka-python field by field against the real broker.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_warned = False


def decode_varint_at(buf, pos: int) -> tuple[int, int]:
    """Zig-zag varint at ``buf[pos]`` (bytes/bytearray): ``(value, next position)``.

    The general case; the hot loop inlines the one- and two-byte cases.
    Raises ``ValueError`` past 64 bits and ``IndexError`` on a truncated
    buffer, like kafka-python's ``decode_varint``.
    """
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    result, shift = b & 0x7F, 7
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift >= 64:
            raise ValueError("Out of int64 range")


def _define():
    """Build the subclass (only if kafka-python's internals are what this module expects)."""
    from ingest.compat_kafka import record_internals

    k = record_internals()
    parent, READ_UNCOMMITTED, ConsumerRecord = k.PartitionRecords, k.READ_UNCOMMITTED, k.ConsumerRecord
    CorruptRecordError = k.CorruptRecordError

    tuple_new = tuple.__new__  # builds the namedtuple in C (its __new__ is a Python function)
    varint = decode_varint_at

    class LeanPartitionRecords(parent):
        """``Fetcher.PartitionRecords`` whose record parsing is :mod:`ingest.fast_records`' loop."""

        def _unpack_records(self, tp, records, key_deserializer, value_deserializer):
            if key_deserializer or value_deserializer or self.isolation_level != READ_UNCOMMITTED:
                yield from parent._unpack_records(self, tp, records, key_deserializer, value_deserializer)
                return
            try:
                batch = records.next_batch()
                last_batch = None
                while batch is not None:
                    last_batch = batch
                    if self.check_crcs and not batch.validate_crc():
                        raise CorruptRecordError(
                            "Record batch for partition %s at offset %s failed crc check" % (
                                self.topic_partition, batch.base_offset))
                    if batch.magic != 2:
                        yield from self._legacy_batch(tp, batch)
                    elif batch.is_control_batch:
                        self.leader_epoch = batch.leader_epoch
                        self.next_fetch_offset = batch.next_offset
                    else:
                        self.leader_epoch = batch.leader_epoch
                        yield from self._v2_batch(tp, batch)
                    batch = records.next_batch()
                if last_batch is not None and last_batch.magic == 2:
                    self.next_fetch_offset = last_batch.next_offset
                self.drain()
            except StopIteration:  # as the parent: never let it end the generator silently
                log.exception("StopIteration raised unpacking messageset")
                raise RuntimeError("StopIteration raised unpacking messageset")

        def _legacy_batch(self, tp, batch):
            """A magic 0/1 batch, record by record as kafka-python's own loop does it."""
            for record in batch:
                if self.check_crcs and not record.validate_crc():
                    raise CorruptRecordError("Record for partition %s at offset %s failed crc check" % (
                        self.topic_partition, record.offset))
                key, value, headers = record.key, record.value, record.headers
                header_size = sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0)
                                  for k, v in headers) if headers else -1
                self.records_read += 1
                self.bytes_read += record.size_in_bytes
                self.next_fetch_offset = record.offset + 1
                yield ConsumerRecord(tp.topic, tp.partition, self.leader_epoch, record.offset, record.timestamp,
                                     record.timestamp_type, key, value, headers, record.checksum,
                                     len(key) if key is not None else -1,
                                     len(value) if value is not None else -1, header_size)

        def _v2_batch(self, tp, batch):
            """The records of one magic-2 data batch, parsed in one loop over its buffer."""
            hdr = batch._header_data
            base_offset, attrs, first_ts, max_ts, count = hdr[0], hdr[5], hdr[7], hdr[8], hdr[12]
            if attrs & 0x07:  # compressed: the batch's own codec step, then the same loop
                batch._maybe_uncompress()
            buf = bytes(batch._buffer)  # bytes: slicing gives bytes directly (one copy, not two)
            pos, end = batch._pos, len(buf)
            log_append = bool(attrs & 0x08)
            ts_type = 1 if log_append else 0
            topic, part, epoch = tp.topic, tp.partition, self.leader_epoch
            try:
                for _ in range(count):
                    b = buf[pos]; pos += 1  # noqa: E702 - length varint, one-byte fast path
                    if b < 0x80:
                        length = (b >> 1) ^ -(b & 1)
                    elif buf[pos] < 0x80:  # two-byte varint (|value| 64..8191)
                        b = (b & 0x7F) | (buf[pos] << 7); pos += 1  # noqa: E702
                        length = (b >> 1) ^ -(b & 1)
                    else:
                        length, pos = varint(buf, pos - 1)
                    start = pos
                    if buf[pos] < 0x80:  # attributes (unused; kafka-python reads them as a varint)
                        pos += 1
                    else:
                        _, pos = varint(buf, pos)
                    b = buf[pos]; pos += 1  # noqa: E702 - timestamp delta
                    if b < 0x80:
                        ts_delta = (b >> 1) ^ -(b & 1)
                    elif buf[pos] < 0x80:  # two-byte varint (|value| 64..8191)
                        b = (b & 0x7F) | (buf[pos] << 7); pos += 1  # noqa: E702
                        ts_delta = (b >> 1) ^ -(b & 1)
                    else:
                        ts_delta, pos = varint(buf, pos - 1)
                    b = buf[pos]; pos += 1  # noqa: E702 - offset delta
                    if b < 0x80:
                        offset = base_offset + ((b >> 1) ^ -(b & 1))
                    elif buf[pos] < 0x80:
                        b = (b & 0x7F) | (buf[pos] << 7); pos += 1  # noqa: E702
                        offset = base_offset + ((b >> 1) ^ -(b & 1))
                    else:
                        delta, pos = varint(buf, pos - 1)
                        offset = base_offset + delta
                    b = buf[pos]; pos += 1  # noqa: E702 - key length (-1: null)
                    if b < 0x80:
                        n = (b >> 1) ^ -(b & 1)
                    elif buf[pos] < 0x80:  # two-byte varint (|value| 64..8191)
                        b = (b & 0x7F) | (buf[pos] << 7); pos += 1  # noqa: E702
                        n = (b >> 1) ^ -(b & 1)
                    else:
                        n, pos = varint(buf, pos - 1)
                    if n >= 0:
                        key, key_size = buf[pos:pos + n], n
                        pos += n
                    else:
                        key, key_size = None, -1
                    b = buf[pos]; pos += 1  # noqa: E702 - value length (-1: null)
                    if b < 0x80:
                        n = (b >> 1) ^ -(b & 1)
                    elif buf[pos] < 0x80:  # two-byte varint (|value| 64..8191)
                        b = (b & 0x7F) | (buf[pos] << 7); pos += 1  # noqa: E702
                        n = (b >> 1) ^ -(b & 1)
                    else:
                        n, pos = varint(buf, pos - 1)
                    if n >= 0:
                        value, value_size = buf[pos:pos + n], n
                        pos += n
                    else:
                        value, value_size = None, -1
                    b = buf[pos]; pos += 1  # noqa: E702 - header count
                    if b == 0:
                        headers, header_size = [], -1
                    else:
                        headers, header_size, pos = _headers(buf, pos - 1)
                    if pos - start != length:
                        raise CorruptRecordError(
                            "Invalid record size: expected to read {} bytes in record "
                            "payload, but instead read {}".format(length, pos - start))
                    self.records_read += 1
                    self.bytes_read += length
                    self.next_fetch_offset = offset + 1
                    yield tuple_new(ConsumerRecord, (
                        topic, part, epoch, offset, max_ts if log_append else first_ts + ts_delta, ts_type,
                        key, value, headers, None, key_size, value_size, header_size))
            except (ValueError, IndexError) as err:
                raise CorruptRecordError("Found invalid record structure: {!r}".format(err))
            if pos != end:
                raise CorruptRecordError("{} unconsumed bytes after all records consumed".format(end - pos))

    def _headers(buf, pos):
        """Headers at ``pos`` (count varint first): ``(list of (str, bytes|None), serialized size, next pos)``."""
        count, pos = varint(buf, pos)
        if count < 0:
            raise CorruptRecordError("Found invalid number of record headers {}".format(count))
        headers, size = [], 0
        for _ in range(count):
            n, pos = varint(buf, pos)
            if n < 0:
                raise CorruptRecordError("Invalid negative header key size {}".format(n))
            raw_key = buf[pos:pos + n]
            pos += n
            h_key = raw_key.decode("utf-8")
            n, pos = varint(buf, pos)
            if n >= 0:
                h_value = buf[pos:pos + n]
                pos += n
                size += len(raw_key) + n
            else:
                h_value = None
                size += len(raw_key)
            headers.append((h_key, h_value))
        return headers, (size if headers else -1), pos

    return LeanPartitionRecords


try:
    LeanPartitionRecords = _define()
    _unavailable: str | None = None
except (ImportError, AttributeError, RuntimeError) as e:  # another kafka-python: keep its own parser
    LeanPartitionRecords = None
    _unavailable = f"{type(e).__name__}: {e}"


def install_lean_records(consumer) -> bool:
    """Make ``consumer`` (a kafka-python ``KafkaConsumer``) parse fetched records with the lean loop.

    Per instance: only this consumer's fetcher changes. Returns False — and
    logs once per process — when this kafka-python's internals are not the
    ones the lean decoder was written against; the consumer then keeps
    kafka-python's parser and works exactly as before.
    """
    global _warned
    from ingest.compat_kafka import partition_records_class, set_partition_records_class

    current = partition_records_class(consumer)
    reason = _unavailable
    if reason is None and (current is None or not issubclass(LeanPartitionRecords, current)):
        reason = "KafkaConsumer._fetcher.PartitionRecords not found"
    if reason is not None:
        if not _warned:
            _warned = True
            log.warning("lean Kafka record decoder not installed (%s); using kafka-python's parser", reason)
        return False
    set_partition_records_class(consumer, LeanPartitionRecords)
    return True
