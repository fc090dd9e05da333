"""ShardRuntime in-process against the real broker: crash between any two steps = no crash."""

from __future__ import annotations

import random

import pytest

from actors.checkpoint import CheckpointConfig, CheckpointStore
from actors.sequence_shard import ShardConfig, ShardRuntime
from actors.sequence_state import SequenceConfig
from ingest.consumer_loop import ConsumerConfig
from ingest.contract import DEAD_LETTERS, EVENT_TYPES, USER_EVENTS, UserEvent
from ingest.kafka_client import KafkaConfig
from ingest.partitioning import partition_for
from ingest.producer import EventProducer
from ingest.topics import TopicsConfig, ensure_topics


@pytest.fixture
def kafka(broker, topic_name):
    cfg = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(cfg, TopicsConfig(partitions={USER_EVENTS: 2, DEAD_LETTERS: 1}))
    return cfg


def _produce(kafka, n=12_000, seed=1):
    rng = random.Random(seed)
    sent, last = [], {}
    with EventProducer(kafka) as prod:
        for i in range(n):
            u = f"u{rng.randrange(80)}"
            ev = UserEvent(event_id=f"e{i}", user_id=u, item_id=f"i{rng.randrange(300)}",
                           type=rng.choice(EVENT_TYPES), ts=1000 + i)
            last[partition_for(u, 2)] = prod.send(ev)
            sent.append(ev)
            if i % 97 == 0:
                prod.send(sent[rng.randrange(max(0, i - 50), i + 1)])  # duplicate delivery
            if i == n // 2:
                prod.send_raw(USER_EVENTS, u.encode(), b"\xff not json", partition=partition_for(u, 2))
    return {p: f.get(timeout=30).offset + 1 for p, f in last.items()}


def _config(kafka, uri, **kw):
    return ShardConfig(shard_id=0, num_shards=1, partitions=(0, 1), kafka=kafka,
                       checkpoint=CheckpointConfig(uri=uri, every_events=kw.pop("every", 1500), every_s=60),
                       sequence=SequenceConfig(capacity=32, dedup_window=1000),
                       consumer=ConsumerConfig(max_batch=kw.pop("batch", 700), poll_timeout_ms=50), **kw)


def _run_to(rt, ends, max_steps=10_000):
    for _ in range(max_steps):
        if all(rt.offsets[p] >= e for p, e in ends.items()):
            return
        rt.step()
    raise AssertionError(f"not caught up: {rt.offsets} vs {ends}")


def test_crash_between_any_steps_equals_no_crash(kafka, tmp_path):
    ends = _produce(kafka)
    clean = ShardRuntime(_config(kafka, str(tmp_path / "clean"), batch=5000))
    _run_to(clean, ends)
    want, want_status = clean.snapshot(), clean.status()
    clean.stop()
    assert want_status["dead_lettered"] == 1 and want_status["duplicates_dropped"] > 100

    rng = random.Random(5)
    uri = str(tmp_path / "crashy")
    crashes = 0
    while True:
        rt = ShardRuntime(_config(kafka, uri))
        if all(rt.offsets[p] >= e for p, e in ends.items()):
            break
        for _ in range(rng.randrange(1, 12)):
            rt.step()
            if rng.random() < 0.15:
                rt.checkpoint()
        rt.consumer.close()  # the process "dies": no final checkpoint
        crashes += 1
    assert crashes >= 3
    assert rt.snapshot() == want
    st = rt.status()
    assert st["restored"] and st["events_applied"] == want_status["events_applied"]
    assert st["duplicates_dropped"] == want_status["duplicates_dropped"]
    # offsets committed to Kafka after the checkpoint: lag is visible to standard tools
    from kafka import KafkaConsumer, TopicPartition

    kc = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=rt.config.group_id, enable_auto_commit=False)
    try:
        committed = {p: kc.committed(TopicPartition(kafka.topic(USER_EVENTS), p)) for p in (0, 1)}
    finally:
        kc.close()
    payload, ck_offsets = CheckpointStore(uri).load(rt.config.checkpoint_name)
    assert committed == ck_offsets == ends
    rt.stop()


def test_histories_status_and_partition_mismatch(kafka, tmp_path):
    ends = _produce(kafka, n=2000, seed=2)
    rt = ShardRuntime(_config(kafka, str(tmp_path)))
    _run_to(rt, ends)
    rt._ends = rt._log_ends()
    rt.flush()
    st = rt.status()
    assert st["lag"] == 0 and st["users"] == 80 and st["events_applied"] == 2000
    assert st["checkpoints"] >= 1 and st["checkpoint_age_s"] >= 0
    h = rt.histories(["u1", "u2", "ghost"], max_len=8)
    assert h["items"].shape == (3, 8) and h["lengths"][2] == 0 and h["last_ts"][0] > 1000
    rt.stop()
    with pytest.raises(ValueError, match="partition count changed"):
        ShardRuntime(ShardConfig(shard_id=0, num_shards=1, partitions=(0,), kafka=kafka,
                                 checkpoint=CheckpointConfig(uri=str(tmp_path)),
                                 sequence=SequenceConfig(capacity=32)))
    with pytest.raises(ValueError, match="partitions is empty"):
        ShardConfig(shard_id=0, num_shards=1, partitions=(), kafka=kafka,
                    checkpoint=CheckpointConfig(uri=str(tmp_path)))


def test_in_process_recovery_rolls_back_to_the_checkpoint_and_replays(kafka, tmp_path):
    ends = _produce(kafka, n=3000, seed=4)
    clean = ShardRuntime(_config(kafka, str(tmp_path / "clean"), batch=5000))
    _run_to(clean, ends)
    want = clean.snapshot()
    clean.stop()
    rt = ShardRuntime(_config(kafka, str(tmp_path / "r"), every=10**9))
    _run_to(rt, {p: e // 3 for p, e in ends.items()})
    rt.checkpoint()
    at_ckpt, ck_offsets = rt.snapshot(), dict(rt.offsets)
    while rt.offsets == ck_offsets:  # at least one more batch after the checkpoint
        rt.step()
    assert rt.snapshot() != at_ckpt
    rt._recover()  # what the loop does after an error when it cannot restart the process
    assert rt.snapshot() == at_ckpt
    _run_to(rt, ends)
    assert rt.snapshot() == want
    rt.stop()


def test_process_knobs_are_validated(tmp_path):
    import gc

    from actors.sequence_shard import tune_gc

    base = dict(shard_id=0, num_shards=1, partitions=(0,), kafka=KafkaConfig(bootstrap="127.0.0.1:9"),
                checkpoint=CheckpointConfig(uri=str(tmp_path)))
    with pytest.raises(ValueError, match="gc_gen0_threshold=5 "):
        ShardConfig(**base, gc_gen0_threshold=5)
    with pytest.raises(ValueError, match="gil_switch_ms=0.0 "):
        ShardConfig(**base, gil_switch_ms=0.0)
    assert ShardConfig(**base, gc_gen0_threshold=None, gil_switch_ms=None).gc_gen0_threshold is None
    before = gc.get_threshold()
    try:
        tune_gc(12_345)
        assert gc.get_threshold() == (12_345,) + before[1:] and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
