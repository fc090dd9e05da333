"""Exactly-once Parquet archive of the contract topics (what offline training reads).

Layout (hive-partitioned by topic and event date, UTC)::

    ROOT/topic=user-events/date=2026-11-25/part-0003-00000000000000001000-00000000000000002000-1of2.parquet

One *flush* of one Kafka partition covers a contiguous offset range
``[first, next)`` and writes one file per event date in it; every file of the
flush carries the partition, the range and ``k of n`` in its name (and the same
facts in its Parquet metadata). The rows carry ``kafka_partition`` and
``kafka_offset`` too.

Why this is exactly-once:

* a file is written under a temporary name, fsynced, and only then renamed
  into place (and the directory fsynced): a visible file is complete;
* a flush counts only when all ``n`` of its files are visible. On start the
  archiver deletes temporary files and the files of an incomplete flush (a
  crash in the middle of renaming), then resumes each partition from the
  largest ``next`` of its complete flushes — derived from the durable files,
  not from Kafka;
* offsets are committed to Kafka (group ``genrec-archive``) only after a flush
  is durable, and only for lag tools: a crash between rename and commit
  neither loses nor duplicates anything, because the resume point never
  comes from the commit.

So a ``kill -9`` at any instant ends with every valid message archived exactly
once after a restart. :func:`read_archive` reads only complete flushes, so a
reader running beside a crashed archiver never sees half a flush either.

One caveat, documented rather than hidden: a range that held *only* invalid
messages writes no file, so if the archiver dies before a later valid message
of that partition is flushed, those messages are dead-lettered again after the
restart (the dead-letter topic is at-least-once; the archive is exactly-once).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.arrow_schemas import archive_schema, from_table, to_table
from ingest.consumer_loop import ConsumerConfig, ContractConsumer, Message
from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, REWARDS, SERVED, USER_EVENTS, Record, topic_spec
from ingest.kafka_client import KafkaConfig, as_config

log = logging.getLogger(__name__)

ALL_TOPICS = (USER_EVENTS, ITEM_EVENTS, SERVED, REWARDS, DEAD_LETTERS)
_FILE = re.compile(r"^part-(\d+)-(\d+)-(\d+)-(\d+)of(\d+)\.parquet$")
_TMP_PREFIX = ".tmp-"
_META_KEY = b"genrec.archive"
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class ArchiveConfig:
    """Where and how often the archive writes.

    ``root`` is a local directory (fsync and rename are what make files
    durable, so object stores are out of scope here). A partition's buffer is
    flushed when all buffered rows reach ``max_rows`` or ``flush_interval_s``
    has passed since the last flush.
    """

    root: str
    topics: tuple[str, ...] = ALL_TOPICS
    max_rows: int = 50_000
    flush_interval_s: float = 5.0
    compression: str = "zstd"
    group_id: str = "genrec-archive"

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("ArchiveConfig.root is empty; give a directory, e.g. .genrec/archive")
        if "://" in str(self.root) and not str(self.root).startswith("file://"):
            raise ValueError(f"ArchiveConfig.root={self.root!r}: only local directories are supported "
                             "(durability relies on fsync + rename)")
        for t in self.topics:
            topic_spec(t)
        if self.max_rows < 1:
            raise ValueError(f"ArchiveConfig.max_rows={self.max_rows} must be >= 1")
        if self.flush_interval_s <= 0:
            raise ValueError(f"ArchiveConfig.flush_interval_s={self.flush_interval_s} must be > 0")
        if self.compression not in ("zstd", "snappy", "gzip", "lz4", "brotli", "none"):
            raise ValueError(f"ArchiveConfig.compression={self.compression!r}: use zstd, snappy, gzip, lz4, "
                             "brotli or none")

    @property
    def root_path(self) -> Path:
        return Path(str(self.root).removeprefix("file://"))


# ---- files on disk ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveFile:
    """One visible Parquet file of the archive and the flush it belongs to."""

    path: Path
    date: str
    partition: int
    first: int
    next: int
    k: int
    n: int

    @property
    def flush(self) -> tuple[int, int, int]:
        return (self.partition, self.first, self.next)


def topic_dir(root: str | Path, topic: str) -> Path:
    return Path(str(root).removeprefix("file://")) / f"topic={topic}"


def file_name(partition: int, first: int, nxt: int, k: int, n: int) -> str:
    return f"part-{partition:04d}-{first:020d}-{nxt:020d}-{k}of{n}.parquet"


def scan(root: str | Path, topic: str) -> list[ArchiveFile]:
    """Every visible archive file of ``topic`` (complete flushes or not), sorted by partition and offset."""
    out = []
    base = topic_dir(root, topic)
    if not base.is_dir():
        return out
    for d in base.iterdir():
        if not d.is_dir() or not d.name.startswith("date="):
            continue
        for f in d.iterdir():
            m = _FILE.match(f.name)
            if m:
                p, a, b, k, n = map(int, m.groups())
                out.append(ArchiveFile(f, d.name[5:], p, a, b, k, n))
    out.sort(key=lambda f: (f.partition, f.first, f.k))
    return out


def complete_files(files: list[ArchiveFile]) -> list[ArchiveFile]:
    """Files of the flushes whose ``n`` files are all visible."""
    groups: dict[tuple[int, int, int], list[ArchiveFile]] = {}
    for f in files:
        groups.setdefault(f.flush, []).append(f)
    return [f for g in groups.values() if len({x.k for x in g}) == g[0].n for f in g]


def resume_offsets(root: str | Path, topic: str) -> dict[int, int]:
    """Per partition, the next offset to archive: the largest end of a complete flush."""
    out: dict[int, int] = {}
    for f in complete_files(scan(root, topic)):
        out[f.partition] = max(out.get(f.partition, 0), f.next)
    return out


def recover(root: str | Path, topic: str) -> dict[int, int]:
    """Delete temporary files and incomplete flushes (what a crash left), return the resume offsets."""
    base = topic_dir(root, topic)
    if base.is_dir():
        for d in base.iterdir():
            if d.is_dir():
                for f in d.iterdir():
                    if f.name.startswith(_TMP_PREFIX):
                        f.unlink(missing_ok=True)
    files = scan(root, topic)
    complete = {id(f) for f in complete_files(files)}
    for f in files:
        if id(f) not in complete:
            log.info("archive recovery: removing %s (its flush is incomplete)", f.path)
            f.path.unlink(missing_ok=True)
    return resume_offsets(root, topic)


def read_archive(root: str | Path, topic: str, columns: list[str] | None = None) -> pa.Table:
    """The archived records of ``topic`` as one table (complete flushes only; in partition/offset order).

    Columns are the record's fields plus ``kafka_partition`` and ``kafka_offset``.
    """
    schema = archive_schema(topic)
    files = sorted(complete_files(scan(root, topic)), key=lambda f: (f.partition, f.first, f.k))
    if not files:
        t = schema.empty_table()
        return t.select(columns) if columns else t
    tables = [pq.read_table(f.path, columns=columns, schema=schema) for f in files]
    t = pa.concat_tables(tables).replace_schema_metadata(None)
    if "kafka_partition" in t.column_names and "kafka_offset" in t.column_names:
        t = t.sort_by([("kafka_partition", "ascending"), ("kafka_offset", "ascending")])
    return t


def read_records(root: str | Path, topic: str) -> list[Record]:
    """The archived records of ``topic`` as contract records (validated again)."""
    return from_table(read_archive(root, topic), topic)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _day(day_number: int) -> str:
    return datetime.fromtimestamp(int(day_number) * 86_400, tz=timezone.utc).strftime("%Y-%m-%d")


# ---- the archiver ------------------------------------------------------------------------------

@dataclass
class TopicStats:
    """What one topic's archiver did in this process."""

    rows: int = 0
    files: int = 0
    flushes: int = 0
    consumed: int = 0
    dead_lettered: int = 0


