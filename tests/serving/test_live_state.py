"""The replica's catalog fed by item events (a models Catalog) and the in-process backend: real trie, real
generator, no Ray. Deltas from the item indexer: test_delta_feed.py."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.contract import ItemEvent, UserEvent
from serving.backend import GeneratorBackend, load_model
from models.decoding.settings import DecodeSettings
from serving.requests import ModelSpec, RecRequest
from serving.live_state import HashSidAssigner, ItemFeed, KafkaHistory, LiveCatalog

LS = (4, 4, 3)


def test_item_feed_upserts_hash_codes_into_a_models_catalog_and_rejects_full_prefixes():
    """The replica's catalog is the models Catalog (its dedup and rejections: tests/models/sid/test_catalog.py);
    the item feed gives it hash codes, without embeddings."""
    from models.sid.catalog import Catalog

    cat = LiveCatalog(LS)
    assert isinstance(cat, Catalog) and cat.dim == 0
    feed = ItemFeed("127.0.0.1:1", cat, lambda evs: np.zeros((len(evs), 2), np.int64))  # never started
    feed.apply([ItemEvent(i, 1) for i in "abcd"] + [ItemEvent("b", 2, op="retire")])
    assert [cat.state_of(i)[0] for i in "abcd"] == ["live", "retired", "live", "rejected"]
    assert "dedup level full" in cat.state_of("d")[1] and cat.rejected == 1 and feed.applied == 5
    assert cat.sids().tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2]] and 1 not in cat.trie.items().tolist()
    feed.apply([ItemEvent("b", 3), ItemEvent("a", 3)])       # back with the same SID; a known item keeps its own
    assert cat.sid_of("b").tolist() == [0, 0, 1] and cat.sid_of("a").tolist() == [0, 0, 0] and len(cat) == 3


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
    models = {"v1": load_model(ModelSpec("v1", cfg, seed=1), "cpu")[0],
              "v2": load_model(ModelSpec("v2", cfg, seed=2), "cpu")[0]}
    return GeneratorBackend(cat, hist, models)


def test_backend_generates_valid_distinct_sessions_and_excludes_seen(backend):
    n_live = len(backend.catalog)
    backend.history.apply([UserEvent(f"e{i}", "u1", backend.catalog.item_id(i), "click", 100 + i)
                           for i in range(n_live - 4)])
    reqs = [RecRequest("u1", 4, "v1", DecodeSettings("greedy")), RecRequest("u1", 4, "v2", DecodeSettings("beam", beam_width=3)),
            RecRequest("u2", 6, "v1", DecodeSettings("greedy")), RecRequest("u3", 2, "v9", DecodeSettings())]
    out = backend.recommend(reqs)
    seen = set(backend.catalog.item_ids(range(n_live - 4)))
    for r in out[:2]:  # only 4 unseen live items remain: exactly those come back
        assert r.error is None and len(r.items) == 4 == len(set(r.items))
        assert not set(r.items) & seen
        assert [backend.catalog.sid_of(i).tolist() for i in r.items] == r.sids
    assert len(out[2].items) == 6 == len(set(out[2].items))
    assert out[3].error and "unknown model version" in out[3].error
    assert out[0].stats["batch_size"] == 4
    r = backend.recommend([RecRequest("u1", 4, "v1", DecodeSettings("greedy"), exclude_seen=False)])[0]
    assert len(r.items) == 4


def test_new_item_is_generated_once_it_is_in_the_catalog(backend):
    """With every other item seen, the only item left to recommend is the new one."""
    live = backend.catalog.item_ids(backend.catalog.live_indices())
    backend.history.apply([UserEvent(f"n{i}", "u9", it, "click", 100 + i) for i, it in enumerate(live)])
    assert backend.recommend([RecRequest("u9", 1, "v1", DecodeSettings("greedy"))])[0].items == []
    backend.catalog.upsert(["fresh"], HashSidAssigner(LS[:-1])([ItemEvent("fresh", 2)]))
    assert backend.recommend([RecRequest("u9", 1, "v1", DecodeSettings("greedy"))])[0].items == ["fresh"]


def test_registry_version_with_mtp_heads_serves_the_mtp_modes(backend, tmp_path):
    """A registry version that carries MTP heads loads them: spec_greedy answers exactly as greedy (lossless),
    mtp answers valid sessions; a version without heads keeps the clear error (503 at the ingress)."""
    from actors.model_registry import ModelRegistry, RegistryError
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.mtp import MTPConfig, MTPHeads

    model = backend.models["v1"]
    heads = MTPHeads(MTPConfig(model.cfg.level_sizes, model.cfg.d_model, horizon=3)).init_from_generator(model)
    reg = ModelRegistry(str(tmp_path / "registry"))
    reg.publish("v3", GeneratorBundle(model, heads))
    spec = ModelSpec("v3", registry=reg.uri)
    got_model, loaded = load_model(spec, "cpu", LS)
    assert loaded is not None and loaded.cfg == heads.cfg
    assert load_model(ModelSpec("v1", {"level_sizes": LS, "d_model": 16}), "cpu")[1] is None
    with pytest.raises(RegistryError, match="level_sizes"):
        load_model(spec, "cpu", (4, 4, 4))
    backend.add_model("v3", got_model, loaded)
    assert "v3" in backend.status()["mtp_heads"]
    users = [f"m{i}" for i in range(4)]
    backend.history.apply([UserEvent(f"m{i}-{j}", u, backend.catalog.item_id((3 * i + j) % 20), "click", 10 + j)
                           for i, u in enumerate(users) for j in range(3)])
    greedy = backend.recommend([RecRequest(u, 4, "v3", DecodeSettings("greedy")) for u in users])
    spec_g = backend.recommend([RecRequest(u, 4, "v3", DecodeSettings("spec_greedy", draft_len=2)) for u in users])
    assert all(r.error is None for r in greedy + spec_g), [r.error for r in spec_g]
    assert [r.items for r in spec_g] == [r.items for r in greedy]
    mtp = backend.recommend([RecRequest(u, 4, "v3", DecodeSettings("mtp", mtp_tokens=2)) for u in users])
    for r in mtp:
        assert r.error is None and len(r.items) == 4 == len(set(r.items))
        assert all(backend.catalog.is_live(i) for i in r.items)
    no_heads = backend.recommend([RecRequest("m0", 4, "v1", DecodeSettings("spec_greedy"))])[0]
    assert no_heads.error and "MTP heads" in no_heads.error and "GeneratorBundle" in no_heads.error
