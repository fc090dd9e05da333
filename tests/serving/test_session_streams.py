"""SessionStreams: continuous batching over the real backend (real broker, live catalog, Kafka histories).

The child-process loop that drives it is tested in test_decode_process.py; here the
stream itself: answers equal the backend's static ones, requests join between items,
a catalog change between items is picked up, a reloaded model version finishes the old
version's rows first, a failed step gives every row back, and an empty catalog is an error.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.decoding.settings import DecodeSettings
from serving.requests import RecRequest
from serving.recommender import build_backend
from serving.session_streams import SessionStreams
from tests.serving.test_decode_process import recommender_cfg


@pytest.fixture(scope="module")
def backend(broker):
    be = build_backend(recommender_cfg(broker))
    yield be
    for f in be.feeds:
        f.stop()


def _req(u: int, k: int = 3, mode: str = "greedy", exclude_seen: bool = True) -> RecRequest:
    return RecRequest(f"u{u}", k, "v1", DecodeSettings(mode, beam_width=2), exclude_seen)


def _run(streams, joins: dict) -> dict:
    """Admit ``joins[step]`` (lists of (tag, request)) before each step until every request is answered."""
    want = sum(len(v) for v in joins.values())
    got, step = {}, 0
    while len(got) < want:
        new = joins.get(step, [])
        got.update(streams.admit([r for _, r in new], [t for t, _ in new]))
        got.update(streams.step())
        step += 1
        assert step < 100
    return got


def test_staggered_requests_get_the_static_answers(backend):
    reqs = {u: _req(u, k=2 + u % 4, exclude_seen=bool(u % 2)) for u in range(10)}
    want = {u: (r.items, r.sids) for u, r in zip(reqs, backend.recommend(list(reqs.values())))}
    streams = SessionStreams(backend)
    assert all(streams.accepts(r) for r in reqs.values())
    assert not streams.accepts(_req(0, mode="beam"))
    assert not streams.accepts(RecRequest("u1", 3, "v9", DecodeSettings("greedy")))
    got = _run(streams, {0: [(u, reqs[u]) for u in (0, 1, 2)], 1: [(3, reqs[3])],
                         3: [(u, reqs[u]) for u in (4, 5, 6, 7)], 4: [(8, reqs[8]), (9, reqs[9])]})
    assert {u: (r.items, r.sids) for u, r in got.items()} == want
    assert all(r.stats["continuous"] and r.stats["batch_size"] >= 2 for r in got.values())
    st = streams.status()
    assert st["continuous_rows"] == 0 and st["continuous_steps"] > 0 and st["continuous_mean_rows"] > 1


def test_unknown_decode_keys_are_an_error_not_dropped():
    """Decode settings are typed from the serving boundary on: a typo is answered, not ignored."""
    with pytest.raises(ValueError, match="beamwidth.*beam_width"):
        DecodeSettings.from_dict({"mode": "beam", "beamwidth": 2})
    with pytest.raises(TypeError):
        DecodeSettings("beam", beamwidth=2)


def test_catalog_changes_between_items_reach_running_rows(broker):
    """Between two items of a running session, retire every item but the one it already has and add four
    new ones: its remaining four items must be exactly the new ones (the trie and the item count changed)."""
    be = build_backend(recommender_cfg(broker))
    try:
        streams = SessionStreams(be)
        cat = be.catalog
        streams.admit([_req(1, k=5)], ["row"])
        assert streams.step() == []
        first = streams.streams["v1"].rows.items[0][0]
        with cat.lock:   # what the feeds do: write under the catalog lock
            cat.retire([i for i in cat.item_ids(range(cat.num_indexed)) if i != cat.item_id(first)])
            res = cat.upsert([f"fresh{i}" for i in range(4)], np.array([[7, 7]] * 4))
        assert len(res.added) == 4 and not res.rejected
        got = {}
        while not got:
            got = dict(streams.step())
        assert got["row"].items[0] == cat.item_id(first)
        assert sorted(got["row"].items[1:]) == sorted(res.added)
    finally:
        for f in be.feeds:
            f.stop()


def test_a_failed_step_gives_every_row_back(backend, monkeypatch):
    streams = SessionStreams(backend)
    streams.admit([_req(u) for u in range(3)], ["a", "b", "c"])
    stream = streams.streams["v1"]
    monkeypatch.setattr(stream, "step", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        streams.step()
    assert sorted(streams.abandon()) == ["a", "b", "c"] and len(streams) == 0


def test_a_reloaded_version_finishes_the_old_rows_first(backend):
    streams = SessionStreams(backend)
    streams.admit([_req(1, k=5)], ["old"])
    streams.step()
    old_model = backend.models["v1"]
    backend.models["v1"] = type(old_model)(old_model.cfg).eval()   # what add_model does on a reload
    try:
        answered = dict(streams.admit([_req(2)], ["new"]))
        assert len(answered["old"].items) == 5 and answered["old"].error is None
        assert streams.streams["v1"].model is backend.models["v1"] and len(streams) == 1
    finally:
        backend.models["v1"] = old_model


def test_an_empty_catalog_is_an_error_not_a_row(broker):
    from dataclasses import replace

    be = build_backend(replace(recommender_cfg(broker), seed_catalog=None))
    try:
        out = SessionStreams(be).admit([_req(1)], ["x"])
        assert out[0][0] == "x" and "catalog is empty" in out[0][1].error
    finally:
        for f in be.feeds:
            f.stop()
