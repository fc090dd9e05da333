"""Catalog: stable SIDs, idempotent upserts, retire/return, faiss search, deltas keep replicas identical;
the same catalog without embeddings (a serving replica's): codes-only upserts, rejections, snapshots in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from models.sid.catalog import Catalog, CatalogConfig

DIM = 8


def _emb(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _cat(dedup: int = 4) -> Catalog:
    return Catalog(CatalogConfig(level_sizes=(4, 4, dedup), dim=DIM))


def test_new_items_get_unique_sids_and_are_searchable():
    cat = _cat()
    emb = _emb(0, 3)
    res = cat.upsert(["a", "b", "c"], np.array([[1, 2], [1, 2], [0, 3]]), emb)
    assert res.added == ["a", "b", "c"] and len(cat) == 3 and cat.version == 3
    assert cat.sid_of("a").tolist() == [1, 2, 0] and cat.sid_of("b").tolist() == [1, 2, 1]
    assert cat.lookup_sids(np.array([[1, 2, 1], [0, 3, 0], [0, 3, 1]])).tolist() == [1, 2, -1]
    scores, idx = cat.search(emb[[2]], 1)
    assert idx[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert [n for n, _ in cat.neighbours("a", 5)] == sorted(["b", "c"], key=lambda i: -float(
        (emb[0] / np.linalg.norm(emb[0])) @ (emb[cat.index_of(i)] / np.linalg.norm(emb[cat.index_of(i)]))))
    assert all(cat.in_index(i) for i in "abc")


def test_upsert_is_idempotent_and_changed_content_keeps_the_sid():
    cat = _cat()
    cat.upsert(["a"], np.array([[1, 1]]), _emb(1), content_keys=["k1"])
    v = cat.version
    res = cat.upsert(["a"], np.array([[3, 3]]), _emb(1), content_keys=["k1"])
    assert res.unchanged == ["a"] and cat.version == v
    res = cat.upsert(["a"], np.array([[3, 3]]), _emb(2), content_keys=["k2"])
    assert res.updated == ["a"] and cat.sid_of("a").tolist() == [1, 1, 0]
    _, idx = cat.search(_emb(2), 1)
    assert idx[0, 0] == cat.index_of("a")
    assert len(cat) == 1


def test_retired_items_leave_trie_and_index_and_come_back_with_their_sid():
    cat = _cat()
    cat.upsert(["a", "b"], np.array([[1, 1], [1, 1]]), _emb(3, 2))
    assert cat.retire(["a", "zzz"]) == ["a"]
    assert not cat.in_index("a") and len(cat) == 1
    assert cat.lookup_sids(np.array([[1, 1, 0]])).tolist() == [-1]
    _, idx = cat.search(_emb(3, 2)[[0]], 2)
    assert cat.index_of("a") not in idx[0].tolist()
    # a newcomer with the same prefix does not take the retired item's slot
    cat.upsert(["c"], np.array([[1, 1]]), _emb(4))
    assert cat.sid_of("c").tolist() == [1, 1, 2]
    cat.upsert(["a"], np.array([[0, 0]]), _emb(5))
    assert cat.sid_of("a").tolist() == [1, 1, 0] and cat.in_index("a")


def test_full_prefix_falls_back_to_the_next_candidate_or_rejects():
    cat = _cat(dedup=2)
    cat.upsert(["a", "b"], np.array([[2, 2], [2, 2]]), _emb(6, 2))
    res = cat.upsert(["c"], np.array([[[2, 2], [2, 3]]]), _emb(7))
    assert res.added == ["c"] and cat.sid_of("c").tolist() == [2, 3, 0]
    res = cat.upsert(["d"], np.array([[[2, 2]]]), _emb(8))
    assert "no free de-duplication slot" in res.rejected["d"] and cat.index_of("d") is None


def test_replica_applying_deltas_is_identical_and_snapshot_round_trips():
    w = _cat()
    r = _cat()
    w.upsert(["a", "b", "c"], np.array([[0, 1], [0, 1], [3, 3]]), _emb(9, 3))
    r.apply(w.delta_since(0))
    w.retire(["b"])
    w.upsert(["d", "a"], np.array([[0, 1], [2, 2]]), _emb(10, 2))
    w.upsert(["b"], np.array([[0, 0]]), _emb(11))
    d = w.delta_since(r.version)
    assert d.counts() == {"add": 2, "update": 1, "retire": 1}
    r.apply(d)
    assert r.fingerprint() == w.fingerprint()
    np.testing.assert_allclose(r.embeddings(), w.embeddings())
    q = _emb(12, 4)
    assert np.array_equal(r.search(q, 3)[1], w.search(q, 3)[1])
    before = r.fingerprint()
    r.apply(w.delta_since(0))                       # ops it already holds: skipped (idempotent)
    r.apply(w.delta_since(2))
    assert r.fingerprint() == before and r.version == w.version
    with pytest.raises(ValueError, match="ask for delta_since"):
        _cat().apply(w.delta_since(2))              # would leave a gap
    s = Catalog.from_bytes(w.to_bytes())
    assert s.fingerprint() == w.fingerprint() and s.trie.entries()[1].tolist() == w.trie.entries()[1].tolist()
    s.upsert(["e"], np.array([[0, 1]]), _emb(13))
    assert s.sid_of("e").tolist() == [0, 1, 3]      # allocator state survived the snapshot


def _ids_cat(dedup: int = 3) -> Catalog:
    """A catalog without embeddings, as a serving replica holds."""
    return Catalog(CatalogConfig(level_sizes=(4, 4, dedup), dim=0))


def test_without_embeddings_codes_give_smallest_free_slots_and_full_prefixes_are_rejected():
    cat = _ids_cat()
    res = cat.upsert(["a", "b", "c", "d"], np.zeros((4, 2), np.int64))   # one prefix; the dedup level holds 3
    assert res.added == ["a", "b", "c"] and list(res.rejected) == ["d"]
    assert "dedup level full" in res.rejected["d"] and cat.rejected == 1
    assert cat.state_of("d") == ("rejected", res.rejected["d"]) and cat.state_of("zz") == ("unknown", None)
    assert cat.sids().tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2]]
    assert cat.indices_of(["c", "zz", "a"]).tolist() == [2, -1, 0]
    with pytest.raises(ValueError):
        cat.sids()[0, 0] = 3                        # a read-only view: SIDs do not change
    res = cat.upsert(["a"], np.ones((1, 2), np.int64))
    assert res.unchanged == ["a"] and cat.sid_of("a").tolist() == [0, 0, 0]   # known item keeps its SID
    assert cat.retire(["b"]) == ["b"] and cat.retire(["b"]) == [] and cat.state_of("b") == ("retired", None)
    assert 1 not in cat.trie.items().tolist() and cat.in_index("a") and not cat.in_index("b")
    assert cat.upsert(["b"], np.zeros((1, 2), np.int64)).added == ["b"] and cat.sid_of("b").tolist() == [0, 0, 1]
    assert len(cat) == 3 and cat.state_of("b") == ("live", None)
    with pytest.raises(ValueError, match="no embeddings"):
        cat.search(np.zeros((1, 4), np.float32), 1)
    with pytest.raises(ValueError, match="emb"):
        _cat().upsert(["x"], np.zeros((1, 2), np.int64))   # a catalog with embeddings needs them


def test_add_with_sids_reserves_slots_keeps_known_sids_and_rejects_taken_ones():
    cat = _ids_cat(dedup=4)
    res = cat.add_with_sids(["a", "b"], np.array([[1, 1, 2], [0, 0, 0]]))
    assert res.added == ["a", "b"] and cat.sid_of("a").tolist() == [1, 1, 2]
    assert cat.upsert(["c"], np.array([[1, 1]])).added == ["c"] and cat.sid_of("c").tolist() == [1, 1, 3]
    res = cat.add_with_sids(["a", "d", "e", "f"], np.array([[3, 3, 3], [0, 0, 0], [2, 2, 0], [2, 2, 0]]))
    assert res.unchanged == ["a"] and res.added == ["e"] and sorted(res.rejected) == ["d", "f"]
    cat.retire(["a"])
    assert cat.add_with_sids(["a"], np.array([[3, 3, 3]])).added == ["a"] and cat.sid_of("a").tolist() == [1, 1, 2]
    with pytest.raises(ValueError, match="outside"):
        cat.add_with_sids(["g"], np.array([[4, 0, 0]]))


def test_replica_without_embeddings_follows_a_writer_and_loads_snapshots_in_place():
    w = _cat()
    w.upsert(["a", "b", "c"], np.array([[0, 1], [0, 1], [3, 3]]), _emb(20, 3))
    w.retire(["b"])
    r = _ids_cat(dedup=4)
    r.apply(w.delta_since(0))
    assert r.fingerprint() == w.fingerprint() and r.embeddings().shape == (3, 0)
    assert r.delta_since(0).emb.shape == (4, 0)
    # a replica whose ops left the writer's log: snapshot in place (same trie object), then deltas again
    late = _ids_cat(dedup=4)
    late.upsert(["stale"], np.array([[2, 2]]))
    trie = late.trie
    late.load_snapshot(w.to_bytes())
    assert late.trie is trie and late.fingerprint() == w.fingerprint() and late.index_of("stale") is None
    w.upsert(["d", "b"], np.array([[0, 1], [1, 1]]), _emb(21, 2))
    late.apply(w.delta_since(late.version))
    assert late.fingerprint() == w.fingerprint()
    assert late.trie.entries()[1].tolist() == w.trie.entries()[1].tolist() == [0, 1, 2, 3]
    assert late.upsert(["e"], np.array([[0, 1]])).added == ["e"] and late.sid_of("e").tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="level_sizes"):
        Catalog(CatalogConfig(level_sizes=(4, 4), dim=0)).load_snapshot(w.to_bytes())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["up", "retire"]), st.integers(0, 11), st.integers(0, 3),
                          st.integers(0, 1), st.integers(0, 2)), min_size=1, max_size=40))
def test_property_every_trie_sid_decodes_to_exactly_one_live_item(ops):
    cat = _cat(dedup=3)
    replica = _cat(dedup=3)
    ids_only = _ids_cat(dedup=3)                    # a serving replica: no embeddings
    for op, item, c0, c1, content in ops:
        iid = f"i{item}"
        if op == "up":
            cat.upsert([iid], np.array([[[c0, c1], [c1, c0]]]), _emb(100 + content), content_keys=[str(content)])
        else:
            cat.retire([iid])
        replica.apply(cat.delta_since(replica.version))
        ids_only.apply(cat.delta_since(max(0, ids_only.version - 1)))   # overlapping deltas: idempotent
    sids, items = cat.trie.entries()
    live = cat.live_indices()
    assert sorted(items.tolist()) == live.tolist()
    # every SID in the trie walks (node API) to exactly its item, and that item is live
    nodes = cat.trie.root(len(items))
    for lvl in range(cat.depth):
        nodes = cat.trie.step(nodes, torch.as_tensor(sids[:, lvl]))
    assert cat.trie.leaf_item(nodes).tolist() == items.tolist()
    assert np.unique(sids, axis=0).shape[0] == len(items)
    for s, i in zip(sids.tolist(), items.tolist()):
        assert cat.sid_of(cat.item_id(i)).tolist() == s and cat.is_live(cat.item_id(i))
    # SIDs are stable: no two items ever share one, live or not
    all_sids = cat.sids()[: cat.num_indexed]
    assert np.unique(all_sids, axis=0).shape[0] == cat.num_indexed
    assert replica.fingerprint() == cat.fingerprint() == ids_only.fingerprint()
