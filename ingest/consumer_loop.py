"""The consumer building block: micro-batch poll → decode → validate → dead-letter routing.

Every genrec consumer (archive, sequence shards, item indexer, reward joiner)
is this loop plus what it does with a batch of valid records. Guarantees:

* A message that fails decoding or validation is **never dropped and never
  crashes the consumer**: it becomes a ``dead-letters`` record (source topic,
  partition, offset, raw bytes, reason), and the loop moves on.
* Dead letters of a batch are flushed to Kafka before the batch is handed
  over, so an offset that moves past a bad message only moves after its dead
  letter is durable.
* Offsets are *not* committed here: the caller commits (or checkpoints) the
  ``next_offsets`` of a batch after its own state is durable — that is what
  makes the callers exactly-once.

Partitions are assigned manually (``assign()``), never through group
rebalancing: each owner knows its partitions (the Flink pattern, docs/architecture.md §4).
A ``group_id`` is still used to *commit* offsets so lag shows up in standard
Kafka tools.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import msgspec

from ingest.codec import ContractError, dead_letter, decode
from ingest.contract import DEAD_LETTERS, MAX_MESSAGE_BYTES, Record, topic_spec
from ingest.fast_records import install_lean_records
from ingest.kafka_client import KafkaConfig, as_config, connect
from ingest.producer import EventProducer


@dataclass(frozen=True)
class ConsumerConfig:
    """Micro-batch and fetch knobs of a consumer loop.

    ``fetch_max_wait_ms`` / ``fetch_min_bytes``: how long the broker may hold a
    fetch until ``fetch_min_bytes`` are there. kafka-python's default wait
    (500 ms) shows up directly in the freshness of a slow stream; latency-bound
    consumers (the sequence shards) use ~20 ms. None keeps the client default.

    ``lean_records``: parse fetched record batches with
    :mod:`ingest.fast_records` (same ``ConsumerRecord`` tuples as kafka-python,
    at a fraction of its pure-Python per-record cost); False keeps
    kafka-python's own parser.
    """

    max_batch: int = 5000
    poll_timeout_ms: int = 200
    fetch_max_bytes: int = 64 * 1024 * 1024
    max_partition_fetch_bytes: int = 8 * 1024 * 1024
    max_message_bytes: int = MAX_MESSAGE_BYTES
    fetch_max_wait_ms: int | None = None
    fetch_min_bytes: int | None = None
    lean_records: bool = True

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"ConsumerConfig.max_batch={self.max_batch} must be >= 1")
        if self.poll_timeout_ms < 0:
            raise ValueError(f"ConsumerConfig.poll_timeout_ms={self.poll_timeout_ms} must be >= 0")
        if self.fetch_max_wait_ms is not None and not 0 <= self.fetch_max_wait_ms <= 60_000:
            raise ValueError(f"ConsumerConfig.fetch_max_wait_ms={self.fetch_max_wait_ms} must be in "
                             "[0, 60000] ms (or None for the client default, 500)")
        if self.fetch_min_bytes is not None and self.fetch_min_bytes < 1:
            raise ValueError(f"ConsumerConfig.fetch_min_bytes={self.fetch_min_bytes} must be >= 1 "
                             "(or None for the client default, 1)")

    def client_kwargs(self) -> dict:
        """The fetch settings as kafka-python ``KafkaConsumer`` keyword arguments."""
        kw = {"max_poll_records": self.max_batch, "fetch_max_bytes": self.fetch_max_bytes,
              "max_partition_fetch_bytes": self.max_partition_fetch_bytes}
        if self.fetch_max_wait_ms is not None:
            kw["fetch_max_wait_ms"] = self.fetch_max_wait_ms
        if self.fetch_min_bytes is not None:
            kw["fetch_min_bytes"] = self.fetch_min_bytes
        return kw


class Message(msgspec.Struct, gc=False):
    """A valid record with where it came from.

    A msgspec Struct rather than a dataclass: built in C and never tracked by
    the garbage collector, it costs a fraction of a dataclass on the hot path
    (one per message). ``gc=False`` is safe: it only refers to a record and bytes.
    """

    partition: int
    offset: int
    key: bytes | None
    record: Record
    timestamp_ms: int  # broker/producer timestamp of the message


@dataclass
class Batch:
    """One micro-batch: valid messages, how many went to dead letters, and where to resume."""

    messages: list[Message] = field(default_factory=list)
    dead_lettered: int = 0
    consumed: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read

    def records(self) -> list[Record]:
        return [m.record for m in self.messages]


@dataclass
class RecordRun:
    """The valid records of one partition in one poll, in offset order, with their Kafka timestamps."""

    partition: int
    records: list[Record]  # or what ContractConsumer's batch_decoder returns for a clean run
    timestamps: list[int]  # broker/producer timestamp (ms) of each record's message


@dataclass
class RecordBatch:
    """One micro-batch of :meth:`ContractConsumer.poll_records`: valid records grouped by partition."""

    runs: list[RecordRun] = field(default_factory=list)
    dead_lettered: int = 0
    consumed: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset to read

    @property
    def valid(self) -> int:
        return sum(len(r.records) for r in self.runs)


@dataclass
class LoopStats:
    """Running totals; ``consumed == valid + dead_lettered`` always holds."""

    consumed: int = 0
    valid: int = 0
    dead_lettered: int = 0
    batches: int = 0


class ContractConsumer:
    """Manually assigned consumer of one contract topic that yields validated micro-batches."""

    def __init__(self, kafka: KafkaConfig | str, topic: str, partitions: Iterable[int] | None = None,
                 group_id: str | None = None, config: ConsumerConfig = ConsumerConfig(),
                 dead_letters: EventProducer | None = None, start_offsets: dict[int, int] | None = None,
                 from_beginning: bool = True, batch_decoder: Callable[[list[bytes]], Sequence] | None = None):
        from kafka import KafkaConsumer, TopicPartition

        self.kafka = as_config(kafka)
        self.topic = topic  # contract topic: decides the record type
        self.physical_topic = self.kafka.topic(topic)
        self.config = config
        self.group_id = group_id
        self._consumer = connect(
            KafkaConsumer, self.kafka, group_id=group_id, enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            **config.client_kwargs(),
        )
        self.lean_records = config.lean_records and install_lean_records(self._consumer)
        if partitions is None:
            found = self._consumer.partitions_for_topic(self.physical_topic)
            if not found:
                raise ValueError(f"topic {self.physical_topic!r} does not exist at {self.kafka.bootstrap}; "
                                 "create it first (genrec topics / ensure_topics)")
            partitions = sorted(found)
        self.partitions = sorted(partitions)
        self._tps = {p: TopicPartition(self.physical_topic, p) for p in self.partitions}
        self._consumer.assign(list(self._tps.values()))
        start_offsets = dict(start_offsets or {})
        if group_id is not None:
            for p, tp in self._tps.items():
                if p not in start_offsets:
                    committed = self._consumer.committed(tp)
                    if committed is not None:
                        start_offsets[p] = committed
        for p, tp in self._tps.items():
            if p in start_offsets:
                self._consumer.seek(tp, start_offsets[p])
            elif from_beginning:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek_to_end(tp)
        self._fast_decode = msgspec.json.Decoder(topic_spec(topic).record).decode
        # poll_records(): decodes a partition's run of values in one call; raises if any is bad (see there)
        self._batch_decode = batch_decoder or (lambda values: list(map(self._fast_decode, values)))
        self._owns_dlq = dead_letters is None
        self._dlq = dead_letters or EventProducer(self.kafka)
        self.stats = LoopStats()

    # -- the loop ------------------------------------------------------------------------

    def poll(self, timeout_ms: int | None = None) -> Batch:
        """Fetch up to ``max_batch`` messages; decode, validate, dead-letter the bad ones."""
        polled = self._fetch(timeout_ms)
        batch = Batch()
        max_bytes = self.config.max_message_bytes
        # Hot path: the topic's msgspec decoder is called directly (same decoder and checks as
        # codec.decode); anything unusual -- no value, too big, invalid -- goes through
        # _decode_or_dead_letter, which gives the standard reason for the dead letter.
        append, message, fast = batch.messages.append, Message, self._fast_decode
        for tp, msgs in polled.items():
            part = tp.partition
            for m in msgs:
                raw = m.value
                try:
                    if raw is None or len(raw) > max_bytes:
                        raise ValueError
                    rec = fast(raw)
                except Exception:
                    rec = self._decode_or_dead_letter(part, m)
                    if rec is None:
                        batch.dead_lettered += 1
                        continue
                append(message(part, m.offset, m.key, rec, m.timestamp))
            if msgs:
                batch.next_offsets[part] = msgs[-1].offset + 1
                batch.consumed += len(msgs)
        self._account(batch.consumed, batch.dead_lettered)
        return batch

    def poll_records(self, timeout_ms: int | None = None) -> RecordBatch:
        """:meth:`poll` for consumers that work on whole batches: records grouped by partition.

        Same decoding, validation and dead-letter guarantees as :meth:`poll`,
        without a :class:`Message` per record: the topic's decoder is mapped
        over a partition's values in one C-level loop, and only a partition
        that holds a bad message (no value, too big, invalid) takes the
        per-message path that dead-letters it. This is the sequence shards'
        hot path (BENCHMARKS.md, suite ``sequences``).

        ``batch_decoder`` (constructor): a callable that turns a run's values
        into a sequence of decoded events in one go (e.g.
        :class:`ingest.codec_batch.UserEventColumnsDecoder`, which yields
        columns) and raises if any value is invalid; it must accept only what
        :func:`ingest.codec.decode` accepts. A run it rejects is decoded
        message by message: its ``records`` are then a list of contract records.
        """
        polled = self._fetch(timeout_ms)
        batch = RecordBatch()
        max_bytes, fast = self.config.max_message_bytes, self._batch_decode
        for tp, msgs in polled.items():
            if not msgs:
                continue
            part = tp.partition
            values = [m.value for m in msgs]
            try:
                if max(map(len, values)) > max_bytes:  # len(None) raises too: no value -> one by one
                    raise ValueError
                records = fast(values)
                stamps = [m.timestamp for m in msgs]
            except Exception:
                records, stamps = [], []
                for m in msgs:
                    rec = self._decode_or_dead_letter(part, m)
                    if rec is None:
                        batch.dead_lettered += 1
                    else:
                        records.append(rec)
                        stamps.append(m.timestamp)
            batch.runs.append(RecordRun(part, records, stamps))
            batch.next_offsets[part] = msgs[-1].offset + 1
            batch.consumed += len(msgs)
        self._account(batch.consumed, batch.dead_lettered)
        return batch

    def _fetch(self, timeout_ms: int | None) -> dict:
        return self._consumer.poll(
            timeout_ms=self.config.poll_timeout_ms if timeout_ms is None else timeout_ms,
            max_records=self.config.max_batch)

    def _decode_or_dead_letter(self, part: int, m) -> Record | None:
        """The slow path for one message: its record, or None after sending it to dead letters
        with :func:`ingest.codec.decode`'s reason."""
        try:
            return decode(self.topic, m.value, self.config.max_message_bytes)
        except ContractError as e:
            self._dlq.send(dead_letter(self.topic, part, m.offset, m.key, m.value, e.reason),
                           topic=DEAD_LETTERS)
            return None

    def _account(self, consumed: int, dead_lettered: int) -> None:
        """Make dead letters durable before anyone can commit past them; update the running totals."""
        if dead_lettered:
            self._dlq.flush()
        self.stats.consumed += consumed
        self.stats.valid += consumed - dead_lettered
        self.stats.dead_lettered += dead_lettered
        self.stats.batches += 1

    # -- offsets ---------------------------------------------------------------------------

    def commit(self, next_offsets: dict[int, int]) -> None:
        """Commit ``{partition: next offset}`` to Kafka under ``group_id`` (for lag tools)."""
        from kafka.structs import OffsetAndMetadata

        if self.group_id is None or not next_offsets:
            return
        self._consumer.commit({self._tps[p]: OffsetAndMetadata(o, "", -1) for p, o in next_offsets.items()})

    def seek(self, offsets: dict[int, int]) -> None:
        for p, o in offsets.items():
            self._consumer.seek(self._tps[p], o)

    def positions(self) -> dict[int, int]:
        """Next offset to be fetched, per partition."""
        return {p: self._consumer.position(tp) for p, tp in self._tps.items()}

    def end_offsets(self) -> dict[int, int]:
        """Log-end offset per partition (for lag)."""
        ends = self._consumer.end_offsets(list(self._tps.values()))
        return {tp.partition: o for tp, o in ends.items()}

    def lag(self, positions: dict[int, int] | None = None) -> dict[int, int]:
        """Messages not yet consumed, per partition."""
        pos = positions or self.positions()
        return {p: max(0, e - pos.get(p, 0)) for p, e in self.end_offsets().items()}

    def drain(self, until_empty_polls: int = 3, timeout_s: float = 60.0) -> Iterable[Batch]:
        """Yield batches until the partitions are at their end (for tools and tests)."""
        empty, deadline = 0, time.monotonic() + timeout_s
        while empty < until_empty_polls and time.monotonic() < deadline:
            b = self.poll()
            if b.consumed:
                empty = 0
                yield b
            else:
                empty += 1

    def close(self) -> None:
        self._consumer.close()
        if self._owns_dlq:
            self._dlq.close()

    def __enter__(self) -> "ContractConsumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
