"""Kafka boundary fuzz: hypothesis strategies for bad (and good) messages, and a harness that runs each
genrec consumer over them on a real broker and reconciles the counts.

Bad inputs: random bytes, truncated records, JSON of the wrong shape (scalars, arrays, ``{}``), fields of
the wrong type, valid JSON of another record kind, bad UTF-8, a null value (tombstone), oversized
messages (over ``MAX_MESSAGE_BYTES``), random keys — mixed with valid records and a flood of one key.
The oracle for "valid" is :func:`ingest.codec.decode` (the contract); a consumer may reject more
(the item indexer's content checks), never less, and every rejection must be a dead letter with a reason.

Reconciliation (:class:`FuzzResult`): inputs tried = dead letters in ``dead-letters`` + valid records
handed to the consumer's state, the dead letters' (partition, offset) are exactly the rejected inputs,
each with a reason, and the consumer never raised. Used by ``tests/ingest/test_fuzz_boundary.py`` and
the benchmark suite ``fuzz`` (tests/bench/bench_fuzz.py).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from hypothesis import strategies as st

from ingest.codec import ContractError, decode, encode
from ingest.contract import (DEAD_LETTERS, ITEM_EVENTS, MAX_MESSAGE_BYTES, REWARDS, SERVED, USER_EVENTS,
                             ItemEvent, UserEvent)
from ingest.kafka_client import KafkaConfig

from contract_strategies import dead_letters, item_events, rewards, served, user_events

VALID = {USER_EVENTS: user_events, ITEM_EVENTS: item_events, SERVED: served(), REWARDS: rewards,
         DEAD_LETTERS: dead_letters}
DATA_TOPICS = (USER_EVENTS, ITEM_EVENTS, SERVED, REWARDS)
CONSUMERS = ("sequence_shard", "item_indexer", "reward_joiner", "archive")
DIM = 16  # the item indexer's test tokenizer's embedding dimension

Message = tuple[bytes | None, bytes | None]  # (key, value)

_JSON_SCALARS = [b"null", b"[]", b"{}", b"1", b"-0.5e400", b'"x"', b"true", b"[{}]", b'{"a":', b"\xff\xfe{}",
                 b'{"event_id": "e\xff"}', b"\x00" * 16, b"NaN", b'{"ts": 1e999}']
_WRONG = st.one_of(st.integers(-2**70, 2**70), st.text(max_size=10), st.booleans(), st.none(),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
                   st.floats(allow_nan=False))


def _truncated(raw: bytes) -> st.SearchStrategy[bytes]:
    return st.integers(0, max(len(raw) - 1, 0)).map(lambda k: raw[:k])


@st.composite
def _wrong_type(draw, topic: str) -> bytes:
    """A valid record of ``topic`` with one field replaced by a value of another type (or removed)."""
    obj = msgspec.to_builtins(draw(valid_records(topic)))
    name = draw(st.sampled_from(sorted(obj)))
    if draw(st.booleans()):
        obj[name] = draw(_WRONG)
    else:
        del obj[name]
    return json.dumps(obj).encode()


def _valid_item() -> st.SearchStrategy[ItemEvent]:
    """An item the indexer can index without a text encoder: an embedding of its dimension, or a retire."""
    emb = st.lists(st.floats(-4, 4, allow_nan=False).filter(lambda v: abs(v) > 1e-3), min_size=DIM, max_size=DIM)
    ids = st.integers(0, 30).map(lambda i: f"it{i}")
    return st.one_of(st.builds(ItemEvent, item_id=ids, ts=st.integers(0, 10**12), embedding=emb),
                     st.builds(ItemEvent, item_id=ids, ts=st.integers(0, 10**12), op=st.just("retire")))


def valid_records(topic: str) -> st.SearchStrategy:
    """Valid records a consumer of ``topic`` applies (the indexer's: embedding-only items or retires)."""
    return _valid_item() if topic == ITEM_EVENTS else VALID[topic]


def bad_values(topic: str) -> st.SearchStrategy[bytes | None]:
    """Message values that are (almost always) invalid for ``topic``; the oracle decides, not this."""
    others = [VALID[t] for t in VALID if t != topic]
    return st.one_of(
        st.binary(max_size=200),                                     # random bytes
        valid_records(topic).map(encode).flatmap(_truncated),         # truncated records
        st.sampled_from(_JSON_SCALARS),                               # wrong JSON shape, bad UTF-8, bad numbers
        _wrong_type(topic),                                           # a field of the wrong type, or missing
        st.one_of(*others).map(encode),                               # valid JSON of another record kind
        st.none(),                                                    # a null value (tombstone)
    )


@st.composite
def boundary_inputs(draw, topic: str, min_size: int = 20, max_size: int = 40, flood: int = 60) -> list[Message]:
    """A shuffled mix of bad and valid messages for ``topic``, one oversized message and a flood of one key."""
    keys = st.none() | st.binary(min_size=1, max_size=12)
    one = st.one_of(bad_values(topic), bad_values(topic), valid_records(topic).map(encode))
    msgs: list[Message] = draw(st.lists(st.tuples(keys, one), min_size=min_size, max_size=max_size))
    # oversized: a valid-looking JSON object one byte over the limit
    big = b'{"event_id": "' + b"x" * MAX_MESSAGE_BYTES + b'"}'
    msgs.append((b"big", big))
    # a flood of one key: valid records of one user / item, with some bad values of the same key between them
    flood_key = b"flood"
    template = None if topic in (USER_EVENTS, ITEM_EVENTS) else encode(draw(VALID[topic]))
    for i in range(flood):
        if topic == USER_EVENTS:
            rec = UserEvent(event_id=f"flood-{i}", user_id="flood", item_id=f"i{i % 7}", type="click", ts=10_000 + i)
            value = encode(rec)
        elif topic == ITEM_EVENTS:
            value = encode(ItemEvent(item_id="flood", ts=10_000 + i, embedding=[1.0 + (i % 3)] + [0.5] * (DIM - 1)))
        else:
            value = template  # the same record again and again (a re-delivery storm)
        msgs.append((flood_key, value if i % 10 else b"{" + value[1:-1]))  # every 10th one is broken
    draw(st.randoms(use_true_random=False)).shuffle(msgs)
    return msgs


def contract_valid(topic: str, value: bytes | None) -> bool:
    """The oracle: does the contract (``ingest.codec.decode``) accept this value?"""
    try:
        decode(topic, value)
        return True
    except ContractError:
        return False


@dataclass
class FuzzResult:
    """What one consumer did with one batch of inputs; :meth:`problems` lists every broken invariant."""

    consumer: str
    topic: str
    inputs: int = 0
    contract_invalid: int = 0            # inputs the contract rejects
    dead_letters: int = 0                # dead-letter records found for this topic
    dead_letters_without_reason: int = 0
    applied: int = 0                     # valid records the consumer took into its state
    rejected_by_consumer: int = 0        # contract-valid records the consumer dead-lettered (its own checks)
    crashes: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problems(self) -> list[str]:
        out = list(self.errors)
        if self.crashes:
            out.append(f"{self.consumer} crashed {self.crashes} time(s)")
        if self.inputs != self.dead_letters + self.applied:
            out.append(f"{self.consumer}: inputs {self.inputs} != dead letters {self.dead_letters} "
                       f"+ applied {self.applied}")
        if self.dead_letters != self.contract_invalid + self.rejected_by_consumer:
            out.append(f"{self.consumer}: dead letters {self.dead_letters} != contract-invalid "
                       f"{self.contract_invalid} + rejected by the consumer {self.rejected_by_consumer}")
        if self.dead_letters_without_reason:
            out.append(f"{self.consumer}: {self.dead_letters_without_reason} dead letters without a reason")
        return out


def send(kafka: KafkaConfig, topic: str, msgs: list[Message], partitions: int) -> list[tuple[int, int]]:
    """Send ``msgs`` to ``topic`` round-robin over its partitions; returns each one's (partition, offset)."""
    from ingest.producer import EventProducer, ProducerConfig

    with EventProducer(kafka, ProducerConfig(linger_ms=2, max_request_size=4 * MAX_MESSAGE_BYTES)) as p:
        # (Kafka needs a key or a value: a null value without a key gets one)
        futs = [p.send_raw(topic, b"tombstone" if k is None and v is None else k, v, partition=i % partitions)
                for i, (k, v) in enumerate(msgs)]
        p.flush()
        out = []
        for f in futs:
            md = f.get(timeout=30)
            out.append((md.partition, md.offset))
    return out


def read_dead_letters(kafka: KafkaConfig) -> list:
    from ingest.consumer_loop import ContractConsumer

    with ContractConsumer(kafka, DEAD_LETTERS) as dl:
        return [r for b in dl.drain(until_empty_polls=2, timeout_s=30) for r in b.records()]


def fresh_kafka(bootstrap: str) -> KafkaConfig:
    """A namespace of its own (every topic new) on the shared broker."""
    from ingest.topics import TopicsConfig, ensure_topics

    kafka = KafkaConfig(bootstrap=bootstrap, namespace=f"fz{uuid.uuid4().hex[:10]}.")
    ensure_topics(kafka, TopicsConfig(partitions={USER_EVENTS: 2, SERVED: 2, REWARDS: 1, ITEM_EVENTS: 1,
                                                  DEAD_LETTERS: 1}))
    return kafka


def _reconcile(res: FuzzResult, kafka: KafkaConfig, where: list[tuple[int, int]], valid: list[bool],
               rejected: set[tuple[int, int]] = frozenset()) -> None:
    """Fill the dead-letter side of ``res`` and check the dead letters are exactly the rejected inputs."""
    letters = [d for d in read_dead_letters(kafka) if d.source_topic == res.topic]
    res.dead_letters = len(letters)
    res.dead_letters_without_reason = sum(not d.error.strip() for d in letters)
    got = [(d.partition, d.offset) for d in letters]
    want = {w for w, ok in zip(where, valid) if not ok} | set(rejected)
    if len(set(got)) != len(got):
        res.errors.append(f"{res.consumer}: a message was dead-lettered twice")
    if set(got) != want:
        res.errors.append(f"{res.consumer}: dead-lettered {sorted(set(got) - want)[:5]} that should not be, "
                          f"missed {sorted(want - set(got))[:5]}")


def run_consumer(consumer: str, bootstrap: str, msgs: list[Message], tmp: Path, tokenizer=None) -> FuzzResult:
    """Send ``msgs`` to the consumer's topic in a fresh namespace, run the real consumer until it has read
    them all, and reconcile (:class:`FuzzResult`). ``tokenizer``: the item indexer's (RQ-k-means, DIM)."""
    topic = {"sequence_shard": USER_EVENTS, "item_indexer": ITEM_EVENTS, "reward_joiner": SERVED,
             "archive": None}[consumer]
    if consumer == "archive":
        raise ValueError("run_archive() fuzzes the archive (all four data topics at once)")
    kafka = fresh_kafka(bootstrap)
    t0 = time.monotonic()
    n_parts = 1 if topic == ITEM_EVENTS else 2
    where = send(kafka, topic, msgs, n_parts)
    valid = [contract_valid(topic, v) for _, v in msgs]
    res = FuzzResult(consumer, topic, inputs=len(msgs), contract_invalid=valid.count(False))
    rejected: set[tuple[int, int]] = set()
    try:
        if consumer == "sequence_shard":
            res.applied = _run_shard(kafka, tmp, len(msgs))
        elif consumer == "item_indexer":
            res.applied, rejected = _run_indexer(kafka, tokenizer, len(msgs))
        else:
            res.applied = _run_joiner(kafka, tmp, len(msgs))
    except Exception as e:  # noqa: BLE001 - a crash is a finding, reported with its type
        res.crashes += 1
        res.errors.append(f"{consumer} raised {type(e).__name__}: {e}"[:500])
    res.rejected_by_consumer = len(rejected)
    _reconcile(res, kafka, where, valid, rejected)
    res.seconds = time.monotonic() - t0
    return res


def _until(consumed, n: int, step, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while consumed() < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumed {consumed()} of {n} messages in {timeout_s} s")
        step()


def _run_shard(kafka: KafkaConfig, tmp: Path, n: int) -> int:
    """A sequence shard (ShardRuntime, its batch decoder and checkpoints) over both partitions."""
    from actors.checkpoint import CheckpointConfig
    from actors.sequence_shard import ShardConfig, ShardRuntime

    rt = ShardRuntime(ShardConfig(shard_id=0, num_shards=1, partitions=(0, 1), kafka=kafka,
                                  checkpoint=CheckpointConfig(uri=str(tmp / "shard"), every_events=25, every_s=0.5),
                                  group_id=f"fuzz-{uuid.uuid4().hex[:6]}"))
    try:
        _until(lambda: rt.stats.consumed, n, rt.step)
        rt.checkpoint(wait=True)
        st = rt.status()
        if st["consumed"] != n or st["dead_lettered"] != rt.consumer.stats.dead_lettered:
            raise AssertionError(f"shard counts do not add up: {st['consumed']} consumed of {n}")
        return rt.state.events_applied + rt.state.duplicates
    finally:
        rt.stop(checkpoint=False)


def _run_indexer(kafka: KafkaConfig, tokenizer, n: int) -> tuple[int, set[tuple[int, int]]]:
    """The item indexer; returns (records it took, the (partition, offset) of those it rejected itself)."""
    from actors.item_indexer import ItemIndexer, ItemIndexerConfig

    idx = ItemIndexer(kafka, tokenizer, ItemIndexerConfig(name=f"fuzz{uuid.uuid4().hex[:6]}"))
    rejected: set[tuple[int, int]] = set()
    dead = idx._dead

    def remember(partition, offset, key, ev, reason):  # the indexer's own rejections, with where they were
        rejected.add((partition, offset))
        dead(partition, offset, key, ev, reason)

    idx._dead = remember
    try:
        _until(lambda: idx.stats["events"], n, idx.step)
        idx._dlq.flush()
        return idx.stats["events"] - idx.consumer.stats.dead_lettered - len(rejected), rejected
    finally:
        idx.close(checkpoint=False)


def _run_joiner(kafka: KafkaConfig, tmp: Path, n: int) -> int:
    """A reward joiner (JoinerRuntime) over both ``served`` partitions; returns the valid records it took."""
    from actors.reward_joiner import JoinerConfig, JoinerRuntime, RewardJoinerConfig
    from ingest.consumer_loop import ConsumerConfig

    cfg = JoinerConfig(joiner_id=0, num_joiners=1, partitions=(0, 1), kafka=kafka,
                       rewards=RewardJoinerConfig(window_s=2.0, allowed_lateness_s=0.4, idle_partition_s=None,
                                                  max_drift_s=None, checkpoint_uri=str(tmp / "joiner"),
                                                  checkpoint_every_events=25, group_id=f"fz{uuid.uuid4().hex[:6]}"),
                       consumer=ConsumerConfig(max_batch=200, poll_timeout_ms=10, fetch_max_wait_ms=20))
    rt = JoinerRuntime(cfg)
    try:
        served_inputs = [i for i in rt._inputs if i.topic == SERVED]
        _until(lambda: sum(i.consumer.stats.consumed for i in served_inputs), n, rt.step)
        rt.checkpoint()
        return sum(i.consumer.stats.valid for i in served_inputs)
    finally:
        rt.stop(checkpoint=False)


def run_archive(bootstrap: str, per_topic: dict[str, list[Message]], tmp: Path) -> list[FuzzResult]:
    """The archive over the four data topics at once; one :class:`FuzzResult` per topic (rows archived)."""
    from ingest.archive import ArchiveConfig, Archiver, read_archive

    kafka = fresh_kafka(bootstrap)
    t0 = time.monotonic()
    sent = {}
    for topic, msgs in per_topic.items():
        n_parts = 1 if topic in (ITEM_EVENTS, REWARDS) else 2
        sent[topic] = (send(kafka, topic, msgs, n_parts), [contract_valid(topic, v) for _, v in msgs])
    results = {t: FuzzResult("archive", t, inputs=len(m), contract_invalid=sent[t][1].count(False))
               for t, m in per_topic.items()}
    root = tmp / f"archive-{kafka.namespace.strip('.')}"  # resumes from its files: one root per namespace
    try:
        with Archiver(kafka, ArchiveConfig(root=str(root), topics=tuple(per_topic), max_rows=50,
                                           flush_interval_s=60)) as a:
            deadline = time.monotonic() + 60
            while any(a.topics[t].stats.consumed < len(m) for t, m in per_topic.items()):
                if time.monotonic() > deadline:
                    raise TimeoutError("the archive did not read every fuzz input in 60 s: consumed " + str(
                        {t: (a.topics[t].stats.consumed, len(m)) for t, m in per_topic.items()}))
                a.run(until_idle=True, idle_polls=2, timeout_s=10)
    except Exception as e:  # noqa: BLE001 - a crash is a finding
        for r in results.values():
            r.crashes += 1
            r.errors.append(f"archive raised {type(e).__name__}: {e}"[:500])
    for topic, r in results.items():
        if not r.crashes:
            r.applied = read_archive(root, topic, columns=["kafka_offset"]).num_rows if \
                (root / f"topic={topic}").exists() else 0
        _reconcile(r, kafka, *sent[topic])
    for r in results.values():  # one run for all topics: each gets its share of the time
        r.seconds = (time.monotonic() - t0) / len(results)
    return list(results.values())
