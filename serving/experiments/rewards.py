"""Reward records (one per served session) derived from ``served`` + ``user-events``: the fallback joiner.

The ``rewards`` topic is meant to be written by a streaming reward joiner that
closes each session's feedback window and emits one
:class:`ingest.contract.Reward` per served session. Until it exists,
:func:`rewards_from_served_and_events_fallback` builds the same records in
memory from the exposure log and the events whose ``request_id`` names a
served session, so the report runs on today's data. Invariant: exactly one
record per served ``request_id`` (sessions without feedback get zeros), and
``reward`` is :func:`session_reward` of the session's events.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from ingest.contract import ENGAGED_TYPES, Reward, Served, UserEvent

#: Scalar reward of a session: weight per event type, plus watch minutes (capped at WATCH_CAP_MIN).
REWARD_WEIGHTS = {"click": 1.0, "like": 2.0, "share": 3.0, "comment": 2.0, "follow": 3.0,
                  "purchase": 5.0, "rating": 0.5, "skip": -0.5, "dislike": -1.0}
WATCH_CAP_MIN = 10.0

#: Event type → reward component counted (see serving.experiments.metrics.REWARD_COMPONENTS).
_COUNTED = {"click": "clicks", "like": "likes", "share": "shares", "comment": "comments", "follow": "follows",
            "purchase": "purchases", "skip": "skips", "dislike": "dislikes"}


def session_reward(events: Iterable[UserEvent]) -> float:
    """The scalar reward of a session's events (see :data:`REWARD_WEIGHTS`)."""
    r, watch = 0.0, 0.0
    for e in events:
        r += REWARD_WEIGHTS.get(e.type, 0.0)
        if e.watch_ms:
            watch += e.watch_ms
    return r + min(watch / 60_000.0, WATCH_CAP_MIN)


def session_components(n_items: int, events: list[UserEvent]) -> dict[str, float]:
    """The ``Reward.components`` of one session: counts per type, watch time, distinct engaged items."""
    comp = {k: 0.0 for k in ("impressions", "clicks", "likes", "shares", "comments", "follows", "purchases",
                             "skips", "dislikes", "watch_ms", "engaged", "events")}
    comp["impressions"] = float(n_items)
    for e in events:
        key = _COUNTED.get(e.type)
        if key is not None:
            comp[key] += 1.0
        comp["watch_ms"] += float(e.watch_ms or 0)
    comp["engaged"] = float(len({e.item_id for e in events if e.type in ENGAGED_TYPES}))
    comp["events"] = float(len(events))
    return comp


def rewards_from_served_and_events_fallback(served: Iterable[Served], events: Iterable[UserEvent],
                                            window_closed_ts: int | None = None) -> list[Reward]:
    """One :class:`Reward` per served session, joined here in memory (fallback for the reward joiner).

    ``window_closed_ts`` defaults to the latest timestamp seen (served or
    event): the window of every session is taken as closed at that moment.
    """
    sessions: dict[str, Served] = {}
    for s in served:
        sessions[s.request_id] = s
    by_req: dict[str, list[UserEvent]] = defaultdict(list)
    last = max((s.ts for s in sessions.values()), default=0)
    for e in events:
        if e.request_id is not None and e.request_id in sessions:
            by_req[e.request_id].append(e)
            last = max(last, e.ts)
    closed = last if window_closed_ts is None else int(window_closed_ts)
    out = []
    for rid, s in sessions.items():
        evs = by_req.get(rid, [])
        out.append(Reward(request_id=rid, user_id=s.user_id, experiment=s.experiment, arm=s.arm,
                          model_version=s.model_version,
                          components=session_components(max(1, len(s.items)), evs),
                          reward=float(session_reward(evs)), window_closed_ts=max(closed, s.ts), ts=s.ts))
    return out
