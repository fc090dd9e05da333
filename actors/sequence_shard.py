"""A sequence shard: Kafka partitions → per-user ring buffers, exactly once, as a Ray actor.

Each shard owns a fixed set of ``user-events`` partitions through manual
``assign()`` (the Flink pattern, docs/architecture.md §4; the map is in
:mod:`actors.router`). A background thread runs the loop

    poll a micro-batch (ContractConsumer.poll_records: decode + validate a
      partition's run straight into columns, UserEventColumnsDecoder; a run
      with a bad message is decoded one by one and the bad ones dead-lettered)
    → apply it to :class:`~actors.sequence_state.SequenceState` (vectorised; the
      read lock is held only for the final scatter into the rings)
    → remember the batch's next offsets
    → every N events or T seconds: checkpoint state + offsets atomically,
      *then* commit those offsets to Kafka (so lag shows in standard tools)

while Ray threads answer ``histories()`` / ``status()`` concurrently.

Exactly once: the checkpoint holds the state *and* the offsets it reflects,
written in one atomic file (:mod:`actors.checkpoint`). On (re)start the shard
loads it and seeks to those offsets, so whatever it had applied after the
checkpoint is simply applied again to the state it started from — and since
the state (including the per-partition event_id de-dup window) is a pure
function of each partition's message sequence, a crash at any instant ends in
the same state as no crash. Kafka's committed offsets are for monitoring only;
the checkpoint is the source of truth. Any error in the loop exits the worker
process (crash-only design): Ray restarts the actor (``max_restarts``), and the
restart is exactly the recovery path above.

Known at-least-once corner: a message dead-lettered after the last
checkpoint is dead-lettered again after a crash (same source partition and
offset, so consumers of ``dead-letters`` can de-duplicate on those).

:class:`ShardRuntime` is the plain-Python engine (testable without Ray);
:class:`SequenceShard` is the thin Ray actor around it.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from actors.actor_fleet import RuntimeActor
from actors.checkpoint import CheckpointConfig, CheckpointStore
from actors.compat_ray import set_concurrency_group
from actors.sequence_state import SequenceConfig, SequenceState
from ingest.codec_batch import UserEventColumns, UserEventColumnsDecoder
from ingest.consumer_loop import ConsumerConfig, ContractConsumer
from ingest.contract import USER_EVENTS
from ingest.kafka_client import KafkaConfig

log = logging.getLogger(__name__)

# Before a checkpoint, up to PRECOPY_STEPS loop steps each copy up to PRECOPY_ROWS written rows into the
# snapshot buffers (SequenceState.precopy); a 256-slot row is ~5 KB, so a step adds well under a millisecond.
PRECOPY_STEPS = 8
PRECOPY_ROWS = 512


@dataclass(frozen=True)
class ShardConfig:
    """Everything one shard needs; built by the supervisor.

    ``group_id`` names the Kafka consumer group under which offsets are
    committed (monitoring only) and prefixes the checkpoint name.
    ``exit_on_error``: crash the process on a loop error so Ray restarts the
    actor from its checkpoint (True inside Ray; False for in-process use).
    Freshness figures in ``status()`` cover events applied in the last
    ``freshness_window_s`` seconds (0 samples when idle).
    ``fetch_max_wait_ms``: how long the broker may hold a fetch waiting for
    data (kafka-python's default, 500 ms, shows up directly in freshness);
    it fills ``consumer.fetch_max_wait_ms`` when that is None; None keeps the
    client default. ``niceness``: CPU priority the Ray actor asks for — Ray
    starts workers at nice 15 (background), which on a busy host starves a
    latency-critical stream consumer; None keeps Ray's.
    ``gil_switch_ms``: the actor process's ``sys.setswitchinterval``. The
    consume loop and the ``histories()`` reads share one interpreter; at
    Python's default 5 ms a read (or the loop, when a fetch lands) can wait
    up to 5 ms for the GIL per hand-over. None keeps the default.
    ``gc_gen0_threshold``: the actor process's first garbage-collector
    threshold (Python's is 700). kafka-python makes several GC-tracked objects
    per message that live until the batch is applied, so at 700 the collector
    runs many times per 5,000-message batch and promotes them to older
    generations it then traverses again; the startup heap (Ray, libraries) is
    also frozen (``gc.freeze``) so full collections skip it — fewer and
    shorter pauses of the loop. None leaves the collector alone.
    """

    shard_id: int
    num_shards: int
    partitions: tuple[int, ...]
    kafka: KafkaConfig
    checkpoint: CheckpointConfig
    sequence: SequenceConfig = SequenceConfig()
    consumer: ConsumerConfig = ConsumerConfig(max_batch=5000, poll_timeout_ms=20)
    topic: str = USER_EVENTS
    group_id: str = "genrec-sequences"
    lag_refresh_s: float = 1.0
    exit_on_error: bool = False
    stats_window: int = 20_000
    freshness_window_s: float = 10.0
    fetch_max_wait_ms: int | None = 20
    niceness: int | None = 0
    gil_switch_ms: float | None = 1.0
    gc_gen0_threshold: int | None = 50_000

    def __post_init__(self) -> None:
        if not self.partitions:
            raise ValueError(f"ShardConfig(shard_id={self.shard_id}).partitions is empty; "
                             "a shard needs at least one partition (use fewer shards)")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"ShardConfig.shard_id={self.shard_id} must be in [0, num_shards={self.num_shards})")
        if self.lag_refresh_s <= 0:
            raise ValueError(f"ShardConfig.lag_refresh_s={self.lag_refresh_s} must be > 0")
        if self.fetch_max_wait_ms is not None and not 0 <= self.fetch_max_wait_ms <= 10_000:
            raise ValueError(f"ShardConfig.fetch_max_wait_ms={self.fetch_max_wait_ms} must be in [0, 10000] (or None)")
        if self.freshness_window_s <= 0:
            raise ValueError(f"ShardConfig.freshness_window_s={self.freshness_window_s} must be > 0 seconds")
        if self.gil_switch_ms is not None and not 0.05 <= self.gil_switch_ms <= 100:
            raise ValueError(f"ShardConfig.gil_switch_ms={self.gil_switch_ms} must be in [0.05, 100] ms "
                             "(or None to keep Python's 5 ms)")
        if self.gc_gen0_threshold is not None and not 100 <= self.gc_gen0_threshold <= 10_000_000:
            raise ValueError(f"ShardConfig.gc_gen0_threshold={self.gc_gen0_threshold} must be in [100, 10000000] "
                             "(or None to leave Python's garbage collector alone)")

    @property
    def checkpoint_name(self) -> str:
        """Stable name: group, physical topic and shard position (partitions are checked on load)."""
        return f"{self.group_id}.{self.kafka.topic(self.topic)}.shard-{self.shard_id}-of-{self.num_shards}"


@dataclass
class _Stats:
    started: float = field(default_factory=time.time)
    applied: int = 0
    consumed: int = 0
    dead_lettered: int = 0
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    checkpoint_s: float = 0.0
    snapshot_s: float = 0.0
    last_checkpoint: float = 0.0
    restored_from: dict | None = None
    first_poll_at: float | None = None   # wall time the first non-empty poll returned
    first_poll_n: int = 0                # messages in that poll
    first_poll_cpu: float | None = None  # process CPU seconds at that moment
    last_apply_at: float | None = None   # wall time the latest batch was applied
    last_apply_cpu: float = 0.0          # process CPU seconds when the latest batch was applied
    first_poll_loop_cpu: float = 0.0     # the loop thread's own CPU seconds, at the same two moments
    last_apply_loop_cpu: float = 0.0
    checkpoint_cpu_s: float = 0.0        # CPU seconds spent by checkpoint writer threads, in total
    poll_cpu_s: float = 0.0              # loop thread CPU in poll_records (kafka-python fetch + decode)
    apply_cpu_s: float = 0.0             # loop thread CPU in apply_columns (de-dup, lookups, scatter)
    last_error: str | None = None


class ShardRuntime:
    """The shard engine: load checkpoint, consume, apply, checkpoint; thread-safe reads."""

    def __init__(self, config: ShardConfig):
        self.config = config
        self.store = CheckpointStore(config.checkpoint.uri)
        self.stats = _Stats()
        self.state, self.offsets = self._load()
        self._ckpt_offsets = dict(self.offsets)
        self.stats.last_checkpoint = time.time()
        consumer_cfg = config.consumer
        if config.fetch_max_wait_ms is not None and consumer_cfg.fetch_max_wait_ms is None:
            consumer_cfg = replace(consumer_cfg, fetch_max_wait_ms=config.fetch_max_wait_ms)
        self.consumer = ContractConsumer(config.kafka, config.topic, partitions=config.partitions,
                                         group_id=config.group_id, config=consumer_cfg,
                                         start_offsets=self.offsets, batch_decoder=UserEventColumnsDecoder())
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._written = None
        self._write_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since_ckpt = 0
        self._precopy_steps = 0
        self._ends: dict[int, int] = {}
        self._ends_at = 0.0
        # Freshness samples in a preallocated ring: columns = applied wall s, applied wall ms − event ts,
        # applied wall ms − Kafka message timestamp, poll return → applied ms.  [stats_window, 4]
        self._fresh = np.zeros((config.stats_window, 4), np.float64)
        self._fresh_n = 0
        self._rate = deque(maxlen=64)          # (wall s, applied total)

    def _load(self) -> tuple[SequenceState, dict[int, int]]:
        """The last checkpoint's state and the offsets it reflects (empty state at offset 0 if none)."""
        config = self.config
        loaded = self.store.load(config.checkpoint_name)
        if loaded is None:
            return SequenceState(config.sequence), {p: 0 for p in config.partitions}
        payload, offsets = loaded
        extra = set(offsets) - set(config.partitions)
        if extra:
            raise ValueError(f"checkpoint {config.checkpoint_name!r} holds partitions {sorted(offsets)} but this "
                             f"shard owns {list(config.partitions)}; the partition count changed — use a new "
                             "checkpoint directory (or group_id) to rebuild from the topic")
        self.stats.restored_from = dict(offsets)
        return (SequenceState.from_bytes(payload, config.sequence),
                {p: int(offsets.get(p, 0)) for p in config.partitions})

    def _recover(self) -> None:
        """In-process recovery after a loop error: back to the last checkpoint, seek to its offsets.

        (Inside Ray the process exits instead and the restarted actor does the same.)
        """
        try:
            self._finish_write(block=True)
        except Exception:  # noqa: BLE001 - a failed write just means an older checkpoint
            self._writer = None
        state, offsets = self._load()
        with self._lock:
            self.state, self.offsets = state, offsets
        self._since_ckpt = self._precopy_steps = 0
        self.consumer.seek(offsets)

    # -- loop ------------------------------------------------------------------------------

    def start(self) -> "ShardRuntime":
        self._thread = threading.Thread(target=self._run, name=f"seq-shard-{self.config.shard_id}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - crash-only: report, then restart from checkpoint
                self.stats.last_error = f"{type(e).__name__}: {e}"
                log.exception("sequence shard %d loop failed", self.config.shard_id)
                if self.config.exit_on_error:
                    os._exit(17)
                if self._stop.wait(1.0):
                    break
                try:
                    self._recover()
                except Exception:  # noqa: BLE001 - try again after the next pause
                    log.exception("sequence shard %d could not recover from its checkpoint", self.config.shard_id)

    def step(self) -> int:
        """One poll → apply → maybe checkpoint. Returns messages consumed (for in-process drivers)."""
        c0 = time.thread_time()
        batch = self.consumer.poll_records()
        if batch.consumed:
            polled_at = time.time()
            st = self.stats
            c1 = time.thread_time()
            if st.first_poll_at is None:
                st.first_poll_at, st.first_poll_n = polled_at, batch.consumed
                st.first_poll_cpu, st.first_poll_loop_cpu = time.process_time(), c1
            else:
                st.poll_cpu_s += c1 - c0
            runs = [(r.partition, _columns(r.records), r.timestamps) for r in batch.runs]
            res = self.state.apply_columns([r[:2] for r in runs], lock=self._lock)
            st.apply_cpu_s += time.thread_time() - c1
            self.offsets.update(batch.next_offsets)
            now = time.time()  # visible to histories() from here on
            st.applied += res.applied
            st.consumed += batch.consumed
            st.dead_lettered += batch.dead_lettered
            self._since_ckpt += batch.consumed
            self._sample_freshness(runs, polled_at, now)
            st.last_apply_at = now
            st.last_apply_cpu, st.last_apply_loop_cpu = time.process_time(), time.thread_time()
            self._rate.append((now, st.applied))
        self._finish_write(block=False)
        now = time.time()
        if self._since_ckpt and (self._since_ckpt >= self.config.checkpoint.every_events
                                 or now - self.stats.last_checkpoint >= self.config.checkpoint.every_s):
            # Pre-copy the written rows over a few steps (none while a write still reads the buffers);
            # the checkpoint then copies only what changed since: its pause stays ~constant.
            if (self._writer is None and self._precopy_steps < PRECOPY_STEPS
                    and self.state.precopy(PRECOPY_ROWS) > PRECOPY_ROWS):
                self._precopy_steps += 1
            else:
                self.checkpoint(wait=False)
        if now - self._ends_at >= self.config.lag_refresh_s:
            self._ends = self._log_ends()
            self._ends_at = now
        return batch.consumed

    def _sample_freshness(self, runs, polled_at: float, now: float) -> None:
        """Record up to ~256 (event time → applied, message time → applied) samples of a batch.

        ``runs``: ``(partition, UserEventColumns, message timestamps)`` of the batch.
        """
        valid = sum(len(cols) for _, cols, _ in runs)
        if not valid:
            return
        step = max(1, valid // 256)  # keep sampling cheap for big batches
        ts, stamps = [], []
        for _, cols, timestamps in runs:
            ts += cols.ts[::step]
            stamps += timestamps[::step]
        k = len(ts)
        ring, w = self._fresh, len(self._fresh)
        now_ms = now * 1000.0
        idx = np.arange(self._fresh_n, self._fresh_n + k) % w
        ring[idx, 0] = now
        ring[idx, 1] = now_ms - np.asarray(ts, np.float64)
        ring[idx, 2] = now_ms - np.asarray(stamps, np.float64)
        ring[idx, 3] = (now - polled_at) * 1000.0
        self._fresh_n += k

    def _log_ends(self) -> dict[int, int]:
        """Log-end offset per partition, for lag.

        The high watermark that every fetch response carries is exact and
        costs nothing; a ListOffsets round trip (which blocks the loop) is
        only made for partitions not fetched yet. (tansu 0.6 answers
        ListOffsets(latest) with the *last batch's base offset + 1*, trailing
        the true end by up to a batch — one more reason to prefer the
        watermark.)
        """
        ends: dict[int, int] = {}
        kc = getattr(self.consumer, "_consumer", None)  # kafka-python consumer inside ContractConsumer
        if kc is not None:
            from kafka import TopicPartition

            for p in self.config.partitions:
                hw = kc.highwater(TopicPartition(self.consumer.physical_topic, p))
                if hw is not None:
                    ends[p] = hw
        if len(ends) < len(self.config.partitions):
            for p, o in self.consumer.end_offsets().items():
                ends[p] = max(ends.get(p, 0), o)
        return ends

    def checkpoint(self, wait: bool = True) -> None:
        """Snapshot state + offsets (loop thread only); write them atomically, then commit the offsets.

        The snapshot is taken here, on the loop thread — the only writer of the
        state — so payload and offsets match exactly. It is cheap: only the
        rows written since the last checkpoint are copied, into buffers kept
        from it (``snapshot_parts(reuse=True)``). Encoding, the file write and
        fsync run on a writer thread (``wait=False``, as the loop does) so the loop
        keeps consuming during the I/O; at most one write is in flight, and the
        Kafka commit happens on the loop thread once the file is durable
        (kafka-python consumers are not thread-safe).
        """
        self._finish_write(block=True)
        t0 = time.perf_counter()
        offsets = dict(self.offsets)
        # consistent with `offsets`: this thread is the only writer; reuse: the previous write is done
        parts = self.state.snapshot_parts(reuse=True)
        self._since_ckpt = self._precopy_steps = 0
        self.stats.last_checkpoint = time.time()
        self.stats.snapshot_s = time.perf_counter() - t0

        def write() -> None:
            try:
                payload = SequenceState.encode_snapshot(parts)
                n = self.store.save(self.config.checkpoint_name, payload, offsets)
                self._written = (offsets, n, time.perf_counter() - t0)
                self.stats.checkpoint_cpu_s += time.thread_time()
            except BaseException as e:  # noqa: BLE001 - re-raised on the loop thread
                self._write_error = e

        self._written, self._write_error = None, None
        self._writer = threading.Thread(target=write, name=f"seq-ckpt-{self.config.shard_id}", daemon=True)
        self._writer.start()
        if wait:
            self._finish_write(block=True)

    def flush(self) -> None:
        """Wait for an in-flight checkpoint write (and its offset commit) to complete."""
        self._finish_write(block=True)

    def _finish_write(self, block: bool) -> None:
        """Complete an in-flight checkpoint write: record it and commit its offsets to Kafka."""
        w = self._writer
        if w is None or (not block and w.is_alive()):
            return
        w.join()
        self._writer = None
        if self._write_error is not None:
            raise RuntimeError(f"checkpoint write failed: {self._write_error}") from self._write_error
        offsets, n, dt = self._written
        self._ckpt_offsets = offsets
        self.stats.checkpoints += 1
        self.stats.checkpoint_bytes = n
        self.stats.checkpoint_s = dt
        self.consumer.commit(offsets)

    def stop(self, checkpoint: bool = True) -> None:
        """Stop the loop; write a final checkpoint (only once the loop thread is really gone)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():  # stuck in a broker call: a snapshot now could tear
                log.warning("sequence shard %d loop did not stop; no final checkpoint", self.config.shard_id)
                return
        if checkpoint and self._since_ckpt:
            self.checkpoint(wait=True)
        else:
            self._finish_write(block=True)
        self.consumer.close()

    # -- reads -----------------------------------------------------------------------------

    def histories(self, user_ids, max_len: int | None = None) -> dict:
        with self._lock:
            return self.state.histories(list(user_ids), max_len)

    def set_item_sids(self, item_ids, slots) -> int:
        with self._lock:
            return self.state.set_item_sids(item_ids, slots)

    def snapshot(self) -> dict:
        with self._lock:
            return self.state.snapshot()

    def status(self) -> dict:
        """Lag, throughput, freshness and checkpoint age of this shard (a flat, printable dict).

        Latencies (recent ``freshness_window_s``): ``freshness_*`` event time →
        applied, ``ingest_*`` Kafka message timestamp → applied, ``apply_*``
        ``poll_records()`` returned → applied (the shard's own share). Costs
        since the first non-empty poll: ``cpu_us_per_event`` (whole process),
        ``loop_cpu_us_per_event`` (the consume thread alone), split into
        ``poll_cpu_us_per_event`` (non-empty ``poll_records()``: kafka-python's
        fetch and record parsing, then decoding) and ``apply_cpu_us_per_event``
        (de-dup, id lookups, scatter);
        ``checkpoint_cpu_ms_total`` (writer threads); ``checkpoint_pause_ms``
        is the snapshot the loop itself takes, ``checkpoint_ms`` the whole write.
        """
        now = time.time()
        offsets = dict(self.offsets)
        lag = {p: max(0, self._ends.get(p, o) - o) for p, o in offsets.items()}
        rate = 0.0
        recent = [r for r in list(self._rate) if r[0] >= now - 5.0]  # list(): atomic copy under the GIL
        if len(recent) >= 2:
            rate = (recent[-1][1] - recent[0][1]) / max(recent[-1][0] - recent[0][0], 1e-3)
        ring = self._fresh[: min(self._fresh_n, len(self._fresh))]
        fr = ring[ring[:, 0] >= now - self.config.freshness_window_s]
        n_fresh = len(fr)
        if not n_fresh:
            fr = np.zeros((1, 4))
        fe, fp, fa = fr[:, 1], fr[:, 2], fr[:, 3]
        st = self.stats
        timed = st.consumed - st.first_poll_n
        cpu_us = loop_us = 0.0
        if timed > 0 and st.first_poll_cpu is not None:
            cpu_us = (st.last_apply_cpu - st.first_poll_cpu) / timed * 1e6
            loop_us = (st.last_apply_loop_cpu - st.first_poll_loop_cpu) / timed * 1e6
        return {
            "shard": self.config.shard_id,
            "partitions": list(self.config.partitions),
            "pid": os.getpid(),
            "users": self.state.num_users,
            "events_applied": self.state.events_applied,
            "duplicates_dropped": self.state.duplicates,
            "dead_lettered": self.stats.dead_lettered,
            "offsets": offsets,
            "end_offsets": dict(self._ends),
            "lag": int(sum(lag.values())),
            "lag_by_partition": lag,
            "events_per_s": round(rate, 1),
            "freshness_samples": n_fresh,
            "freshness_p50_ms": round(float(np.percentile(fe, 50)), 1),
            "freshness_p99_ms": round(float(np.percentile(fe, 99)), 1),
            "ingest_p50_ms": round(float(np.percentile(fp, 50)), 1),
            "ingest_p99_ms": round(float(np.percentile(fp, 99)), 1),
            "apply_p50_ms": round(float(np.percentile(fa, 50)), 2),
            "apply_p99_ms": round(float(np.percentile(fa, 99)), 2),
            "cpu_us_per_event": round(cpu_us, 3),
            "loop_cpu_us_per_event": round(loop_us, 3),
            "poll_cpu_us_per_event": round(st.poll_cpu_s / timed * 1e6, 3) if timed > 0 else 0.0,
            "apply_cpu_us_per_event": round(st.apply_cpu_s / max(st.consumed, 1) * 1e6, 3),
            "checkpoint_cpu_ms_total": round(st.checkpoint_cpu_s * 1000, 1),
            "checkpoint_age_s": round(now - self.stats.last_checkpoint, 2),
            "checkpoints": self.stats.checkpoints,
            "checkpoint_bytes": self.stats.checkpoint_bytes,
            "checkpoint_ms": round(self.stats.checkpoint_s * 1000, 1),
            "checkpoint_pause_ms": round(self.stats.snapshot_s * 1000, 1),
            "checkpointed_offsets": dict(self._ckpt_offsets),
            "restored": self.stats.restored_from is not None,
            "state_bytes": self.state.nbytes(),
            "bytes_per_slot": round(self.state.bytes_per_slot(), 2),
            "uptime_s": round(now - self.stats.started, 1),
            "consumed": self.stats.consumed,
            "first_poll_at": self.stats.first_poll_at,
            "first_poll_n": self.stats.first_poll_n,
            "last_apply_at": self.stats.last_apply_at,
            "last_error": self.stats.last_error,
        }


class SequenceShard(RuntimeActor):
    """The Ray actor: a :class:`ShardRuntime` started in ``__init__`` (so a restart recovers).

    Create it through :func:`shard_actor_class` (``ray.remote`` with
    ``max_restarts``; ``histories()`` runs in its own ``reads`` concurrency
    group, so serving reads never queue behind ``status()``/``stop()`` calls
    in the default group) — the supervisor does this. ``status``, ``pid``,
    ``ping`` and ``stop`` come from :class:`~actors.actor_fleet.RuntimeActor`.
    """

    def __init__(self, config: ShardConfig):
        if config.niceness is not None:
            _set_niceness(config.niceness)
        if config.gil_switch_ms is not None:  # this worker process holds only this actor
            sys.setswitchinterval(config.gil_switch_ms / 1000.0)
        runtime = ShardRuntime(replace(config, exit_on_error=True))
        if config.gc_gen0_threshold is not None:
            tune_gc(config.gc_gen0_threshold)
        self.runtime = runtime.start()

    def histories(self, user_ids, max_len: int | None = None) -> dict:
        return self.runtime.histories(user_ids, max_len)

    def set_item_sids(self, item_ids, slots) -> int:
        return self.runtime.set_item_sids(item_ids, slots)

    def snapshot(self) -> dict:
        return self.runtime.snapshot()


def _columns(records) -> UserEventColumns:
    """A run as columns: what the batch decoder gave, or the records of a run decoded one by one
    (one that held a bad message)."""
    return records if isinstance(records, UserEventColumns) else UserEventColumns.from_records(records)


def tune_gc(gen0_threshold: int) -> None:
    """Freeze the heap built so far (full collections skip it) and collect young objects less often.

    For a process that streams messages (see ``ShardConfig.gc_gen0_threshold``);
    the benchmark gives its bare kafka-python baseline the same setting.
    """
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, g1, g2)


def _set_niceness(target: int) -> None:
    """Move this process to CPU priority ``target`` (lowering needs CAP_SYS_NICE; else keep and log)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != target:
            os.setpriority(os.PRIO_PROCESS, 0, target)
    except (PermissionError, OSError) as e:
        log.warning("sequence shard keeps niceness %s (cannot set %s: %s); set RAY_worker_niceness=%s "
                    "before starting Ray", os.getpriority(os.PRIO_PROCESS, 0), target, e, target)


READS_GROUP = "reads"
set_concurrency_group(SequenceShard.histories, READS_GROUP)


def shard_actor_class(read_threads: int = 4):
    """``ray.remote(SequenceShard)`` with a ``reads`` concurrency group of ``read_threads`` threads.

    (Ray is imported lazily so this module loads without it; concurrency
    groups can only be declared here, not in ``.options()``.)
    """
    import ray

    if read_threads < 1:
        raise ValueError(f"shard_actor_class(read_threads={read_threads}) needs at least 1 read thread")
    return ray.remote(concurrency_groups={READS_GROUP: read_threads})(SequenceShard)