class TopicArchiver:
    """Archive one contract topic: ContractConsumer → per-partition buffers → durable Parquet flushes."""

    def __init__(self, kafka: KafkaConfig | str, topic: str, config: ArchiveConfig,
                 consumer_config: ConsumerConfig = ConsumerConfig(), dead_letters=None):
        from ingest.topics import partition_count

        self.kafka, self.topic, self.config = as_config(kafka), topic, config
        self.base = topic_dir(config.root_path, topic)
        self.base.mkdir(parents=True, exist_ok=True)
        self.resumed_from = recover(config.root_path, topic)
        n = partition_count(self.kafka, self.kafka.topic(topic))
        if not n:
            raise ValueError(f"topic {self.kafka.topic(topic)!r} does not exist at {self.kafka.bootstrap}; "
                             "create it first (genrec topics --create)")
        # The durable files are the truth: every partition starts where its files end (0 = the beginning).
        start = {p: self.resumed_from.get(p, 0) for p in range(n)}
        self.consumer = ContractConsumer(self.kafka, topic, group_id=config.group_id, config=consumer_config,
                                         dead_letters=dead_letters, start_offsets=start)
        self._first = dict(start)  # partition -> first offset of the unflushed range
        self._next = dict(start)   # partition -> next offset after what was polled
        self._buf: dict[int, list[Message]] = {p: [] for p in start}
        self._rows = 0
        self._last_flush = time.monotonic()
        self.stats = TopicStats()

    def poll(self, timeout_ms: int | None = None) -> int:
        """One micro-batch; flush when due. Returns how many messages were consumed."""
        b = self.consumer.poll(timeout_ms)
        for m in b.messages:
            self._buf[m.partition].append(m)
        self._rows += len(b.messages)
        self._next.update(b.next_offsets)
        self.stats.consumed += b.consumed
        self.stats.dead_lettered += b.dead_lettered
        if self._rows >= self.config.max_rows or \
                time.monotonic() - self._last_flush >= self.config.flush_interval_s:
            self.flush()
        return b.consumed

    def flush(self) -> int:
        """Write every partition's buffer durably, then commit the offsets (for lag tools). Returns files."""
        written, commit = 0, {}
        for p, buf in self._buf.items():
            if not buf:
                continue  # nothing valid to write: the range stays open and grows
            first, nxt = self._first[p], self._next[p]
            written += self._write_flush(p, first, nxt, buf)
            self.stats.rows += len(buf)
            self._buf[p] = []
            self._first[p] = nxt
            commit[p] = nxt
        self._rows = 0
        self._last_flush = time.monotonic()
        if commit:
            self.stats.flushes += 1
            self.stats.files += written
            try:
                self.consumer.commit(commit)
            except Exception as e:  # lag reporting only; the files already are the truth
                log.warning("offset commit for %s failed (lag tools only): %s", self.topic, e)
        return written

    def _write_flush(self, partition: int, first: int, nxt: int, msgs: list[Message]) -> int:
        ts = np.fromiter((m.record.ts for m in msgs), dtype=np.int64, count=len(msgs))  # [M]
        days = ts // _DAY_MS
        uniq = np.unique(days)
        n = len(uniq)
        staged: list[tuple[Path, Path]] = []
        for k, day in enumerate(uniq.tolist(), start=1):
            idx = np.flatnonzero(days == day).tolist()
            part = [msgs[i] for i in idx]
            table = to_table([m.record for m in part], self.topic,
                             partitions=[partition] * len(part), offsets=[m.offset for m in part])
            meta = {"topic": self.topic, "partition": partition, "first": first, "next": nxt, "k": k, "n": n}
            table = table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
            d = self.base / f"date={_day(day)}"
            d.mkdir(exist_ok=True)
            final = d / file_name(partition, first, nxt, k, n)
            tmp = d / (_TMP_PREFIX + final.name)
            with open(tmp, "wb") as f:
                pq.write_table(table, f, compression=self.config.compression)
                f.flush()
                os.fsync(f.fileno())
            staged.append((tmp, final))
        for tmp, final in staged:
            os.replace(tmp, final)
        for d in {final.parent for _, final in staged}:
            _fsync_dir(d)
        _fsync_dir(self.base)
        return len(staged)

    def lag(self) -> int:
        """Messages on the broker not yet consumed by this archiver."""
        return sum(self.consumer.lag().values())

    def close(self, flush: bool = True) -> None:
        if flush:
            self.flush()
        self.consumer.close()


