"""How one served session's feedback becomes reward components and a scalar reward (pure, no I/O).

:class:`RewardSpec` is the reward joiner's configurable scoring rule: a weight
per event type plus capped watch minutes (the same defaults as the A/B
report's :mod:`serving.experiments.rewards`), or — ``duration_aware`` — the
OneRec-V2 duration-aware form, where the session's watch time is scored by
its percentile within the same user's own earlier sessions (a heavy watcher's
ten minutes count less than a light watcher's), so watch time is comparable
across users.

Invariant: :func:`session_components` and :func:`scalar_reward` depend only on
the served record, the session's accepted events (in any order) and the user's
watch history before this session — which is what lets a restarted joiner
recompute exactly the record a crashed one emitted.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Collection, Iterable, Sequence

from ingest.contract import ENGAGED_TYPES, EVENT_TYPES, Served, UserEvent

#: Event type → the ``Reward.components`` counter it increments.
COUNTED = {"impression": "impression_events", "click": "clicks", "like": "likes", "share": "shares",
           "comment": "comments", "follow": "follows", "purchase": "purchases", "skip": "skips",
           "dislike": "dislikes", "watch": "watches", "rating": "ratings"}

#: ``UserEvent.context`` keys that carry the watched item's length (ms), in the order they are tried.
ITEM_LENGTH_KEYS = ("item_length_ms", "duration_ms", "length_ms")

#: The components every session has, in their order (counts, watch ms, events; then impressions, engaged).
_ZERO = {k: 0.0 for k in (*COUNTED.values(), "watch_ms", "events")}

DEFAULT_WEIGHTS = {"click": 1.0, "like": 2.0, "share": 3.0, "comment": 2.0, "follow": 3.0,
                   "purchase": 5.0, "rating": 0.5, "skip": -0.5, "dislike": -1.0}


@dataclass(frozen=True)
class RewardSpec:
    """The scalar reward of a session.

    ``reward = Σ weights[type] · count(type) + watch term``. The watch term is
    ``min(watch_ms / 60000, watch_cap_min)`` (minutes, capped), or with
    ``duration_aware`` ``duration_weight · percentile``, the session's watch
    time ranked (mid-rank, in [0, 1]) among the user's last ``history_sessions``
    sessions — 0.5 for a user's first session.
    """

    weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS), hash=False)
    watch_cap_min: float = 10.0
    duration_aware: bool = False
    duration_weight: float = 5.0
    history_sessions: int = 200

    def __post_init__(self) -> None:
        if not isinstance(self.weights, dict):
            raise ValueError(f"RewardSpec.weights must be a mapping event type -> weight, got {self.weights!r}")
        unknown = set(self.weights) - set(EVENT_TYPES)
        if unknown:
            raise ValueError(f"RewardSpec.weights has unknown event type(s) {sorted(unknown)}; "
                             f"use some of {list(EVENT_TYPES)}")
        for k, v in self.weights.items():
            if not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise ValueError(f"RewardSpec.weights[{k!r}]={v!r} must be a finite number")
        if not self.watch_cap_min >= 0:
            raise ValueError(f"RewardSpec.watch_cap_min={self.watch_cap_min} must be >= 0 minutes")
        if not self.duration_weight >= 0:
            raise ValueError(f"RewardSpec.duration_weight={self.duration_weight} must be >= 0")
        if self.history_sessions < 1:
            raise ValueError(f"RewardSpec.history_sessions={self.history_sessions} must be >= 1 "
                             "(sessions of a user kept to rank watch time against)")

    @classmethod
    def of(cls, value: "RewardSpec | dict | None") -> "RewardSpec":
        """A spec from a spec, a mapping of its fields (YAML) or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            names = set(cls.__dataclass_fields__)
            unknown = set(value) - names
            if unknown:
                raise ValueError(f"reward spec has unknown field(s) {sorted(unknown)}; RewardSpec takes "
                                 f"{sorted(names)}")
            return cls(**value)
        raise ValueError(f"reward spec must be a RewardSpec or a mapping, got {type(value).__name__}")


