"""Serving follows the item indexer's catalog deltas: a new item is served under the indexer's SID.

Real parts only: the session's broker, a local Ray running the item indexer actor, item events
written the way ``POST /v1/items`` writes them (validated with the contract, produced to
``item-events``), a :class:`serving.live_state.DeltaFeed` pulling the actor's deltas into a
:class:`serving.live_state.LiveCatalog`, and the real generator decoding under that catalog's trie.
In-process (no broker): after any stream of indexer deltas, with a snapshot when the replica starts late,
the replica's catalog is the indexer's (ids, indices, SIDs, live set).
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from ingest.codec import decode_dict
from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, UserEvent
from ingest.kafka_client import KafkaConfig
from ingest.producer import EventProducer
from ingest.topics import TopicsConfig, ensure_topics
from models.sid.catalog import Catalog
from serving.backend import GeneratorBackend, load_model
from models.decoding.settings import DecodeSettings
from serving.requests import ModelSpec, RecRequest
from serving.live_state import DeltaFeed, KafkaHistory, LiveCatalog
from tests.serving.conftest import start_ray

DIM = 8


@pytest.fixture(scope="module")
def indexer(broker):
    import ray

    from actors.item_indexer import ItemIndexerConfig, item_indexer_actor
    from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig
    from models.sid.tokenizer import tokenizer_to_bytes

    kafka = KafkaConfig(bootstrap=broker, namespace=f"delta-{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka, TopicsConfig(partitions={ITEM_EVENTS: 1, DEAD_LETTERS: 1}))
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, DIM)).astype(np.float32)
    tok = RQKMeans(RQKMeansConfig(codebook_size=8, n_iter=5)).fit(emb)
    started = start_ray()
    actor = item_indexer_actor(num_cpus=0.1).remote(kafka, tokenizer_to_bytes(tok), ItemIndexerConfig(name="delta"))
    yield kafka, actor, tok, emb
    ray.kill(actor)
    if started:
        ray.shutdown()


def _post_items(kafka, records: list[dict]) -> None:
    """What POST /v1/items does with valid records: decode with the contract, produce, await the acks."""
    with EventProducer(kafka) as p:
        for f in [p.send(decode_dict(ITEM_EVENTS, r)) for r in records]:
            f.get(10)


def _indexer_sid(actor, item_id: str):
    import ray

    sid = Catalog.from_bytes(ray.get(actor.snapshot.remote())).sid_of(item_id)
    return None if sid is None else sid.tolist()


def _wait(cond, timeout_s=30.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, "timed out"
        time.sleep(0.02)


def test_new_item_is_served_under_the_indexers_sid(indexer):
    kafka, actor, tok, emb = indexer
    items = [{"item_id": f"d{i}", "ts": 1000 + i, "embedding": emb[i].tolist()} for i in range(40)]
    _post_items(kafka, items)
    cat = LiveCatalog(tok.sid_level_sizes)
    feed = DeltaFeed(actor, cat).start()
    try:
        assert feed.wait_caught_up(60), feed.last_error
        _wait(lambda: len(cat) == 40)
        for i in (0, 7, 39):   # the replica holds exactly the indexer's SIDs
            assert cat.sid_of(f"d{i}").tolist() == _indexer_sid(actor, f"d{i}")

        new = "brand-new-item"
        t0 = time.monotonic()
        _post_items(kafka, [{"item_id": new, "ts": 5000, "title": "new", "embedding": emb[100].tolist()}])
        _wait(lambda: cat.is_live(new))
        print(f"item -> live in serving catalog: {(time.monotonic() - t0) * 1e3:.0f} ms")
        want = _indexer_sid(actor, new)
        got = cat.sid_of(new).tolist()
        assert got == want
        import ray

        ref = Catalog.from_bytes(ray.get(actor.snapshot.remote()))
        assert feed.version == ref.version == cat.version and cat.fingerprint() == ref.fingerprint()

        # the generator decodes under this catalog: a user who has seen everything else gets the new item
        hist = KafkaHistory("127.0.0.1:1")  # never started: fed with apply()
        hist.apply([UserEvent(f"e{i}", "u1", f"d{i}", "click", 100 + i) for i in range(40)])
        cfg = {"level_sizes": tuple(tok.sid_level_sizes), "d_model": 16, "heads": 2, "enc_layers": 1,
               "dec_layers": 1, "max_history": 50}
        backend = GeneratorBackend(cat, hist, {"v1": load_model(ModelSpec("v1", cfg, seed=1), "cpu")[0]})
        out = backend.recommend([RecRequest("u1", 1, "v1", DecodeSettings("greedy"))])[0]
        assert out.error is None and out.items == [new] and out.sids == [want]

        # retire through the same path: gone from serving
        _post_items(kafka, [{"item_id": new, "ts": 6000, "op": "retire"}])
        _wait(lambda: not cat.is_live(new))
        assert backend.recommend([RecRequest("u1", 1, "v1", DecodeSettings("greedy"))])[0].items == []
        _wait(lambda: feed.version == Catalog.from_bytes(ray.get(actor.snapshot.remote())).version)
        _assert_same_catalog(cat, Catalog.from_bytes(ray.get(actor.snapshot.remote())))
    finally:
        feed.stop()


def _assert_same_catalog(replica, writer) -> None:
    """Ids, item indices, SIDs, the live set and the decoding trie are the writer's."""
    n = writer.num_indexed
    assert replica.num_indexed == n and replica.version == writer.version
    assert replica.item_ids(range(n)) == writer.item_ids(range(n))
    assert np.array_equal(replica.sids(), writer.sids())
    assert replica.live_indices().tolist() == writer.live_indices().tolist()
    assert replica.trie.entries()[1].tolist() == writer.trie.entries()[1].tolist()
    assert replica.fingerprint() == writer.fingerprint()