class Archiver:
    """One :class:`TopicArchiver` per topic, polled round-robin in one process (``genrec archive``)."""

    def __init__(self, kafka: KafkaConfig | str, config: ArchiveConfig,
                 consumer_config: ConsumerConfig = ConsumerConfig(max_batch=5000, poll_timeout_ms=50)):
        from ingest.producer import EventProducer

        self.kafka, self.config = as_config(kafka), config
        self._dlq = EventProducer(self.kafka)  # one dead-letter producer shared by every topic
        self.topics: dict[str, TopicArchiver] = {}
        try:
            for t in config.topics:
                self.topics[t] = TopicArchiver(self.kafka, t, config, consumer_config, dead_letters=self._dlq)
        except Exception:
            self.close(flush=False)
            raise

    def run(self, stop: threading.Event | None = None, until_idle: bool = False, idle_polls: int = 3,
            timeout_s: float | None = None) -> dict[str, TopicStats]:
        """Poll every topic until ``stop`` is set, or (``until_idle``) until nothing new arrives.

        ``until_idle`` stops after ``idle_polls`` rounds in which no topic had a
        message *and* every topic is at its log end; the buffers are flushed
        before returning either way.
        """
        stop = stop or threading.Event()
        idle, deadline = 0, None if timeout_s is None else time.monotonic() + timeout_s
        while not stop.is_set():
            got = sum(a.poll() for a in self.topics.values())
            if until_idle:
                idle = idle + 1 if got == 0 else 0
                if idle >= idle_polls and all(a.lag() == 0 for a in self.topics.values()):
                    break
            if deadline is not None and time.monotonic() > deadline:
                break
        for a in self.topics.values():
            a.flush()
        return {t: a.stats for t, a in self.topics.items()}

    def close(self, flush: bool = True) -> None:
        for a in self.topics.values():
            try:
                a.close(flush=flush)
            except Exception as e:  # keep closing the others
                log.warning("closing the %s archiver: %s", a.topic, e)
        self._dlq.close()

    def __enter__(self) -> "Archiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["ArchiveConfig", "Archiver", "TopicArchiver", "TopicStats", "ArchiveFile", "read_archive",
           "read_records", "resume_offsets", "recover", "scan", "complete_files", "ALL_TOPICS"]
