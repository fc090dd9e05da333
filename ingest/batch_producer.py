"""A lean batched producer: pre-encoded records of one topic, one v2 record batch per partition and request.

Why: kafka-python's ``KafkaProducer.send`` does per record, in pure Python,
a topic-name check, a metadata wait, the partitioner, a future, the
accumulator's batch append and varint encoding. The reward
joiner emits one small record per closed session, thousands per poll; that
per-record cost led its profile (docs/decisions/023-reward-joiner-speed.md).
A caller that already holds a whole list of records per partition needs none
of it: :class:`BatchProducer` builds each partition's record batch in one
loop and sends all of them in one ``Produce`` request.

What comes from kafka-python (kept, not copied): connections, security,
metadata and API-version negotiation (``KafkaClient``), the request and
response schemas (``kafka.protocol.produce``) and the C CRC-32C
(``kafka.record.util.calc_crc32c``). What this module does itself:

* :func:`encode_batch` writes the record batch (KIP-98 message format v2,
  uncompressed, CreateTime; layout from the Kafka protocol guide: a 61-byte
  header, then per record ``length varint, attributes int8, timestampDelta
  varlong, offsetDelta varint, key, value, headers``, varints zig-zag). All
  records of a batch carry the batch's timestamp (delta 0). No producer id:
  neither idempotent nor transactional, like kafka-python with ``retries=0``.
* :func:`encode_batches` cuts each partition's records into batches of at
  most ``max_batch_bytes`` while it writes them (Kafka's ``message.max.bytes`` bounds one batch;
  a Produce request v3+ may carry only one batch per partition, so bigger
  volumes go out as several requests, in order, on one connection).
* **Every batch is sent once.** There is no retry: a request that fails, times
  out or is answered with an error stores the error, and the next
  :meth:`poll` / :meth:`flush` / :meth:`send` raises it. Whether such a batch
  landed is the caller's to find out (the reward joiner reads its output back
  after a restart, :mod:`actors.reward_joiner`); a retry could have written
  it twice.

I/O runs in the caller's thread (no background sender): :meth:`send` queues
the requests and writes what the socket takes; :meth:`poll` (non-blocking)
writes the rest and reads acknowledgements, calling ``on_ack(partition,
base_offset, count, sent_at)`` for each acknowledged batch (``sent_at``:
``time.perf_counter()`` when it was queued); :meth:`flush` waits for all of
them. Single-threaded use only. ``tests/ingest/test_batch_producer.py`` checks
the batches against kafka-python's own parser and the lean consumer, on the
real broker.
"""

from __future__ import annotations

import struct
import time
from typing import Callable, Iterable, Sequence

from ingest.kafka_client import KafkaConfig, connect

#: Default upper bound of one record batch (bytes): below Kafka's default ``message.max.bytes`` (1 MiB + 12).
MAX_BATCH_BYTES = 1_000_000

_AFTER_CRC = struct.Struct(">hiqqqhii")  # attributes, lastOffsetDelta, first/max ts, pid, epoch, seq, count
_BEFORE_CRC = struct.Struct(">qiibI")    # baseOffset, batchLength, partitionLeaderEpoch, magic, crc
HEADER_BYTES = _BEFORE_CRC.size + _AFTER_CRC.size  # 61


def _varint(z: int) -> bytes:
    """Unsigned LEB128 of an already zig-zagged value."""
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def zigzag_varint(v: int) -> bytes:
    """Kafka's varint (zig-zag, then LEB128) of a signed 64-bit value."""
    return _varint((v << 1) ^ (v >> 63))


_TABLE_SIZE = 1 << 14
_ZZ = [zigzag_varint(v) for v in range(_TABLE_SIZE)]  # 0..16383: one or two bytes each
_NULL = zigzag_varint(-1)


def encode_batch(records: Sequence[tuple[bytes | None, bytes | None]], timestamp_ms: int) -> bytes:
    """One uncompressed v2 record batch of ``(key, value)`` pairs (None: null), all at ``timestamp_ms``."""
    if not records:
        raise ValueError("encode_batch needs at least one record")
    return encode_batches(records, timestamp_ms, 1 << 62)[0][1]


