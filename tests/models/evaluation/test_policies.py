"""Baseline policies of the closed loop: random, popularity, oracle and the fatigue-aware oracle."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from ingest.synthetic import SyntheticWorld, WorldConfig
from models.evaluation.policies import (POLICIES, baseline_sessions, engaged_counts, greedy_fatigue_session,
                                        popularity_sessions, random_sessions)


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(WorldConfig(seed=1, n_users=60, n_items=150, n_topics=6, sessions_per_user=3, days=5))


def test_random_sessions_are_distinct_available_items():
    pool = [f"i{j}" for j in range(10)]
    s = random_sessions(np.random.default_rng(0), 50, pool, 4)
    assert len(s) == 50 and all(len(x) == 4 == len(set(x)) and set(x) <= set(pool) for x in s)
    assert len({tuple(x) for x in s}) > 40
    assert random_sessions(np.random.default_rng(0), 50, pool, 4) == s          # seeded
    assert all(len(x) == 3 for x in random_sessions(np.random.default_rng(0), 2, pool[:3], 5))


def test_popularity_serves_the_most_engaged_items_to_everybody():
    counts = collections.Counter({"b": 5, "c": 9, "a": 5, "z": 100})
    s = popularity_sessions(3, counts, ["a", "b", "c", "d"], 3)   # z is not available
    assert s == [["c", "a", "b"]] * 3


def test_baseline_sessions_on_a_world(world):
    ts = world.cfg.start_ts_ms + world.cfg.duration_ms // 2
    users = world.user_ids[:20]
    s = baseline_sessions(world, users, 5, ts, seed=3)
    assert set(s) == set(POLICIES)
    exists = {world.item_ids[j] for j in np.flatnonzero(world.item_arrival_ms <= ts)}
    for name, sess in s.items():
        assert len(sess) == 20 and all(len(x) == 5 == len(set(x)) and set(x) <= exists for x in sess), name
    assert s["oracle"] == [world.best_items(u, 5, ts) for u in users]
    counts = engaged_counts(world.user_events, ts)
    assert s["popularity"][0][0] == max(sorted(exists, key=world.item_index), key=lambda i: counts.get(i, 0))
    assert all(x == s["popularity"][0] for x in s["popularity"])
    # the oracle's items are each user's best; the fatigue-aware one trades some affinity for variety
    aff = lambda u, x: world.affinity(u, x, ts).mean()  # noqa: E731
    assert all(aff(u, o) >= aff(u, d) - 1e-6 for u, o, d in zip(users, s["oracle"], s["oracle_diverse"]))
    topics = lambda x: len({int(world.item_primary[world.item_index(i)]) for i in x})  # noqa: E731
    assert np.mean([topics(x) for x in s["oracle_diverse"]]) > np.mean([topics(x) for x in s["oracle"]])
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_sessions(world, users, 5, ts, policies=("best",))


def test_greedy_fatigue_session_spreads_over_topics_when_fatigue_bites():
    aff = np.array([1.0, 0.95, 0.9, 0.7, 0.1, -1.0])
    topic = np.array([0, 0, 0, 1, 2, 1])
    assert greedy_fatigue_session(aff, topic, 1.0, 3).tolist() == [0, 1, 2]      # no fatigue: plain top items
    assert greedy_fatigue_session(aff, topic, 0.5, 3).tolist() == [0, 3, 1]      # 0.95·0.5 < 0.7
    assert greedy_fatigue_session(aff, topic, 0.5, 10).tolist() == [0, 3, 1, 2, 4]  # −1: never chosen
