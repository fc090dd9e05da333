"""Baseline serving policies for the closed loop: random, popularity and the oracle (pure).

Every model's closed-loop reward is read on the scale these give on the same
users at the same time (issue 16): **random** (``k`` distinct items drawn
uniformly from those that exist at ``ts``), **popularity** (the ``k`` items
with the most engaged events up to ``ts``, the same session for everybody —
what :class:`models.baselines.popularity.PopularityRanker` serves) and the
**oracle** (each user's ``k`` true best items at ``ts``, from the world's
ground truth ``best_items``). **oracle_diverse** is the oracle made aware of
the user model's fatigue: greedily, the item with the highest
``affinity · fatigue ** (items of its topic already chosen)`` — a session
rather than a list of best items, and a tighter upper reference.

Sessions are lists of item ids, one per user, in serving order (best first),
as :func:`models.evaluation.closed_loop.closed_loop_rewards` takes them.
Invariant: pure — the world is passed in and only read (its ``item_ids``,
``item_arrival_ms``, ``item_primary``, ``best_items``, ``affinity``,
``user_events`` and ``response``); the randomness comes from ``seed``.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np

#: The baseline policies, in the order reports list them.
POLICIES = ("random", "popularity", "oracle", "oracle_diverse")
#: Event types counted as engagement by the popularity policy (ingest.contract.ENGAGED_TYPES).
_ENGAGED = frozenset({"click", "like", "share", "comment", "follow", "watch", "purchase", "rating"})


def random_sessions(rng: np.random.Generator, n_users: int, available: Sequence[str], k: int) -> list[list[str]]:
    """``n_users`` sessions of ``k`` distinct items drawn uniformly from ``available`` (fewer if it is short)."""
    pool = np.asarray(list(available), dtype=object)
    n = min(k, pool.size)
    return [list(pool[rng.choice(pool.size, size=n, replace=False)]) for _ in range(n_users)]


def engaged_counts(events: Iterable, ts: int | None = None) -> Counter:
    """Engaged events per item id among ``events`` (anything with ``type``, ``item_id``, ``ts``) up to ``ts``."""
    return Counter(e.item_id for e in events if e.type in _ENGAGED and (ts is None or e.ts <= ts))


def popularity_sessions(n_users: int, counts: Counter, available: Sequence[str], k: int) -> list[list[str]]:
    """The ``k`` ``available`` items with the largest ``counts`` (ties by id order), for every user."""
    avail = list(available)
    order = sorted(range(len(avail)), key=lambda j: (-counts.get(avail[j], 0), j))
    top = [avail[j] for j in order[:k]]
    return [list(top) for _ in range(n_users)]


def oracle_sessions(world, users: Sequence[str], k: int, ts: int) -> list[list[str]]:
    """Each user's ``k`` true best items available at ``ts`` (``world.best_items``)."""
    return [world.best_items(u, k, ts) for u in users]


def greedy_fatigue_session(affinity: np.ndarray, topic: np.ndarray, fatigue: float, k: int) -> np.ndarray:
    """Indices of ``k`` items chosen greedily by ``affinity · fatigue ** (chosen items of the same topic)``.

    ``affinity`` ``[I]`` (−inf or < 0 for an item that must not be chosen),
    ``topic`` ``[I]`` int. Returns ``[min(k, I)]`` distinct indices.
    """
    a = np.asarray(affinity, dtype=np.float64)  # [I]
    topic = np.asarray(topic)  # [I]
    score = np.where(a >= 0, a, -np.inf)
    out = []
    for _ in range(min(k, a.size)):
        j = int(np.argmax(score))
        if not np.isfinite(score[j]):
            break
        out.append(j)
        score = np.where(topic == topic[j], score * fatigue, score)
        score[j] = -np.inf
    return np.asarray(out, dtype=np.int64)


def oracle_diverse_sessions(world, users: Sequence[str], k: int, ts: int) -> list[list[str]]:
    """Each user's fatigue-aware best session at ``ts`` (:func:`greedy_fatigue_session` on the true affinity)."""
    ids = list(world.item_ids)
    exists = np.asarray(world.item_arrival_ms) <= ts
    out = []
    for u in users:
        a = np.where(exists, world.affinity(u, ids, ts), -1.0)
        out.append([ids[j] for j in greedy_fatigue_session(a, world.item_primary, world.response.fatigue, k)])
    return out


def baseline_sessions(world, users: Sequence[str], k: int, ts: int, seed: int = 0,
                      counts: Counter | None = None, policies: Sequence[str] = POLICIES) -> dict[str, list[list[str]]]:
    """The sessions of each of ``policies`` (names from :data:`POLICIES`) for ``users`` at ``ts``.

    ``counts``: engaged events per item for popularity (default: the world's
    log up to ``ts``, :func:`engaged_counts`).
    """
    unknown = set(policies) - set(POLICIES)
    if unknown:
        raise ValueError(f"unknown baseline policies {sorted(unknown)}; choose from {POLICIES}")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 (items per session)")
    users = list(users)
    ids = list(world.item_ids)
    exists = np.asarray(world.item_arrival_ms) <= ts
    available = [ids[j] for j in np.flatnonzero(exists)]
    out: dict[str, list[list[str]]] = {}
    for name in policies:
        if name == "random":
            out[name] = random_sessions(np.random.default_rng(seed), len(users), available, k)
        elif name == "popularity":
            c = engaged_counts(world.user_events, ts) if counts is None else counts
            out[name] = popularity_sessions(len(users), c, available, k)
        elif name == "oracle":
            out[name] = oracle_sessions(world, users, k, ts)
        else:
            out[name] = oracle_diverse_sessions(world, users, k, ts)
    return out