def encode_batches(records: Sequence[tuple[bytes | None, bytes | None]], timestamp_ms: int,
                   max_bytes: int = MAX_BATCH_BYTES) -> list[tuple[int, bytes]]:
    """``records`` as consecutive record batches of at most ``max_bytes`` each (a single bigger record:
    alone), in one pass: ``[(number of records, batch bytes), ...]``."""
    from kafka.record.util import calc_crc32c

    zz, size_t, null = _ZZ, _TABLE_SIZE, _NULL
    out: list[tuple[int, bytes]] = []
    parts: list[bytes] = []
    extend = parts.extend
    i, total = 0, HEADER_BYTES

    def close() -> None:
        tail = _AFTER_CRC.pack(0, i - 1, timestamp_ms, timestamp_ms, -1, -1, -1, i) + b"".join(parts)
        # batchLength counts from partitionLeaderEpoch (4 + 1 + 4 bytes) to the end
        out.append((i, _BEFORE_CRC.pack(0, 9 + len(tail), 0, 2, calc_crc32c(tail)) + tail))

    for k, v in records:
        if k is None:
            kl, k = null, b""
        else:
            lk = len(k)
            kl = zz[lk] if lk < size_t else zigzag_varint(lk)
        if v is None:
            vl, v = null, b""
        else:
            lv = len(v)
            vl = zz[lv] if lv < size_t else zigzag_varint(lv)
        od = zz[i] if i < size_t else zigzag_varint(i)
        # attributes (0) and timestampDelta (0), offsetDelta, key, value, no headers (0)
        size = 3 + len(od) + len(kl) + len(k) + len(vl) + len(v)
        sz = zz[size] if size < size_t else zigzag_varint(size)
        if i and total + len(sz) + size > max_bytes:  # this record starts the next batch (offset delta 0)
            close()
            parts.clear()
            i, total = 0, HEADER_BYTES
            od = zz[0]
            size = 3 + 1 + len(kl) + len(k) + len(vl) + len(v)
            sz = zz[size] if size < size_t else zigzag_varint(size)
        extend((sz, b"\x00\x00", od, kl, k, vl, v, b"\x00"))
        total += len(sz) + size
        i += 1
    if i:
        close()
    return out


class ProduceFailed(RuntimeError):
    """A Produce request failed or was answered with an error; its records may or may not have landed."""


