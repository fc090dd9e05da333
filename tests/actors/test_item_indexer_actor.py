"""The item indexer as a Ray actor: indexes live, survives ray.kill (restart from its checkpoint)."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest

from actors.item_indexer import ItemIndexerConfig, item_indexer_actor
from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, ItemEvent
from ingest.kafka_client import KafkaConfig
from ingest.producer import EventProducer
from ingest.topics import TopicsConfig, ensure_topics
from models.sid.catalog import Catalog
from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig
from models.sid.tokenizer import tokenizer_to_bytes

ray = pytest.importorskip("ray")
DIM = 8


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=f"idx-{uuid.uuid4().hex[:6]}",
                 log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def _status_when(actor, live: int):
    s = ray.get(actor.status.remote())
    return s if s["live_items"] == live else None


def _wait(fn, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            v = fn()
            if v:
                return v
        except ray.exceptions.RayActorError:
            pass                                   # restarting
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.2)


@pytest.mark.slow
def test_actor_indexes_live_and_recovers_after_kill(local_ray, broker, topic_name, tmp_path):
    kafka = KafkaConfig(bootstrap=broker, namespace=topic_name + ".")
    ensure_topics(kafka, TopicsConfig(partitions={ITEM_EVENTS: 1, DEAD_LETTERS: 1}))
    emb = np.random.default_rng(0).normal(size=(300, DIM)).astype(np.float32)
    tok = RQKMeans(RQKMeansConfig(codebook_size=8, n_iter=5)).fit(emb)
    cfg = ItemIndexerConfig(name="actor", checkpoint_uri=str(tmp_path / "ck"), checkpoint_every_s=0.2)
    actor = item_indexer_actor(max_restarts=2, num_cpus=0.5).remote(kafka, tokenizer_to_bytes(tok), cfg)

    def send(lo, hi):
        with EventProducer(kafka) as p:
            for i in range(lo, hi):
                p.send(ItemEvent(item_id=f"a{i}", ts=i, embedding=emb[i].tolist()))

    send(0, 150)
    st = _wait(lambda: _status_when(actor, 150))
    assert st["tokenizer"] == tok.version
    replica = Catalog.from_bytes(ray.get(actor.snapshot.remote()))
    sids = {f"a{i}": replica.sid_of(f"a{i}").tolist() for i in range(150)}
    time.sleep(0.5)                                 # let a checkpoint land
    ray.kill(actor, no_restart=False)               # crash; Ray restarts it from its checkpoint
    send(150, 300)
    st = _wait(lambda: _status_when(actor, 300))
    assert st["restored_version"] >= 150           # it resumed from the checkpoint, not from scratch
    replica.apply(ray.get(actor.delta_since.remote(replica.version)))
    assert {f"a{i}": replica.sid_of(f"a{i}").tolist() for i in range(150)} == sids   # SIDs stable
    assert len(replica) == 300
    nn = ray.get(actor.neighbours.remote("a7", 3))
    assert len(nn) == 3 and all(n != "a7" for n, _ in nn)
    final = ray.get(actor.stop.remote())
    assert final["live_items"] == 300
    ray.kill(actor, no_restart=True)
