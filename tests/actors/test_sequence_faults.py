"""Exactly-once sequences under kill -9, with a real tansu broker and a real local Ray.

The expected state is computed in-process by applying the same per-partition
message sequences to :class:`SequenceState` — that *is* the fault-free run.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from actors.checkpoint import CheckpointConfig
from actors.sequence_state import SequenceConfig, SequenceState
from actors.supervisor import SequenceSupervisor, SupervisorConfig, format_status
from ingest.codec import encode
from ingest.consumer_loop import ContractConsumer
from ingest.contract import DEAD_LETTERS, EVENT_TYPES, USER_EVENTS, UserEvent
from ingest.kafka_client import KafkaConfig
from ingest.partitioning import partition_for
from ingest.producer import EventProducer, ProducerConfig
from ingest.topics import TopicsConfig, ensure_topics

ray = pytest.importorskip("ray")

N_PARTITIONS = 4


@pytest.fixture
def kafka(broker, topic_name):
    cfg = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(cfg, TopicsConfig(partitions={USER_EVENTS: N_PARTITIONS, DEAD_LETTERS: 1}))
    return cfg


def _stream(n: int, n_users: int, n_items: int, seed: int):
    """(partition, key, value bytes, event|None) in send order: events, re-deliveries and poison."""
    rng = random.Random(seed)
    part = {f"u{u}": partition_for(f"u{u}", N_PARTITIONS) for u in range(n_users)}
    out, redeliver = [], []
    for i in range(n):
        u = f"u{rng.randrange(n_users)}"
        t = rng.choice(EVENT_TYPES)
        ev = UserEvent(event_id=f"e{i}", user_id=u, item_id=f"i{rng.randrange(n_items)}", type=t,
                       ts=1_700_000_000_000 + i, watch_ms=rng.randrange(90_000) if t == "watch" else None)
        out.append((part[u], u.encode(), encode(ev), ev))
        if rng.random() < 0.01:  # the producer "retries": same event again a little later
            redeliver.append((i + rng.randrange(10, 500), out[-1]))
        while redeliver and redeliver[0][0] <= i:
            out.append(redeliver.pop(0)[1])
        if i % 40_000 == 20_000:  # poison mid-stream
            out.append((part[u], u.encode(), b'{"event_id": "bad", "user_id": "' + u.encode() + b'", "ts": "x"}',
                        None))
    return out


def _expected(stream, cfg: SequenceConfig) -> SequenceState:
    st = SequenceState(cfg)
    for p in range(N_PARTITIONS):
        evs = [m[3] for m in stream if m[0] == p and m[3] is not None]
        st.apply(evs, p)
    return st


def _all_histories(sup, users):
    got = {}
    for i in range(0, len(users), 500):
        chunk = users[i:i + 500]
        h = sup.histories(chunk)
        for b, u in enumerate(chunk):
            n = int(h["lengths"][b])
            got[u] = [(h["item_ids"][h["items"][b, j]], EVENT_TYPES[h["event_type"][b, j]],
                       int(h["ts"][b, j]), int(h["watch_ms"][b, j])) for j in range(n)]
    return got


def _wait_caught_up(sup, ends, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sup.caught_up(ends):
            return
        time.sleep(0.5)
    raise AssertionError("shards did not catch up:\n" + format_status(sup.status()))


def test_kill9_at_random_moments_ends_in_the_fault_free_state(kafka, local_ray, tmp_path):
    seq_cfg = SequenceConfig(capacity=64, dedup_window=4096)
    stream = _stream(200_000, n_users=3000, n_items=20_000, seed=7)
    expected = _expected(stream, seq_cfg)
    n_dups = sum(1 for m in stream if m[3] is not None) - 200_000
    assert expected.duplicates == n_dups > 1000

    poison_futures, last_future = [], {}

    def produce():
        with EventProducer(kafka, ProducerConfig(linger_ms=20, batch_size=1 << 20)) as prod:
            for p, key, value, ev in stream:
                f = last_future[p] = prod.send_raw(USER_EVENTS, key, value, partition=p)
                if ev is None:
                    poison_futures.append(f)

    producer = threading.Thread(target=produce)
    t0 = time.monotonic()
    producer.start()
    sup = SequenceSupervisor(SupervisorConfig(
        kafka=kafka, checkpoint=CheckpointConfig(uri=str(tmp_path / "ckpt"), every_events=15_000, every_s=0.7),
        num_shards=2, sequence=seq_cfg, monitor_s=1.0)).start()
    try:
        sup.wait_ready()
        deadline = time.monotonic() + 60  # first kill only once both shards have a checkpoint to return to
        while min(r.get("checkpoints", 0) for r in sup.status()["shards"]) < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        rng = random.Random(11)
        pids = set()
        killed = set()
        kills = 0
        while kills < 4 or producer.is_alive():
            time.sleep(rng.uniform(0.5, 3.0))
            if kills >= 6:
                continue
            i = rng.randrange(len(sup.shards))
            killed.add(i)
            pid = ray.get(sup.shards[i].pid.remote(), timeout=60)
            pids.add(pid)
            os.kill(pid, signal.SIGKILL)
            kills += 1
        producer.join()
        t_produced = time.monotonic() - t0
        # (tansu's ListOffsets(latest) can trail the log end by a batch; the acks are exact)
        ends = {p: f.get(timeout=30).offset + 1 for p, f in last_future.items()}
        assert sum(ends.values()) == len(stream)
        _wait_caught_up(sup, ends)
        status = sup.status()
        print(f"produced in {t_produced:.1f}s, caught up after {time.monotonic() - t0:.1f}s, {kills} kills")
        print(format_status(status))
        got = _all_histories(sup, sorted(expected.user_ids))
        after = {ray.get(s.pid.remote()) for s in sup.shards}
        assert len(pids | after) >= kills + 1, "the kills did not restart worker processes"
        assert all(status["shards"][i]["restored"] for i in killed), "a killed shard did not recover from a checkpoint"
    finally:
        sup.shutdown()

    want = expected.snapshot()
    assert len(got) == len(want) == 3000
    mismatched = [u for u in want if got[u] != want[u]]
    assert not mismatched, f"{len(mismatched)} users differ, e.g. {mismatched[0]}"
    total = status["total"]
    assert total["events_applied"] == expected.events_applied == 200_000
    assert total["duplicates_dropped"] == expected.duplicates
    # every poison message is dead-lettered (possibly again after a crash: same partition+offset)
    poisoned = {(f.get(timeout=10).partition, f.get(timeout=10).offset) for f in poison_futures}
    with ContractConsumer(kafka, DEAD_LETTERS) as dl:
        letters = [r for b in dl.drain(timeout_s=30) for r in b.records()]
    assert {(d.partition, d.offset) for d in letters} == poisoned and len(poisoned) == 5
    assert all("$.ts" in d.error or "item_id" in d.error for d in letters)


def test_supervisor_recreates_a_shard_ray_gave_up_on(kafka, local_ray, tmp_path):
    stream = _stream(3000, n_users=50, n_items=100, seed=3)
    last = {}
    with EventProducer(kafka) as prod:
        for p, key, value, _ in stream:
            last[p] = prod.send_raw(USER_EVENTS, key, value, partition=p)
    ends = {p: f.get(timeout=30).offset + 1 for p, f in last.items()}
    cfg = SupervisorConfig(kafka=kafka, checkpoint=CheckpointConfig(uri=str(tmp_path), every_s=0.2),
                           num_shards=2, max_restarts=0, monitor_s=0)
    with SequenceSupervisor(cfg) as sup:
        sup.wait_ready()
        _wait_caught_up(sup, ends, 60)
        os.kill(ray.get(sup.shards[1].pid.remote()), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not sup.check() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert sup.recreated == 1
        sup.wait_ready()
        _wait_caught_up(sup, ends, 60)
        # a reader in another process finds the shards by name (what a Serve replica does)
        from actors.router import SequenceRouter

        spec = sup.router_spec()
        remote_read = ray.remote(lambda spec, users: SequenceRouter.from_spec(spec).histories(users)["lengths"])
        lengths = ray.get(remote_read.remote(spec, ["u1", "u2", "nobody"]), timeout=120)
        assert lengths.tolist() == sup.histories(["u1", "u2", "nobody"])["lengths"].tolist()
        assert lengths[2] == 0 and lengths[0] > 0
        st = sup.status()
        assert st["shards"][1]["restored"] and st["total"]["events_applied"] == 3000
        want = _expected(stream, SequenceConfig()).snapshot()
        assert _all_histories(sup, sorted(want)) == want
        assert "running" in format_status(st)