def item_length_ms(event: UserEvent) -> int | None:
    """The length of the watched item from the event's context, or None when it is not known."""
    ctx = event.context
    if not ctx:
        return None
    for k in ITEM_LENGTH_KEYS:
        v = ctx.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return int(v)
    return None


def session_components(served: Served, events: Iterable[UserEvent]) -> dict[str, float]:
    """``Reward.components`` of a session: counts per type, watch time, watch fraction, engaged positions.

    ``impressions`` is the number of items served. ``watch_fraction`` (mean of
    ``min(1, watch_ms / length)`` over watch events whose item length is known)
    and ``watch_fraction_items`` are present only when some length is known.
    ``engaged`` counts distinct engaged positions (or items, for events
    without a position); ``engaged_first_position`` is the smallest engaged
    position (present only when one is known). The result does not depend on
    the order of ``events``: counts and watch milliseconds are sums of
    integers, and the fractions are summed exactly rounded (``math.fsum``).
    """
    return components_of(len(served.items), list(events))


def components_of(n_items: int, events: Collection) -> dict[str, float]:
    """:func:`session_components` from the number of items served and the accepted events (a sized
    collection of anything with ``UserEvent``'s attributes): the reward joiner's hot path, one pass."""
    comp = dict(_ZERO)
    comp["impressions"] = float(n_items)
    if not events:
        comp["engaged"] = 0.0
        return comp
    table = _TYPES
    watch = 0
    fractions = None
    engaged = None
    first = None
    for e in events:
        key, is_engaged = table[e.type]
        comp[key] += 1.0
        w = e.watch_ms
        if w:
            watch += w
            if e.context:
                length = item_length_ms(e)
                if length is not None:
                    if fractions is None:
                        fractions = []
                    fractions.append(min(1.0, w / length))
        if is_engaged:
            if engaged is None:
                engaged = set()
            pos = e.position
            if pos is None:
                engaged.add(e.item_id)  # a str: never equal to a position (an int)
            else:
                engaged.add(pos)
                if first is None or pos < first:
                    first = pos
    comp["watch_ms"] = float(watch)
    comp["events"] = float(len(events))
    if fractions:
        comp["watch_fraction"] = math.fsum(fractions) / len(fractions)
        comp["watch_fraction_items"] = float(len(fractions))
    comp["engaged"] = float(len(engaged)) if engaged else 0.0
    if first is not None:
        comp["engaged_first_position"] = float(first)
    return comp


#: Event type → (the component it counts in, whether it is an engagement): every contract type is here.
_TYPES = {t: (COUNTED[t], t in ENGAGED_TYPES) for t in EVENT_TYPES}


def watch_percentile(watch_ms: float, history: Sequence[float]) -> float:
    """Mid-rank percentile of ``watch_ms`` among ``history`` (sorted ascending) plus itself, in [0, 1].

    ``(#less + (#equal + 1) / 2) / (len(history) + 1)``: 0.5 with no history,
    ties share their rank.
    """
    lo = bisect.bisect_left(history, watch_ms)
    hi = bisect.bisect_right(history, watch_ms)
    return (lo + (hi - lo + 1) / 2.0) / (len(history) + 1)


def reward_terms(spec: RewardSpec) -> tuple[tuple[str, float], ...]:
    """``(component, weight)`` of the spec's weighted event types, in the (sorted) order they are summed."""
    return tuple((COUNTED[etype], float(w)) for etype, w in sorted(spec.weights.items()) if etype in COUNTED)


def scalar_reward(spec: RewardSpec, components: dict[str, float], history: Sequence[float] = (),
                  terms: tuple[tuple[str, float], ...] | None = None) -> float:
    """The session's scalar reward from its components (``history``: the user's earlier watch ms, sorted;
    ``terms``: :func:`reward_terms` of ``spec``, precomputed by a caller that scores many sessions)."""
    r = 0.0
    get = components.get
    for key, w in (reward_terms(spec) if terms is None else terms):
        r += w * get(key, 0.0)
    watch = get("watch_ms", 0.0)
    if spec.duration_aware:
        r += spec.duration_weight * watch_percentile(watch, history)
    else:
        r += min(watch / 60_000.0, spec.watch_cap_min)
    return float(r)
