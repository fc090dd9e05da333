"""The Parquet archive against the real broker: layout, exactly-once across crashes, kill -9 and restart."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

import ingest.archive as archive_mod
from ingest.archive import ArchiveConfig, Archiver, read_archive, read_records, recover, scan
from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, USER_EVENTS, UserEvent
from ingest.kafka_client import KafkaConfig
from ingest.producer import EventProducer
from ingest.topics import TopicsConfig, ensure_topics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAY = 86_400_000


@pytest.fixture
def kafka(broker, topic_name):
    cfg = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(cfg, TopicsConfig(partitions={USER_EVENTS: 3, ITEM_EVENTS: 1, DEAD_LETTERS: 1}))
    return cfg


def _events(lo: int, hi: int) -> list[UserEvent]:
    # spread over 3 days so a flush writes several date partitions
    return [UserEvent(event_id=f"e{i}", user_id=f"u{i % 13}", item_id=f"i{i % 17}", type="click",
                      ts=1_767_225_600_000 + (i % 3) * DAY + i) for i in range(lo, hi)]


def _produce(kafka, events, bad_every: int = 0):
    with EventProducer(kafka) as p:
        for n, e in enumerate(events):
            p.send(e)
            if bad_every and n % bad_every == 0:
                p.send_raw(USER_EVENTS, b"u1", b'{"event_id": "broken"')


def _produce_until(kafka, start: int, stop: threading.Event, acked: list, chunk: int = 100):
    """Produce events ``start, start+1, …`` in acknowledged chunks until ``stop`` is set.

    ``acked[0]`` is always the id after the last acknowledged event, so a test knows how much
    of the stream existed at the instant it killed a consumer.
    """
    n = start
    with EventProducer(kafka) as p:
        while not stop.is_set():
            for e in _events(n, n + chunk):
                p.send(e)
            p.flush()
            n += chunk
            acked[0] = n
            time.sleep(0.02)


def _ids(root) -> list[str]:
    return read_archive(root, USER_EVENTS, columns=["event_id"]).column("event_id").to_pylist()


def test_archive_layout_contents_and_idempotent_restart(kafka, tmp_path):
    root = tmp_path / "arch"
    _produce(kafka, _events(0, 600), bad_every=100)
    cfg = ArchiveConfig(root=str(root), topics=(USER_EVENTS, ITEM_EVENTS), max_rows=250, flush_interval_s=60)
    with Archiver(kafka, cfg) as a:
        stats = a.run(until_idle=True, timeout_s=60)
    s = stats[USER_EVENTS]
    assert s.consumed == 606 and s.dead_lettered == 6 and s.rows == 600
    files = scan(root, USER_EVENTS)
    assert {f.date for f in files} == {"2026-01-01", "2026-01-02", "2026-01-03"}
    for f in files:  # hive layout, data really in its date partition, offsets in the metadata
        assert f.path.parent.parent.name == f"topic={USER_EVENTS}" and f.path.parent.name == f"date={f.date}"
        t = pq.read_table(f.path)
        assert all(time.strftime("%Y-%m-%d", time.gmtime(ts / 1000)) == f.date for ts in t.column("ts").to_pylist())
        assert b"genrec.archive" in pq.read_schema(f.path).metadata
        offs = t.column("kafka_offset").to_pylist()
        assert all(f.first <= o < f.next for o in offs)
    recs = read_records(root, USER_EVENTS)
    assert sorted(r.event_id for r in recs) == sorted(e.event_id for e in _events(0, 600))
    assert {r.event_id: r for r in recs}["e5"] == _events(5, 6)[0]  # every field survives
    # a restart with nothing new writes nothing; new events are appended exactly once
    n_files = len(files)
    with Archiver(kafka, cfg) as a:
        a.run(until_idle=True, timeout_s=60)
    assert len(scan(root, USER_EVENTS)) == n_files
    _produce(kafka, _events(600, 700))
    with Archiver(kafka, cfg) as a:
        assert a.topics[USER_EVENTS].resumed_from  # resumed from the files, not from the beginning
        a.run(until_idle=True, timeout_s=60)
    ids = _ids(root)
    assert len(ids) == len(set(ids)) == 700


def test_crash_in_the_middle_of_a_flush_leaves_no_partial_flush(kafka, tmp_path, monkeypatch):
    root = tmp_path / "arch"
    _produce(kafka, _events(0, 400))
    cfg = ArchiveConfig(root=str(root), topics=(USER_EVENTS,), max_rows=150, flush_interval_s=60)
    real_replace, calls = os.replace, {"n": 0}

    def dying_replace(src, dst):  # the process "dies" after renaming 4 files: mid-flush (3 dates per flush)
        calls["n"] += 1
        if calls["n"] == 5:
            raise SystemExit("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(archive_mod.os, "replace", dying_replace)
    a = Archiver(kafka, cfg)
    with pytest.raises(SystemExit):
        a.run(until_idle=True, timeout_s=60)
    a.close(flush=False)
    monkeypatch.setattr(archive_mod.os, "replace", real_replace)
    leftovers = [p for p in (root / f"topic={USER_EVENTS}").rglob("*") if p.name.startswith(".tmp-")]
    visible = scan(root, USER_EVENTS)
    assert leftovers and len(visible) == 4  # a temp file and one incomplete flush were left behind
    ids_now = _ids(root)  # readers skip the incomplete flush
    assert len(ids_now) == len(set(ids_now)) < 400
    resume = recover(root, USER_EVENTS)
    assert not [p for p in (root / f"topic={USER_EVENTS}").rglob("*") if p.name.startswith(".tmp-")]
    assert resume and len(scan(root, USER_EVENTS)) < 4
    with Archiver(kafka, cfg) as a:
        a.run(until_idle=True, timeout_s=60)
    ids = _ids(root)
    assert len(ids) == len(set(ids)) == 400


def test_kill_9_the_archiver_mid_stream_then_restart_exactly_once(kafka, tmp_path):
    root = tmp_path / "arch"
    env = {**os.environ, "KAFKA_BOOTSTRAP": kafka.bootstrap, "GENREC_TOPIC_NAMESPACE": kafka.namespace}
    cmd = [sys.executable, "-m", "infra.cli", "archive", "--root", str(root), "--topics", USER_EVENTS,
           "--max-rows", "200", "--flush-interval", "0.1"]
    rng = random.Random(1)
    total, kills, mid_stream = 0, 0, 0
    for round_ in range(3):
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # The stream keeps flowing while the archiver is killed, so each kill lands mid-stream.
        stop, acked = threading.Event(), [total]
        producer = threading.Thread(target=_produce_until, args=(kafka, total, stop, acked))
        try:
            before = len(scan(root, USER_EVENTS))
            producer.start()
            deadline = time.monotonic() + 60
            while len(scan(root, USER_EVENTS)) <= before + 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # wait until it is writing, then kill at a random instant
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            produced_at_kill = acked[0]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stop.set()
            producer.join()
        total = acked[0]
        if len(_ids(root)) < produced_at_kill:
            mid_stream += 1  # it died with acknowledged events still to archive
        kills += 1
    done = subprocess.run(cmd + ["--until-idle"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids = _ids(root)
    dupes = [k for k, c in Counter(ids).items() if c > 1]
    assert not dupes, dupes[:10]
    assert sorted(ids) == sorted(e.event_id for e in _events(0, total))
    assert kills == 3 and mid_stream >= 1, mid_stream
