"""A synthetic exposure log with feedback: served sessions and the events that answer them (for tests, benches).

:func:`session_stream` returns ``(topic, record)`` pairs in send order:
``served`` records with the ``user-events`` that carry their ``request_id``
(impressions, clicks, watches with the item length in ``context``, likes,
skips, …), some events sent twice (same ``event_id``), some orphans (a
``request_id`` nobody served), and sessions without any feedback. Send order is
event-time order with a jitter below ``lateness_ms / 2``, so every record is
within the allowed lateness of its partition — the joiner's results then do
not depend on how the topics interleave. :func:`closing_tail` adds, per
partition, one served record and one event far enough in event time to close
every earlier window (their own sessions stay open). Pure: no I/O.
"""

from __future__ import annotations

import random

from ingest.contract import SERVED, USER_EVENTS, Served, UserEvent
from ingest.partitioning import partition_for


def session_stream(n_sessions: int, n_users: int = 500, window_ms: int = 2000, lateness_ms: int = 400,
                   spacing_ms: int = 2, items_per_session: int = 5, seed: int = 0,
                   start_ts: int = 1_767_225_600_000, prefix: str = "") -> list[tuple[str, object]]:
    """Served sessions with their feedback events, in send order (see the module docstring)."""
    rng = random.Random(seed)
    timed: list[tuple[float, int, str, object]] = []
    seq = 0

    def put(topic: str, rec, ts: int) -> None:
        nonlocal seq
        timed.append((ts + rng.uniform(0, lateness_ms / 2), seq, topic, rec))
        seq += 1

    for k in range(n_sessions):
        user = f"u{rng.randrange(n_users)}"
        t0 = start_ts + k * spacing_ms
        rid = f"{prefix}r{k}"
        items = [f"i{rng.randrange(5000)}" for _ in range(items_per_session)]
        put(SERVED, Served(request_id=rid, user_id=user, ts=t0, model_version="v1", experiment="exp",
                           arm=rng.choice(("control", "treatment")), items=items,
                           sids=[[rng.randrange(16), rng.randrange(16)] for _ in items],
                           scores=[round(rng.random(), 4) for _ in items]), t0)
        if rng.random() < 0.2:  # no feedback at all
            continue
        n_ev = 0
        for pos, item in enumerate(items):
            if rng.random() < 0.5:
                continue
            base = t0 + rng.randrange(int(window_ms * 0.8))
            kinds = [("impression", 0)]
            if rng.random() < 0.4:
                kinds += [("click", 50), ("watch", 100)]
                if rng.random() < 0.3:
                    kinds.append(("like", 150))
            elif rng.random() < 0.5:
                kinds.append(("skip", 30))
            for kind, off in kinds:
                ctx = {"item_length_ms": 60_000} if kind == "watch" and rng.random() < 0.7 else None
                e = UserEvent(event_id=f"{rid}-e{n_ev}", user_id=user, item_id=item, type=kind, ts=base + off,
                              request_id=rid, position=pos, context=ctx,
                              watch_ms=rng.randrange(1000, 90_000) if kind == "watch" else None)
                n_ev += 1
                put(USER_EVENTS, e, e.ts)
                if rng.random() < 0.03:  # delivered twice
                    put(USER_EVENTS, e, e.ts)
        if rng.random() < 0.02:  # an event naming a session nobody served
            put(USER_EVENTS, UserEvent(event_id=f"{rid}-ghost", user_id=user, item_id=items[0], type="click",
                                       ts=t0 + 10, request_id=f"{rid}-ghost"), t0 + 10)
    timed.sort(key=lambda x: (x[0], x[1]))
    return [(topic, rec) for _, _, topic, rec in timed]


def partition_users(num_partitions: int, prefix: str = "tail") -> list[str]:
    """One user id per partition (``[p]`` is keyed to partition ``p``)."""
    found: dict[int, str] = {}
    k = 0
    while len(found) < num_partitions:
        u = f"{prefix}{k}"
        found.setdefault(partition_for(u, num_partitions), u)
        k += 1
    return [found[p] for p in range(num_partitions)]


def closing_tail(num_partitions: int, ts: int, prefix: str = "") -> list[tuple[str, object]]:
    """Per partition one served record and one event at ``ts``: every window that ends well before closes."""
    out: list[tuple[str, object]] = []
    for p, user in enumerate(partition_users(num_partitions)):
        out.append((SERVED, Served(request_id=f"{prefix}tail{p}", user_id=user, ts=ts, model_version="v1",
                                   experiment="exp", arm="control", items=[], sids=[], scores=[])))
        out.append((USER_EVENTS, UserEvent(event_id=f"{prefix}tail{p}-e", user_id=user, item_id="i0",
                                           type="impression", ts=ts)))
    return out