class BatchProducer:
    """Send pre-encoded records of one (physical) topic as one record batch per partition per request.

    ``acks``: -1 (``all``, default) or 1. ``on_ack(partition, base_offset,
    count, sent_at)`` is called in the caller's thread from :meth:`poll`,
    :meth:`flush` or :meth:`send` for each acknowledged batch.
    """

    def __init__(self, kafka: KafkaConfig, topic: str, acks: int = -1, timeout_ms: int = 30_000,
                 max_batch_bytes: int = MAX_BATCH_BYTES,
                 on_ack: Callable[[int, int, int, float], None] | None = None, metadata_timeout_s: float = 30.0):
        from kafka import KafkaClient
        from kafka.protocol.produce import ProduceRequest

        from ingest.compat_kafka import check_version

        check_version()  # the request/response field layout below is kafka-python 2.3's
        if acks not in (-1, 1):
            raise ValueError(f"BatchProducer.acks={acks!r} must be -1 (all) or 1; acks=0 gives no offsets")
        if max_batch_bytes < 1024:
            raise ValueError(f"BatchProducer.max_batch_bytes={max_batch_bytes} must be >= 1024")
        self.topic, self.acks, self.timeout_ms, self.max_batch_bytes = topic, acks, timeout_ms, max_batch_bytes
        self.on_ack = on_ack
        self._client = connect(KafkaClient, kafka)
        self._request = ProduceRequest
        self._version = self._client.api_version(ProduceRequest, max_version=8)
        self._in_flight: set = set()
        self.error: BaseException | None = None
        self.stats = {"requests": 0, "batches": 0, "records": 0, "bytes": 0}
        self._client.add_topic(topic)
        deadline = time.monotonic() + metadata_timeout_s
        while not self._client.cluster.partitions_for_topic(topic):
            if time.monotonic() > deadline:
                self._client.close()
                raise TimeoutError(f"no metadata for topic {topic!r} within {metadata_timeout_s}s; "
                                   "create it first (genrec topics)")
            self._client.poll(future=self._client.cluster.request_update(), timeout_ms=1000)

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._in_flight)

    def partitions(self) -> set[int]:
        return set(self._client.cluster.partitions_for_topic(self.topic) or ())

    def send(self, by_partition: dict[int, Sequence[tuple[bytes | None, bytes | None]]],
             timestamp_ms: int | None = None, timeout_s: float = 30.0, sent_at: float | None = None) -> int:
        """Queue ``{partition: [(key, value), ...]}`` as record batches (in order per partition); returns
        how many requests. Raises a pending error first; never blocks longer than ``timeout_s`` for a
        connection. ``sent_at`` (default: now, ``time.perf_counter()``) is what ``on_ack`` gets back."""
        self._raise()
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        sent_at = time.perf_counter() if sent_at is None else sent_at
        # rounds of at most one batch per partition (Produce v3+ takes one batch per partition per request)
        runs = {p: encode_batches(recs, ts, self.max_batch_bytes) for p, recs in by_partition.items() if recs}
        sent, k = 0, 0
        while True:
            round_ = {p: b[k] for p, b in runs.items() if k < len(b)}
            if not round_:
                break
            by_node: dict[int, dict[int, tuple[int, bytes]]] = {}
            for p, batch in round_.items():
                by_node.setdefault(self._leader(p, timeout_s), {})[p] = batch
            for node, parts in by_node.items():
                self._send_request(node, parts, timeout_s, sent_at)
                sent += 1
            k += 1
        self._client.poll(timeout_ms=0)  # write what the socket takes now
        self._raise()
        return sent

    def _leader(self, partition: int, timeout_s: float) -> int:
        from kafka import TopicPartition

        tp = TopicPartition(self.topic, partition)
        deadline = time.monotonic() + timeout_s
        while True:
            node = self._client.cluster.leader_for_partition(tp)
            if node is not None and node >= 0:
                return node
            if node is None and partition not in self.partitions():
                raise ValueError(f"{self.topic} has no partition {partition}")
            if time.monotonic() > deadline:
                raise ProduceFailed(f"no leader for {self.topic}/{partition} within {timeout_s}s")
            self._client.poll(future=self._client.cluster.request_update(), timeout_ms=500)

    def _send_request(self, node: int, parts: dict[int, tuple[int, bytes]], timeout_s: float,
                      sent_at: float) -> None:
        counts = {p: n for p, (n, _) in parts.items()}
        topic_data = [(self.topic, [(p, batch) for p, (_, batch) in sorted(parts.items())])]
        if self._version >= 3:
            req = self._request[self._version](transactional_id=None, required_acks=self.acks,
                                               timeout=self.timeout_ms, topics=topic_data)
        else:
            req = self._request[self._version](required_acks=self.acks, timeout=self.timeout_ms, topics=topic_data)
        deadline = time.monotonic() + timeout_s
        client = self._client
        while not client.ready(node):  # connecting, or max in-flight requests reached: wait (nothing sent yet)
            if client.connection_failed(node) or time.monotonic() > deadline:
                raise ProduceFailed(f"cannot send to broker {node} of {self.topic}: not ready within "
                                    f"{timeout_s}s (connection failed or too many requests in flight)")
            client.poll(timeout_ms=50)
            self._raise()
        fut = client.send(node, req, wakeup=False)
        if fut.is_done and fut.failed():  # refused before anything was written (not ready after all)
            raise ProduceFailed(f"could not queue a produce request to broker {node}: {fut.exception!r}")
        self._in_flight.add(fut)
        fut.add_callback(self._answered, fut, counts, sent_at)
        fut.add_errback(self._failed, fut, counts)
        self.stats["requests"] += 1
        self.stats["batches"] += len(counts)
        self.stats["records"] += sum(counts.values())
        self.stats["bytes"] += sum(len(b) for _, b in topic_data[0][1])

    def _answered(self, fut, counts: dict[int, int], sent_at: float, response) -> None:
        from kafka.errors import for_code

        self._in_flight.discard(fut)
        for topic, partitions in response.topics:
            for info in partitions:
                partition, error_code, base_offset = info[0], info[1], info[2]
                if error_code:
                    err = for_code(error_code)
                    self._set_error(ProduceFailed(f"{topic}/{partition}: broker answered {err.__name__} "
                                                  f"for a batch of {counts.get(partition)} records"))
                    continue
                if self.on_ack is not None:
                    self.on_ack(partition, base_offset, counts[partition], sent_at)

    def _failed(self, fut, counts: dict[int, int], exc: BaseException) -> None:
        self._in_flight.discard(fut)
        self._set_error(ProduceFailed(f"produce request for {self.topic} partitions {sorted(counts)} failed: "
                                      f"{type(exc).__name__}: {exc}"))

    def _set_error(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def poll(self) -> None:
        """Write pending bytes and read acknowledgements without waiting; raise a stored error."""
        if self._in_flight:
            self._client.poll(timeout_ms=0)
        self._raise()

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until every request is answered; raise the first error (or ``ProduceFailed`` on timeout)."""
        deadline = time.monotonic() + timeout_s
        while self._in_flight:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProduceFailed(f"{len(self._in_flight)} produce request(s) to {self.topic} not answered "
                                    f"within {timeout_s}s")
            self._client.poll(timeout_ms=min(100, int(left * 1000) + 1))
        self._raise()

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (best effort), then close the connections."""
        try:
            if self.error is None:
                self.flush(timeout_s)
        finally:
            self._client.close()

    def __enter__(self) -> "BatchProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def send_all(producer: BatchProducer, records: Iterable[tuple[int, bytes | None, bytes | None]]) -> None:
    """Group ``(partition, key, value)`` triples by partition, send them and wait (tools and tests)."""
    by_partition: dict[int, list] = {}
    for p, k, v in records:
        by_partition.setdefault(p, []).append((k, v))
    producer.send(by_partition)
    producer.flush()
