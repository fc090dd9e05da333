"""Live catalog (dedup SIDs, retire, deltas) and the in-process backend: real trie, real generator, no Ray."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.contract import ItemEvent, UserEvent
from serving.backend import GeneratorBackend, ModelSpec, RecRequest, load_model
from serving.live_state import HashSidAssigner, KafkaHistory, LiveCatalog

LS = (4, 4, 3)


def test_catalog_assigns_unique_stable_sids_and_rejects_full_prefixes():
    cat = LiveCatalog(LS)
    codes = np.zeros((4, 2), np.int64)  # four items with the same prefix; dedup level holds 3
    added, rejected = cat.upsert(["a", "b", "c", "d"], codes)
    assert added == ["a", "b", "c"] and list(rejected) == ["d"] and "dedup level full" in rejected["d"]
    sids = cat.item_sids()
    assert sorted(sids[:, 2].tolist()) == [0, 1, 2] and len({tuple(r) for r in sids.tolist()}) == 3
    before = cat.item_sids().copy()
    assert cat.upsert(["a"], np.ones((1, 2), np.int64)) == ([], {})  # known item keeps its SID
    assert (cat.item_sids() == before).all()
    assert cat.retire(["b"]) == ["b"] and not cat.is_live("b") and len(cat) == 2
    assert 1 not in cat.trie.items().tolist()
    cat.upsert(["b"], np.zeros((1, 2), np.int64))  # back, with the same SID
    assert cat.is_live("b") and (cat.item_sids()[1] == before[1]).all()
    assert cat.range_index().keys.numel() == 3


def test_catalog_applies_item_indexer_deltas():
    from models.catalog import OP_ADD, OP_RETIRE, CatalogDelta

    cat = LiveCatalog(LS)
    d = CatalogDelta(0, 2, np.array([OP_ADD, OP_ADD, OP_RETIRE], np.int8), ["x", "y", "x"],
                     np.array([0, 1, 0]), np.array([[1, 2, 0], [3, 3, 1], [-1, -1, -1]]), np.zeros((3, 2), np.float32))
    cat.apply_delta(d)
    assert not cat.is_live("x") and cat.is_live("y") and cat.item_sids()[1].tolist() == [3, 3, 1]


def test_hash_assigner_is_deterministic_and_in_range():
    a = HashSidAssigner((4, 4))
    evs = [ItemEvent(f"i{i}", 1) for i in range(50)]
    c1, c2 = a(evs), a(evs)
    assert (c1 == c2).all() and c1.min() >= 0 and c1.max() < 4


@pytest.fixture(scope="module")
def backend():
    cat = LiveCatalog(LS)
    evs = [ItemEvent(f"i{i}", 1) for i in range(30)]
    cat.upsert([e.item_id for e in evs], HashSidAssigner(LS[:-1])(evs))
    hist = KafkaHistory("127.0.0.1:1", max_len=200)  # never started: fed with apply() below
    cfg = {"level_sizes": LS, "d_model": 16, "heads": 2, "enc_layers": 1, "dec_layers": 1, "max_history": 10}
    models = {"v1": load_model(ModelSpec("v1", cfg, seed=1), "cpu"),
              "v2": load_model(ModelSpec("v2", cfg, seed=2), "cpu")}
    return GeneratorBackend(cat, hist, models)


def test_backend_generates_valid_distinct_sessions_and_excludes_seen(backend):
    n_live = len(backend.catalog)
    backend.history.apply([UserEvent(f"e{i}", "u1", backend.catalog.item_ids[i], "click", 100 + i)
                           for i in range(n_live - 4)])
    reqs = [RecRequest("u1", 4, "v1", {"mode": "greedy"}), RecRequest("u1", 4, "v2", {"mode": "beam", "beam_width": 3}),
            RecRequest("u2", 6, "v1", {"mode": "greedy"}), RecRequest("u3", 2, "v9", {})]
    out = backend.recommend(reqs)
    seen = set(backend.catalog.item_ids[:n_live - 4])
    for r in out[:2]:  # only 4 unseen live items remain: exactly those come back
        assert r.error is None and len(r.items) == 4 == len(set(r.items))
        assert not set(r.items) & seen
        assert [backend.catalog.item_sids()[backend.catalog.index[i]].tolist() for i in r.items] == r.sids
    assert len(out[2].items) == 6 == len(set(out[2].items))
    assert out[3].error and "unknown model version" in out[3].error
    assert out[0].stats["batch_size"] == 4
    r = backend.recommend([RecRequest("u1", 4, "v1", {"mode": "greedy"}, exclude_seen=False)])[0]
    assert len(r.items) == 4


def test_new_item_is_generated_once_it_is_in_the_catalog(backend):
    """With every other item seen, the only item left to recommend is the new one."""
    live = [i for i in backend.catalog.item_ids if backend.catalog.is_live(i)]
    backend.history.apply([UserEvent(f"n{i}", "u9", it, "click", 100 + i) for i, it in enumerate(live)])
    assert backend.recommend([RecRequest("u9", 1, "v1", {"mode": "greedy"})])[0].items == []
    backend.catalog.upsert(["fresh"], HashSidAssigner(LS[:-1])([ItemEvent("fresh", 2)]))
    assert backend.recommend([RecRequest("u9", 1, "v1", {"mode": "greedy"})])[0].items == ["fresh"]


def test_checkpoint_with_mtp_heads_serves_the_mtp_modes(backend, tmp_path):
    """A model file that carries MTP heads loads them: spec_greedy answers exactly as greedy (lossless),
    mtp answers valid sessions; a version without heads keeps the clear error (503 at the ingress)."""
    from models.mtp import MTPConfig, MTPHeads
    from serving.backend import load_mtp_heads, save_model

    model = backend.models["v1"]
    heads = MTPHeads(MTPConfig(model.cfg.level_sizes, model.cfg.d_model, horizon=3)).init_from_generator(model)
    path = str(tmp_path / "v3.pt")
    save_model(model, path, mtp_heads=heads)
    spec = ModelSpec("v3", path=path)
    loaded = load_mtp_heads(spec, "cpu")
    assert loaded is not None and loaded.cfg == heads.cfg
    assert load_mtp_heads(ModelSpec("v1", {"level_sizes": LS, "d_model": 16}), "cpu") is None
    backend.add_model("v3", load_model(spec, "cpu"), loaded)
    assert "v3" in backend.status()["mtp_heads"]
    users = [f"m{i}" for i in range(4)]
    backend.history.apply([UserEvent(f"m{i}-{j}", u, backend.catalog.item_ids[(3 * i + j) % 20], "click", 10 + j)
                           for i, u in enumerate(users) for j in range(3)])
    greedy = backend.recommend([RecRequest(u, 4, "v3", {"mode": "greedy"}) for u in users])
    spec_g = backend.recommend([RecRequest(u, 4, "v3", {"mode": "spec_greedy", "draft_len": 2}) for u in users])
    assert all(r.error is None for r in greedy + spec_g), [r.error for r in spec_g]
    assert [r.items for r in spec_g] == [r.items for r in greedy]
    mtp = backend.recommend([RecRequest(u, 4, "v3", {"mode": "mtp", "mtp_tokens": 2}) for u in users])
    for r in mtp:
        assert r.error is None and len(r.items) == 4 == len(set(r.items))
        assert all(backend.catalog.is_live(i) for i in r.items)
    no_heads = backend.recommend([RecRequest("m0", 4, "v1", {"mode": "spec_greedy"})])[0]
    assert no_heads.error and "MTP heads" in no_heads.error and "save_model" in no_heads.error
