"""The synthetic world: reproducible, valid on the wire, structured, and answering served sessions."""

from __future__ import annotations

import collections
import time

import numpy as np
import pytest

from ingest.codec import decode, encode
from ingest.contract import ITEM_EVENTS, USER_EVENTS, ItemEvent
from ingest.synthetic import SyntheticWorld, WorldConfig

SMALL = WorldConfig(seed=7, n_users=300, n_items=400, n_topics=8, sessions_per_user=5, days=10)


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(SMALL)


def test_same_seed_same_world_other_seed_other_world(world):
    again = SyntheticWorld(SMALL)
    assert again.user_events == world.user_events
    assert again.catalog == world.catalog
    other = SyntheticWorld(WorldConfig(**{**SMALL.__dict__, "seed": 8}))
    assert other.user_events[:50] != world.user_events[:50]


def test_events_ordered_unique_and_valid_on_the_wire(world):
    ev = world.user_events
    assert len(ev) > 5000
    assert all(a.ts <= b.ts for a, b in zip(ev, ev[1:]))
    assert len({e.event_id for e in ev}) == len(ev)
    for e in ev[::97]:
        assert decode(USER_EVENTS, encode(e)) == e
    for e in world.catalog:
        assert decode(ITEM_EVENTS, encode(e)) == e
    kinds = collections.Counter(e.type for e in ev)
    for t in ("impression", "click", "watch", "like", "skip"):
        assert kinds[t] > 0, kinds
    assert all(e.watch_ms and e.watch_ms > 0 for e in ev if e.type == "watch")


def test_items_arrive_over_time_and_are_never_seen_before_they_exist(world):
    arrival = {e.item_id: e.ts for e in world.catalog}
    start = world.cfg.start_ts_ms
    assert 0.5 < sum(ts == start for ts in arrival.values()) / len(arrival) < 0.7
    assert max(arrival.values()) > start
    assert all(arrival[e.item_id] <= e.ts for e in world.user_events)
    stream = list(world.stream())
    assert len(stream) == len(world.user_events) + len(world.catalog)
    assert all(a.ts <= b.ts for a, b in zip(stream, stream[1:]))
    first_item = {}
    for n, e in enumerate(stream):
        if isinstance(e, ItemEvent):
            first_item[e.item_id] = n
        else:
            assert first_item[e.item_id] < n


def test_item_text_reflects_its_topic(world):
    names = world.topic_names
    for e in world.catalog[:50]:
        k = world.item_index(e.item_id)
        assert names[int(world.item_primary[k])] in e.tags
        assert names[int(world.item_primary[k])] in e.text


def test_engagement_follows_taste_and_popularity_is_skewed(world):
    ev = world.user_events
    clicks = [e for e in ev if e.type == "click"]
    skips = [e for e in ev if e.type == "skip"]
    aff = lambda es: np.mean([world.affinity(e.user_id, [e.item_id], e.ts)[0] for e in es[:2000]])
    assert aff(clicks) > aff(skips) + 0.1
    counts = np.array(sorted(collections.Counter(e.item_id for e in ev).values(), reverse=True))
    top = counts[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.3  # the top 10% of items take a large share (Zipf head)


def test_preferences_drift_and_are_distributions(world):
    p0 = world.preference("u1", world.cfg.start_ts_ms)
    p_end = world.preference("u1")
    assert p0.shape == (SMALL.n_topics,)
    assert np.isclose(p0.sum(), 1, atol=1e-5) and np.isclose(p_end.sum(), 1, atol=1e-5)
    assert not np.allclose(p0, p_end)
    assert world.item_topics("i3").shape == (SMALL.n_topics,)
    with pytest.raises(KeyError, match="unknown user"):
        world.preference("nobody")


def test_respond_is_reproducible_and_prefers_what_the_user_likes(world):
    ts = world.cfg.start_ts_ms + world.cfg.duration_ms
    rates = []
    for u in range(40):
        uid = f"u{u}"
        best = world.best_items(uid, 10, ts)
        worst = [world.item_ids[k] for k in np.argsort(
            [world.affinity(uid, [i], ts)[0] for i in world.item_ids])[:10]]
        r_best = world.respond(uid, best, f"rb{u}", ts)
        assert r_best == world.respond(uid, best, f"rb{u}", ts)
        assert all(e.request_id == f"rb{u}" and e.position is not None for e in r_best)
        r_worst = world.respond(uid, worst, f"rw{u}", ts)
        rates.append((sum(e.type == "click" for e in r_best), sum(e.type == "click" for e in r_worst)))
    best_clicks, worst_clicks = map(sum, zip(*rates))
    assert best_clicks > 2 * worst_clicks + 10
    imps = [e for e in world.respond("u1", ["i1", "i1", "nope"], "rx", ts) if e.type == "impression"]
    assert [e.position for e in imps] == [0, 1]  # unknown items are not shown; repeats get no engagement


def test_the_log_is_unchanged_by_the_response_model():
    """The log every model trains on keeps its own reaction model (issue 16 replaced only ``respond``): the
    small world's counts per event type at seed 0, as they were before the user response model."""
    w = SyntheticWorld(WorldConfig.small(0))
    assert dict(collections.Counter(e.type for e in w.user_events)) == {
        "click": 2701, "comment": 124, "follow": 67, "impression": 14651, "like": 836, "purchase": 33,
        "share": 226, "skip": 9187, "watch": 2701}


def test_default_world_is_fast_and_about_the_promised_size():
    t0 = time.perf_counter()
    w = SyntheticWorld()
    n = len(w.user_events)
    elapsed = time.perf_counter() - t0
    assert 100_000 <= n <= 200_000
    assert elapsed < 20, f"default world took {elapsed:.1f}s"


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="n_users=0"):
        WorldConfig(n_users=0)
    with pytest.raises(ValueError, match="drift=2"):
        WorldConfig(drift=2)