class _InProcessIndexer:
    """The two calls a DeltaFeed makes of :class:`actors.item_indexer.ItemIndexer`, over a writer catalog."""

    def __init__(self, catalog: Catalog):
        self.catalog, self.snapshots = catalog, 0

    def delta_since(self, version: int):
        return self.catalog.delta_since(version)

    def snapshot(self) -> bytes:
        self.snapshots += 1
        return self.catalog.to_bytes()


def test_replica_equals_the_indexer_catalog_after_a_stream_of_deltas():
    """Random upserts (some into full prefixes), retires and returns at the indexer; one replica follows
    from the start, one starts late (the ops it missed left the log: snapshot, then deltas)."""
    from models.sid.catalog import CatalogConfig

    rng = np.random.default_rng(1)
    writer = Catalog(CatalogConfig(level_sizes=(3, 3, 2), dim=4, max_log=12))   # a step adds <= 7 ops
    src = _InProcessIndexer(writer)
    early = LiveCatalog(writer.level_sizes)
    feeds = [DeltaFeed(src, early)]
    for step in range(30):
        ids = [f"i{j}" for j in rng.integers(0, 40, 5)]
        writer.upsert(ids, rng.integers(0, 3, (5, 2, 2)), rng.normal(size=(5, 4)),
                      content_keys=[str(k) for k in rng.integers(0, 2, 5)])
        writer.retire([f"i{j}" for j in rng.integers(0, 40, 2)])
        if step == 15:
            late = LiveCatalog(writer.level_sizes)
            feeds.append(DeltaFeed(src, late))
            with pytest.raises(ValueError, match="snapshot"):
                writer.delta_since(0)                  # the late replica must start from a snapshot
        for f in feeds:
            f.step()
            f.step()                                   # nothing new: no change
    assert writer.rejected > 0 and len(writer) > 5 and src.snapshots == 1     # the early replica: deltas only
    for f in feeds:
        f.step()
        assert f.version == writer.version
        _assert_same_catalog(f.catalog, writer)
    late.upsert(["seeded"], np.zeros((1, 2), np.int64))
    seeded = DeltaFeed(src, late)                        # items of its own: not the indexer's, so a snapshot
    seeded.step()
    assert late.index_of("seeded") is None and src.snapshots == 2
    _assert_same_catalog(late, writer)


def test_apply_delta_keeps_op_order_and_rejects_a_level_mismatch():
    from models.sid.catalog import OP_ADD, OP_RETIRE, CatalogDelta

    cat = LiveCatalog((4, 4, 3))
    d = CatalogDelta(0, 3, np.array([OP_ADD, OP_RETIRE, OP_ADD], np.int8), ["x", "x", "x"], np.array([0, 0, 0]),
                     np.array([[1, 2, 0], [-1, -1, -1], [1, 2, 0]]), np.zeros((3, 2), np.float32))
    cat.apply(d)   # retired and back within one delta: live, same SID
    assert cat.is_live("x") and cat.sid_of("x").tolist() == [1, 2, 0] and cat.version == 3
    cat.apply(d)   # again: nothing changes
    assert cat.is_live("x") and cat.version == 3 and cat.num_indexed == 1

    class Src:
        def delta_since(self, v):
            return CatalogDelta(v, v + 1, np.array([OP_ADD], np.int8), ["y"], np.array([0]),
                                np.array([[1, 1]]), np.zeros((1, 2), np.float32))

    with pytest.raises(ValueError, match="level"):
        DeltaFeed(Src(), LiveCatalog((4, 4, 3))).step()
