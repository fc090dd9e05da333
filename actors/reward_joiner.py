"""The reward joiner: ``served`` + ``user-events`` → exactly one ``rewards`` record per session, as a Ray actor.

Joiner ``j`` of ``n`` owns partition ``p`` of *both* input topics for every
``p % n == j`` (the sequence shards' map, :mod:`actors.router`; both topics are
keyed by user with the same partition count, so a user's sessions and events
meet in one joiner), through manual ``assign()``, one consumer per input
partition. A background thread runs

    poll each input partition not held back (below) → decode the run in one
    call (:mod:`actors.reward_codec`) → :class:`~actors.reward_window.RewardWindows`
    (add, advance the watermark, close windows) → encode the closed sessions'
    rewards and send them as one record batch per output partition
    (:class:`ingest.batch_producer.BatchProducer`) → every N records or T
    seconds: checkpoint.

**Watermark alignment.** A partition whose newest event time is more than
``rewards.max_drift_s`` ahead of the partition at the watermark is not read
until the others catch up (nor a ``user-events`` partition that is more than
the allowed lateness ahead of its ``served`` partition): a backlog — kafka-python
hands out one fetched partition at a time, thousands of records — would
otherwise open windows far ahead of the watermark (memory, snapshot size) or
park events before their sessions. The partition at the watermark is always
read, so alignment never stalls it, and the engine's results do not depend on
the reading order (see :mod:`actors.reward_window`).

Exactly once *in the topic* (Kafka transactions are not used: the embedded
broker, tansu, rejects ``InitProducerId``, so neither transactions nor the
idempotent producer are available). Instead:

1. **Emit before checkpoint.** A checkpoint first flushes the producer (every
   reward sent so far is acknowledged, or the joiner crashes), then writes in
   one atomic file (:mod:`actors.checkpoint`) the window state, the offsets of
   both input topics it reflects, and per output partition an offset at or
   below which no later reward of this joiner can land (the next offset after
   its last acknowledged reward). Only then are input offsets committed to
   Kafka (monitoring).
2. **Restart de-duplicates against the output.** On (re)start the joiner loads
   the checkpoint, reads its output partitions from those offsets to their
   end and notes every ``request_id`` found there: the sessions the crashed
   incarnation emitted after the checkpoint (ones open in it, or served after
   it). Replaying the inputs closes them again (the engine is deterministic
   in which sessions close); their rewards are not sent again.
3. The producer never retries (:class:`~ingest.batch_producer.BatchProducer`
   sends each record batch once): a send that fails is a crash, and step 2
   then finds out whether the batch landed — a retry could have written it
   twice. Requests may be in flight between checkpoints; the checkpoint waits
   for all of their acknowledgements.

A fresh joiner writes an empty checkpoint (with the output's current end)
before consuming, so even a crash before its first regular checkpoint
recovers this way. Rewards are keyed by user (the contract); when the input
partition count is a multiple of the output's, a joiner's users map to the
output partitions ``p % n_out`` of its own ``p``, and only those are read
back; otherwise all of them.

Limits of the argument: it assumes one live incarnation per joiner (Ray
restarts an actor only after its worker died; without transactions nothing
fences off a zombie that is still writing, e.g. across a network partition of
a multi-node cluster), and that a dead process's last produce request does not
reach the broker after the restarted joiner has read the output. As in the
sequence shards, a message dead-lettered after the last checkpoint is
dead-lettered again after a crash (same source partition and offset).

:class:`JoinerRuntime` is the plain-Python engine (usable without Ray);
:class:`RewardJoiner` is the thin Ray actor around it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import msgspec
import numpy as np

from actors.actor_fleet import RuntimeActor
from actors.checkpoint import CheckpointStore
from actors.reward_codec import EventBatchDecoder, ServedBatchDecoder, WireReward
from actors.reward_spec import RewardSpec
from actors.reward_window import RewardWindows, source_key
from actors.sequence_shard import tune_gc
from ingest.batch_producer import BatchProducer
from ingest.consumer_loop import ConsumerConfig, ContractConsumer
from ingest.contract import REWARDS, SERVED, USER_EVENTS
from ingest.fast_records import install_lean_records
from ingest.kafka_client import KafkaConfig, connect
from ingest.partitioning import partition_for
from ingest.producer import EventProducer

log = logging.getLogger(__name__)

PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class RewardJoinerConfig:
    """The ``rewards:`` section of genrec.yaml: windows, checkpoints and the reward spec.

    ``window_s``: event-time length of a served session's feedback window.
    ``allowed_lateness_s``: how far behind the newest event time of its
    partition a record may arrive and still count (the watermark trails by it).
    A checkpoint is written after ``checkpoint_every_events`` consumed records
    or ``checkpoint_every_s`` seconds. ``idle_partition_s``: an input partition
    that delivered nothing for this long no longer holds the watermark back
    (None: it always does — deterministic, for tests and replays).
    ``max_drift_s``: watermark alignment — an input partition more than this
    far (event time) ahead of the partition at the watermark is not read until
    the others catch up (nor a ``user-events`` partition more than the allowed
    lateness ahead of its ``served`` partition), so a backlog cannot fill
    memory with open windows or waiting events (None: read every partition as
    fast as it comes). ``reward``: a :class:`~actors.reward_spec.RewardSpec`
    (or its fields as a mapping). ``num_joiners``: None = one per ``served``
    partition.
    ``max_batch_bytes``: the largest record batch the joiner writes to
    ``rewards`` (:class:`ingest.batch_producer.BatchProducer`).
    """

    window_s: float = 1800.0
    allowed_lateness_s: float = 10.0
    checkpoint_uri: str = ".genrec/rewards"
    checkpoint_every_s: float = 5.0
    checkpoint_every_events: int = 50_000
    idle_partition_s: float | None = 60.0
    max_drift_s: float | None = 5.0
    num_joiners: int | None = None
    group_id: str = "genrec-rewards"
    max_batch_bytes: int = 1_000_000
    max_restarts: int = 20
    num_cpus: float = 0.25
    monitor_s: float = 2.0
    reward: RewardSpec = field(default_factory=RewardSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reward", RewardSpec.of(self.reward))
        if not self.window_s > 0:
            raise ValueError(f"rewards.window_s={self.window_s} must be > 0 seconds (e.g. 1800 for 30 min)")
        if not self.allowed_lateness_s >= 0:
            raise ValueError(f"rewards.allowed_lateness_s={self.allowed_lateness_s} must be >= 0 seconds")
        if not self.checkpoint_uri:
            raise ValueError("rewards.checkpoint_uri is empty; give a directory or a pyarrow URI")
        if not self.checkpoint_every_s > 0 or self.checkpoint_every_events < 1:
            raise ValueError(f"rewards.checkpoint_every_s={self.checkpoint_every_s} must be > 0 and "
                             f"checkpoint_every_events={self.checkpoint_every_events} >= 1")
        if self.idle_partition_s is not None and not self.idle_partition_s > 0:
            raise ValueError(f"rewards.idle_partition_s={self.idle_partition_s} must be > 0 seconds "
                             "(or null: idle partitions hold the watermark)")
        if self.max_drift_s is not None and not self.max_drift_s > 0:
            raise ValueError(f"rewards.max_drift_s={self.max_drift_s} must be > 0 seconds (or null: no alignment)")
        if self.num_joiners is not None and self.num_joiners < 1:
            raise ValueError(f"rewards.num_joiners={self.num_joiners} must be >= 1 (or null: one per partition)")
        if self.max_batch_bytes < 1024:
            raise ValueError(f"rewards.max_batch_bytes={self.max_batch_bytes} must be >= 1024 (one record batch "
                             "of the rewards topic; keep it under the broker's message.max.bytes)")
        if self.max_restarts < -1 or self.num_cpus < 0 or self.monitor_s < 0:
            raise ValueError("rewards: num_cpus and monitor_s must be >= 0 and max_restarts >= -1 "
                             f"(got {self.num_cpus}, {self.monitor_s}, {self.max_restarts})")

    @property
    def window_ms(self) -> int:
        return int(round(self.window_s * 1000))

    @property
    def lateness_ms(self) -> int:
        return int(round(self.allowed_lateness_s * 1000))

    @property
    def max_drift_ms(self) -> int | None:
        return None if self.max_drift_s is None else int(round(self.max_drift_s * 1000))


@dataclass(frozen=True)
class JoinerConfig:
    """What one joiner actor needs; built by :class:`actors.reward_supervisor.RewardSupervisor`.

    ``exit_on_error``: a loop error ends the worker process so Ray restarts the
    actor from its checkpoint (True inside Ray). In-process (False) the loop
    stops and ``status()["last_error"]`` says why; recovery is a new runtime.
    """

    joiner_id: int
    num_joiners: int
    partitions: tuple[int, ...]
    kafka: KafkaConfig
    rewards: RewardJoinerConfig
    consumer: ConsumerConfig = ConsumerConfig(max_batch=5000, poll_timeout_ms=10, fetch_max_wait_ms=20)
    exit_on_error: bool = False

    def __post_init__(self) -> None:
        if not self.partitions:
            raise ValueError(f"JoinerConfig(joiner_id={self.joiner_id}).partitions is empty; use fewer joiners")
        if not 0 <= self.joiner_id < self.num_joiners:
            raise ValueError(f"JoinerConfig.joiner_id={self.joiner_id} must be in [0, {self.num_joiners})")

    @property
    def checkpoint_name(self) -> str:
        return (f"{self.rewards.group_id}.{self.kafka.topic(SERVED)}"
                f".joiner-{self.joiner_id}-of-{self.num_joiners}")


class _Payload(msgspec.Struct):
    """The checkpoint payload: engine state + the offsets it reflects (all in the one atomic file)."""

    version: int
    served: dict[int, int]
    events: dict[int, int]
    output: dict[int, int]
    state: bytes


@dataclass(frozen=True)
class _Input:
    """One input partition of a joiner: its topic, number, watermark source name and consumer."""

    topic: str
    partition: int
    source: str
    consumer: ContractConsumer


class _RequestId(msgspec.Struct):
    """What the restart scan reads of each reward in the output: its session."""

    request_id: str


_encode_reward = msgspec.json.Encoder().encode


def output_partitions(partitions: tuple[int, ...], n_in: int, n_out: int) -> tuple[int, ...]:
    """The ``rewards`` partitions the users of input ``partitions`` are keyed to (all, unless n_out | n_in)."""
    if n_out <= 0:
        raise ValueError(f"the rewards topic has {n_out} partitions; create it first (genrec topics)")
    if n_in % n_out == 0:
        return tuple(sorted({p % n_out for p in partitions}))
    return tuple(range(n_out))


class JoinerRuntime:
    """The joiner engine: restore + de-dup, consume both topics, close windows, emit, checkpoint."""

    def __init__(self, config: JoinerConfig):
        from ingest.topics import partition_count

        self.config = config
        rc = config.rewards
        self.store = CheckpointStore(rc.checkpoint_uri)
        self.sources = ([source_key(SERVED, p) for p in config.partitions]
                        + [source_key(USER_EVENTS, p) for p in config.partitions])
        kafka = config.kafka
        n_in = partition_count(kafka, kafka.topic(SERVED))
        n_out = partition_count(kafka, kafka.topic(REWARDS))
        self.out_partitions = output_partitions(config.partitions, n_in, n_out)
        self._n_out = n_out
        self._partition_of: dict[str, tuple[int, bytes]] = {}  # user -> (output partition, key bytes)
        self._out_topic = kafka.topic(REWARDS)
        self._out_next: dict[int, int] = {}
        self.stats = {"rewards_sent": 0, "rewards_already_in_topic": 0, "checkpoints": 0, "consumed": 0,
                      "dead_lettered": 0, "first_poll_at": None, "last_consumed_at": None,
                      "last_emit_at": None, "held_back_polls": 0, "checkpoint_ms_total": 0.0,
                      "checkpoint_ms_max": 0.0}
        self.restored = False
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._since_ckpt = 0
        self._last_ckpt = time.time()
        self._last_seen: dict[str, float] = {}
        self._rate = deque(maxlen=64)               # (wall s, rewards sent, records consumed)
        self._latency = deque(maxlen=4096)          # close → broker ack, ms (the most recent batches)
        self.windows, self.offsets, out_offsets = self._load()
        self._out_next = dict(out_offsets)
        self._ckpt_offsets = {SERVED: dict(self.offsets[SERVED]), USER_EVENTS: dict(self.offsets[USER_EVENTS])}
        # source -> offset last committed to Kafka (for lag tools): only moved offsets are committed again
        self._committed = {source_key(t, p): o for t, offs in self.offsets.items() for p, o in offs.items()}
        self._last_commit = time.monotonic()
        self._producer = BatchProducer(kafka, self._out_topic, acks=-1, max_batch_bytes=rc.max_batch_bytes,
                                       on_ack=self._acked)
        # One consumer per input partition, so that each can be read or left alone on its own (alignment,
        # _held_back): kafka-python hands out one fetched partition at a time, and pausing a partition drops
        # what it had fetched. Dead letters of all of them go through one producer.
        self._dlq = EventProducer(kafka)
        self._inputs: list[_Input] = []
        # a poll of all of them together takes about max_batch records, as one consumer per topic would
        per_input = replace(config.consumer, max_batch=max(1, config.consumer.max_batch // len(config.partitions)))
        for topic, decoder in ((SERVED, ServedBatchDecoder), (USER_EVENTS, EventBatchDecoder)):
            for p in config.partitions:
                consumer = ContractConsumer(kafka, topic, partitions=[p], group_id=rc.group_id, config=per_input,
                                            dead_letters=self._dlq, start_offsets={p: self.offsets[topic][p]},
                                            batch_decoder=decoder())
                self._inputs.append(_Input(topic, p, source_key(topic, p), consumer))
        # Rewards the crashed incarnation wrote after the checkpoint: of sessions open in it, or served after it.
        # Replaying the inputs closes them again; they are not sent again. (In a shared output partition the
        # set also holds other joiners' request_ids; those never close here.)
        self.already_emitted = self._scan_output(out_offsets)
        self.stats["found_in_topic_on_restore"] = len(self.already_emitted)
        if not self.restored:
            self.checkpoint()  # the output's end before anything is emitted: recovery works from the start

    # -- restore ---------------------------------------------------------------------------

    def _load(self) -> tuple[RewardWindows, dict, dict[int, int]]:
        cfg, rc = self.config, self.config.rewards
        loaded = self.store.load(cfg.checkpoint_name)
        if loaded is None:
            zero = {p: 0 for p in cfg.partitions}
            windows = RewardWindows(self.sources, rc.window_ms, rc.lateness_ms, rc.reward, record=WireReward)
            return windows, {SERVED: dict(zero), USER_EVENTS: dict(zero)}, self._output_ends()
        blob, _ = loaded
        p = msgspec.msgpack.decode(blob, type=_Payload)
        if set(p.served) != set(cfg.partitions):
            raise ValueError(f"checkpoint {cfg.checkpoint_name!r} holds partitions {sorted(p.served)} but this "
                             f"joiner owns {list(cfg.partitions)}; the partition count changed — use a new "
                             "checkpoint directory (or group_id)")
        self.restored = True
        windows = RewardWindows.from_bytes(p.state, self.sources, rc.reward, record=WireReward)
        if (windows.window_ms, windows.lateness_ms) != (rc.window_ms, rc.lateness_ms):
            raise ValueError(f"checkpoint {cfg.checkpoint_name!r} was written with window {windows.window_ms} ms and "
                             f"lateness {windows.lateness_ms} ms, the config says {rc.window_ms} / "
                             f"{rc.lateness_ms} ms; a replay must use the same windows — keep the old values or "
                             "start from a new checkpoint directory (or group_id)")
        return windows, {SERVED: dict(p.served), USER_EVENTS: dict(p.events)}, dict(p.output)

    def _output_ends(self) -> dict[int, int]:
        """Current end of each output partition (a lower bound is safe: the scan then just reads more)."""
        from kafka import KafkaConsumer, TopicPartition

        c = connect(KafkaConsumer, self.config.kafka)
        try:
            tps = [TopicPartition(self._out_topic, p) for p in self.out_partitions]
            return {tp.partition: int(o) for tp, o in c.end_offsets(tps).items()}
        finally:
            c.close()

    def _scan_output(self, start: dict[int, int], timeout_s: float = 120.0) -> set[str]:
        """request_ids of the rewards in our output partitions from ``start`` to their end.

        The end is the high watermark carried by fetch responses (tansu's
        ListOffsets(latest) may trail the true end by a batch, which would cut
        the scan short).
        """
        from kafka import KafkaConsumer, TopicPartition

        if not self.restored:
            return set()
        c = connect(KafkaConsumer, self.config.kafka, enable_auto_commit=False, fetch_max_wait_ms=50)
        install_lean_records(c)
        found: set[str] = set()
        decode = msgspec.json.Decoder(_RequestId).decode
        try:
            tps = [TopicPartition(self._out_topic, p) for p in self.out_partitions]
            c.assign(tps)
            for tp in tps:
                c.seek(tp, start.get(tp.partition, 0))
            deadline = time.monotonic() + timeout_s
            while True:
                for msgs in c.poll(timeout_ms=200).values():
                    for m in msgs:
                        try:
                            found.add(decode(m.value).request_id)
                        except Exception:  # noqa: BLE001 - not ours to judge; the contract consumer would dead-letter it
                            pass
                hws = [c.highwater(tp) for tp in tps]
                if all(hw is not None and c.position(tp) >= hw for tp, hw in zip(tps, hws)):
                    return found
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {self._out_topic} partitions {list(self.out_partitions)} "
                                       f"to their end within {timeout_s}s")
        finally:
            c.close()

    # -- loop ------------------------------------------------------------------------------

    def start(self) -> "JoinerRuntime":
        self._thread = threading.Thread(target=self._run, name=f"reward-joiner-{self.config.joiner_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - crash-only: the restart recovers from the checkpoint
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("reward joiner %d loop failed", self.config.joiner_id)
                if self.config.exit_on_error:
                    os._exit(17)
                self._stop.wait(1.0)
                return

    def _held_back(self, idle: list[str]) -> set[str]:
        """The input partitions (sources) not to read this step: watermark alignment.

        A partition is held back while its newest event time is more than
        ``rewards.max_drift_s`` ahead of the slowest counted partition (the
        one at the watermark), so a backlog cannot fill memory with open
        windows; a ``user-events`` partition also while it is more than the
        allowed lateness ahead of the ``served`` partition of the same number
        (the same users): an event read before its session's ``served`` record
        has to wait, and be expired, in the engine, which costs more than a
        session opened early. The partition at the watermark is never held
        back, so holding never stalls the watermark; and reading order only
        changes how partitions interleave, which the engine's results do not
        depend on (within the allowed lateness). Nothing is held back until
        every counted partition has delivered a record.
        """
        rc = self.config.rewards
        if rc.max_drift_ms is None:
            return set()
        newest, skip = self.windows.newest, set(idle)
        counted = [s for s in self.sources if s not in skip]
        if not counted or any(s not in newest for s in counted):
            return set()
        low = min(newest[s] for s in counted)
        limit, lateness = low + rc.max_drift_ms, rc.lateness_ms
        held = {s for s in counted if newest[s] > limit}
        for p in self.config.partitions:
            ev, sv = source_key(USER_EVENTS, p), source_key(SERVED, p)
            if ev in newest and sv in newest and sv not in skip and newest[ev] - newest[sv] > lateness:
                held.add(ev)
        return held

    def step(self) -> int:
        """Poll each input partition → add → advance → emit → maybe checkpoint. Returns records consumed."""
        self._producer.poll()  # acknowledgements of earlier rewards; raises if a send failed
        now = time.time()
        idle = self._idle_sources(now)
        held = self._held_back(idle)
        if held:
            self.stats["held_back_polls"] += len(held)
            for s in held:  # held back, not idle: it has records waiting
                self._last_seen[s] = now
        readable = [i for i in self._inputs if i.source not in held] or self._inputs  # (never empty: see above)
        consumed = 0
        moved: list[tuple[str, dict[int, int]]] = []
        # Every readable partition without waiting; only when none had anything does the loop wait, on the
        # one at the watermark (the one the closing of windows waits for).
        for k, inp in enumerate(readable + [self._slowest(readable)]):
            wait = k == len(readable)
            if wait and consumed:
                break
            batch = inp.consumer.poll_records(timeout_ms=None if wait else 0)
            if not batch.consumed:
                continue
            with self._lock:
                add = self.windows.add_served if inp.topic == SERVED else self.windows.add_events
                for run in batch.runs:
                    add(run.partition, run.records, inp.topic)
                self._last_seen[inp.source] = now
            moved.append((inp.topic, batch.next_offsets))
            consumed += batch.consumed
            self.stats["dead_lettered"] += batch.dead_lettered
        with self._lock:
            rewards = self.windows.advance(idle)
        if rewards:
            self._emit(rewards)
        with self._lock:  # after the emit: status() never shows offsets whose closes are not sent yet
            for topic, offsets in moved:
                self.offsets[topic].update(offsets)
        self.stats["consumed"] += consumed
        if consumed:
            if self.stats["first_poll_at"] is None:
                self.stats["first_poll_at"] = now
            self.stats["last_consumed_at"] = time.time()
        self._since_ckpt += consumed + len(rewards)
        now = time.time()
        if consumed or rewards:
            self._rate.append((now, self.stats["rewards_sent"], self.stats["consumed"]))
        rc = self.config.rewards
        if self._since_ckpt and (self._since_ckpt >= rc.checkpoint_every_events
                                 or now - self._last_ckpt >= rc.checkpoint_every_s):
            self.checkpoint()
        return consumed

    def _slowest(self, readable: list["_Input"]) -> "_Input":
        """The readable input whose partition is furthest behind in event time (one without records first)."""
        newest = self.windows.newest
        return min(readable, key=lambda i: newest.get(i.source, -1))

    def _idle_sources(self, now: float) -> list[str]:
        idle_s = self.config.rewards.idle_partition_s
        if idle_s is None:
            return []
        started = self._last_ckpt if not self._last_seen else min(self._last_seen.values())
        return [s for s in self.sources if now - self._last_seen.get(s, started) >= idle_s]

    def _emit(self, rewards: list) -> None:
        """Send the rewards of closed sessions, skipping those the crashed incarnation already wrote.

        The partition is the contract's (murmur2 of the user key), computed here
        once per user. All of them go out as one record batch per output
        partition (:class:`~ingest.batch_producer.BatchProducer`, no retries);
        each acknowledgement moves that partition's output offset.
        """
        closed_at = time.perf_counter()
        already, cache, n_out = self.already_emitted, self._partition_of, self._n_out
        encode = _encode_reward
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        skipped = 0
        for r in rewards:
            if already and r.request_id in already:  # written by the incarnation that crashed
                already.discard(r.request_id)
                skipped += 1
                continue
            user = r.user_id
            pk = cache.get(user)
            if pk is None:
                key = user.encode("utf-8")
                pk = (partition_for(user, n_out), key)
                if len(cache) < 1_000_000:
                    cache[user] = pk
            batch = by_partition.get(pk[0])
            if batch is None:
                batch = by_partition[pk[0]] = []
            batch.append((pk[1], encode(r)))
        if by_partition:
            self._producer.send(by_partition, sent_at=closed_at)
        self.stats["rewards_already_in_topic"] += skipped
        self.stats["rewards_sent"] += len(rewards) - skipped
        self.stats["last_emit_at"] = time.time()

    def _acked(self, partition: int, base_offset: int, count: int, closed_at: float) -> None:
        end = base_offset + count
        if end > self._out_next.get(partition, 0):
            self._out_next[partition] = end
        self._latency.append((time.perf_counter() - closed_at) * 1000.0)

    def _commit(self) -> None:
        """Commit the checkpointed input offsets to Kafka — for lag tools only (the checkpoint is what a restart
        reads), so at most every ``checkpoint_every_s`` and only partitions that moved: one synchronous
        request per input partition."""
        for inp in getattr(self, "_inputs", ()):
            offset = self._ckpt_offsets[inp.topic][inp.partition]
            if self._committed.get(inp.source) != offset:
                inp.consumer.commit({inp.partition: offset})
                self._committed[inp.source] = offset
        self._last_commit = time.monotonic()

    def checkpoint(self, final: bool = False) -> None:
        """Flush the producer, then write state + input offsets + output offsets atomically, then commit
        (``final``: the offsets are committed whatever the time since the last commit)."""
        t0 = time.perf_counter()
        self._producer.flush()  # every reward sent so far is acknowledged (or this raises: crash, read back)
        with self._lock:
            payload = _Payload(version=PAYLOAD_VERSION, served=dict(self.offsets[SERVED]),
                               events=dict(self.offsets[USER_EVENTS]), output=dict(self._out_next),
                               state=self.windows.snapshot())
        self.store.save(self.config.checkpoint_name, msgspec.msgpack.encode(payload), {})
        self._ckpt_offsets = {SERVED: dict(payload.served), USER_EVENTS: dict(payload.events)}
        self._since_ckpt = 0
        self._last_ckpt = time.time()
        self.stats["checkpoints"] += 1
        if final or time.monotonic() - self._last_commit >= self.config.rewards.checkpoint_every_s:
            self._commit()
        took = (time.perf_counter() - t0) * 1000.0
        self.stats["checkpoint_ms_total"] += took
        self.stats["checkpoint_ms_max"] = max(self.stats["checkpoint_ms_max"], took)

    def stop(self, checkpoint: bool = True) -> None:
        """Stop the loop; write a final checkpoint once the loop thread is really gone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                log.warning("reward joiner %d loop did not stop; no final checkpoint", self.config.joiner_id)
                return
        if checkpoint and self.last_error is None:
            self.checkpoint(final=True)
        self.close_clients()

    def close_clients(self) -> None:
        """Close the Kafka clients without a checkpoint (what ``stop`` ends with; tests abandon a runtime so)."""
        for inp in self._inputs:
            inp.consumer.close()
        self._dlq.close()
        self._producer.close()

    # -- reads -----------------------------------------------------------------------------

    def _lag(self) -> dict[str, int]:
        from kafka import TopicPartition

        lag = {SERVED: 0, USER_EVENTS: 0}
        for inp in self._inputs:
            kc = getattr(inp.consumer, "_consumer", None)
            hw = None if kc is None else kc.highwater(TopicPartition(inp.consumer.physical_topic, inp.partition))
            if hw is not None:
                lag[inp.topic] += max(0, hw - self.offsets[inp.topic].get(inp.partition, 0))
        return lag

    def status(self) -> dict:
        """Lag, open windows, rewards/s, late/orphan counters, checkpoint age and close → ack latency."""
        now = time.time()
        with self._lock:
            counters = self.windows.counter_dict()
            open_n, waiting, wm = self.windows.open_sessions, self.windows.waiting_events, self.windows.watermark
        recent = [r for r in list(self._rate) if r[0] >= now - 5.0]
        rps = eps = 0.0
        if len(recent) >= 2:
            dt = max(recent[-1][0] - recent[0][0], 1e-3)
            rps, eps = (recent[-1][1] - recent[0][1]) / dt, (recent[-1][2] - recent[0][2]) / dt
        lat = np.asarray(list(self._latency) or [0.0])
        lag = self._lag()
        return {
            "joiner": self.config.joiner_id, "partitions": list(self.config.partitions),
            "output_partitions": list(self.out_partitions), "pid": os.getpid(),
            "open_windows": open_n, "waiting_events": waiting, "watermark": wm,
            "served": counters.get("served", 0), "events": counters.get("events", 0),
            "joined": counters.get("joined", 0), "duplicates": counters.get("duplicates", 0),
            "late": counters.get("late", {}), "late_total": sum(counters.get("late", {}).values()),
            "orphans": counters.get("orphans", 0), "late_served": counters.get("late_served", 0),
            "duplicate_served": counters.get("duplicate_served", 0),
            "events_without_request": counters.get("events_without_request", 0),
            "closed": counters.get("closed", 0), "closed_without_feedback": counters.get("closed_without_feedback", 0),
            **self.stats,
            "produce_requests": self._producer.stats["requests"], "produce_in_flight": self._producer.in_flight,
            "rewards_per_s": round(rps, 1), "records_per_s": round(eps, 1),
            "lag": int(sum(lag.values())), "lag_by_topic": lag,
            "offsets": {t: dict(o) for t, o in self.offsets.items()},
            "checkpointed_offsets": self._ckpt_offsets, "output_offsets": dict(self._out_next),
            "checkpoint_age_s": round(now - self._last_ckpt, 2), "restored": self.restored,
            "reward_latency_p50_ms": round(float(np.percentile(lat, 50)), 2),
            "reward_latency_p99_ms": round(float(np.percentile(lat, 99)), 2),
            "last_error": self.last_error,
        }


class RewardJoiner(RuntimeActor):
    """The Ray actor: a :class:`JoinerRuntime` started in ``__init__`` (so a Ray restart recovers).

    ``status``, ``pid``, ``ping`` and ``stop`` come from :class:`~actors.actor_fleet.RuntimeActor`.
    """

    def __init__(self, config: JoinerConfig, gc_gen0_threshold: int | None = 50_000):
        runtime = JoinerRuntime(replace(config, exit_on_error=True))
        if gc_gen0_threshold is not None:  # as the sequence shards: open sessions are many tracked objects
            tune_gc(gc_gen0_threshold)
        self.runtime = runtime.start()


def joiner_actor_class():
    """``ray.remote(RewardJoiner)`` (Ray imported lazily so this module loads without it)."""
    import ray

    return ray.remote(RewardJoiner)
