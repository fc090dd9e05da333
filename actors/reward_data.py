"""Training data of the session reward model: served sessions joined with their rewards, and the user's
history **as of the served time** (point-in-time correct), from the archive or from the synthetic world.

Two paths, one join:

* **archive** (:func:`examples_from_archive`) — the ``served``, ``rewards`` and
  ``user-events`` topics of the Parquet archive (:func:`ingest.archive.read_records`);
* **simulator** (:func:`examples_from_world`) — served sessions from some policy
  (:func:`exploration_served` samples a logging policy), each answered by
  :meth:`ingest.synthetic.SyntheticWorld.respond` and scored into a ``Reward``
  record by the reward joiner's own code (:func:`actors.reward_spec.session_components`,
  :func:`~actors.reward_spec.scalar_reward`), so the components are exactly what
  the joiner would emit.

Both go through :func:`join_rewards` (served ⋈ rewards by ``request_id``) and
:func:`build_examples`. Rewards with no served record, a duplicate
``request_id``, or (when the caller names the known ones) an unknown model
version or arm are counted in the returned counters and left out, never crashed on.

Per-slot targets (:func:`models.reward_model.data.slot_targets_from_events`): the
user events that answer a session (same ``request_id`` and user) are joined to the
served record by their ``position`` — which served item was clicked, liked,
skipped, how much of it was watched. They are the session's own outcome, not its
history, so the point-in-time rule does not apply to them. A session's slot
labels are left unknown (NaN, counted) when an answering event has no position or
a position outside the session (``slot_no_position``), names another item than
the one served there (``slot_item_mismatch``), or when the events found are not
the ones the reward counted (``slot_events_mismatch``: their number differs from
the reward's ``events`` component — late or missing events).

Invariant (point-in-time): an example's history holds only the user's events with
``ts < served.ts`` — nothing at or after the moment the session was served
(:class:`PointInTimeHistory`).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping, Sequence

import msgspec
import numpy as np

from actors.reward_spec import RewardSpec, item_length_ms, scalar_reward, session_components
from ingest.contract import ENGAGED_TYPES, EVENT_TYPES, REWARDS, SERVED, USER_EVENTS, Reward, Served, UserEvent
from models.evaluation.ranker import Histories
from models.reward_model.data import (EMPTY, HEADS, UNKNOWN_ITEM, RewardExamples, slot_targets_from_events,
                                     targets_from_components)

#: Event types kept in a reward-model history by default: engagements and explicit negatives (impressions
#: are left out: they say what was shown, not what the user did, and would crowd the window).
DEFAULT_HISTORY_TYPES = frozenset(ENGAGED_TYPES | {"skip", "dislike"})
_TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}

ItemIndex = Callable[[str], "int | None"]


def as_item_index(item_index) -> ItemIndex:
    """A ``item_id -> catalog index or None`` function from a mapping, a Catalog (``index_of``) or a function."""
    if callable(getattr(item_index, "index_of", None)):
        return item_index.index_of
    if isinstance(item_index, Mapping):
        return item_index.get
    if callable(item_index):
        return item_index
    raise ValueError(f"item_index must be a mapping item_id -> index, a Catalog or a function, "
                     f"got {type(item_index).__name__}")


class PointInTimeHistory:
    """Every user's events (catalog index, type, ts), sorted by time, answering "the history as of ts".

    Events of unknown items or of types outside ``types`` are left out (counted in ``skipped``).
    """

    def __init__(self, events: Iterable[UserEvent], item_index, types: Collection[str] = DEFAULT_HISTORY_TYPES):
        index = as_item_index(item_index)
        keep = frozenset(types)
        per: dict[str, list[tuple[int, int, int]]] = {}
        self.skipped = Counter()
        for e in events:
            if e.type not in keep:
                self.skipped["type"] += 1
                continue
            i = index(e.item_id)
            if i is None or i < 0:
                self.skipped["unknown_item"] += 1
                continue
            per.setdefault(e.user_id, []).append((int(e.ts), _TYPE_INDEX[e.type], int(i)))
        self._users: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for u, rows in per.items():
            rows.sort()
            a = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
            self._users[u] = (a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy())

    def as_of(self, user_id: str, ts: int, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(items, types, ts)`` of the user's events strictly before ``ts`` (the last ``max_len``)."""
        got = self._users.get(user_id)
        if got is None:
            z = np.zeros(0, np.int64)
            return z, z, z
        t, ty, it = got
        end = bisect.bisect_left(t, int(ts))   # events at ts or later are the future
        start = 0 if max_len is None else max(0, end - max_len)
        return it[start:end], ty[start:end], t[start:end]

    def histories(self, user_ids: Sequence[str], ts: Sequence[int], max_len: int | None = None) -> Histories:
        rows = [self.as_of(u, t, max_len) for u, t in zip(user_ids, ts)]
        return Histories([r[0] for r in rows], ts=[r[2] for r in rows], types=[r[1] for r in rows])


def join_rewards(served: Iterable[Served], rewards: Iterable[Reward], known_versions: Collection[str] | None = None,
                 known_arms: Collection[str] | None = None) -> tuple[list[tuple[Served, Reward]], Counter]:
    """Pairs ``(served, reward)`` by ``request_id``, in served-time order, and counters of what was left out.

    Counters: ``rewards``, ``joined``, ``reward_without_served``, ``duplicate_reward``, ``duplicate_served``,
    ``unknown_model_version`` / ``unknown_arm`` (only checked when ``known_versions`` / ``known_arms`` are given).
    """
    by_id: dict[str, Served] = {}
    c: Counter = Counter()
    for s in served:
        if s.request_id in by_id:
            c["duplicate_served"] += 1
            continue
        by_id[s.request_id] = s
    seen: set[str] = set()
    out = []
    versions = None if known_versions is None else set(known_versions)
    arms = None if known_arms is None else set(known_arms)
    for r in rewards:
        c["rewards"] += 1
        if r.request_id in seen:
            c["duplicate_reward"] += 1
            continue
        seen.add(r.request_id)
        s = by_id.get(r.request_id)
        if s is None:
            c["reward_without_served"] += 1
            continue
        if versions is not None and (r.model_version not in versions or s.model_version not in versions):
            c["unknown_model_version"] += 1
            continue
        if arms is not None and r.arm not in arms:
            c["unknown_arm"] += 1
            continue
        out.append((s, r))
    c["joined"] = len(out)
    out.sort(key=lambda p: (p[0].ts, p[0].request_id))
    return out, c


def item_lengths_from_events(events: Iterable[UserEvent], item_index, n_items: int) -> np.ndarray:
    """Each catalog item's length in ms ``[n_items]`` (float64; 0 = unknown) as players report it in the
    events' context (:func:`actors.reward_spec.item_length_ms`; the latest report wins): what the reward
    model's watch-minutes value needs (:meth:`models.reward_model.model.RewardModel.set_item_lengths`)."""
    index = as_item_index(item_index)
    out = np.zeros(int(n_items), dtype=np.float64)
    last = np.full(int(n_items), np.iinfo(np.int64).min, dtype=np.int64)
    for e in events:
        if not e.context:
            continue
        length = item_length_ms(e)
        if length is None:
            continue
        i = index(e.item_id)
        if i is None or not 0 <= i < n_items or int(e.ts) < last[i]:
            continue
        out[i], last[i] = float(length), int(e.ts)
    return out


def events_by_request(events: Iterable[UserEvent]) -> dict[str, list[UserEvent]]:
    """The events that answer a served session, by ``request_id`` (events without one are left out)."""
    out: dict[str, list[UserEvent]] = {}
    for e in events:
        if e.request_id:
            out.setdefault(e.request_id, []).append(e)
    return out


def session_slot_targets(served: Served, reward: Reward, events: Sequence[UserEvent] | None, max_session: int,
                         counters: Counter) -> np.ndarray | None:
    """Per-slot targets ``[max_session, 4]`` of one joined session from its answering ``events`` (see the
    module docstring), or None (unknown, the reason counted)."""
    events = [e for e in (events or ()) if e.user_id == served.user_id]
    n_ev = reward.components.get("events")
    if n_ev is not None and int(n_ev) != len(events):
        counters["slot_events_mismatch"] += 1
        return None
    for e in events:
        if e.position is not None and 0 <= e.position < len(served.items) and e.item_id != served.items[e.position]:
            counters["slot_item_mismatch"] += 1
            return None
    st = slot_targets_from_events(len(served.items), events, max_session, item_length_ms)
    if st is None:
        counters["slot_no_position"] += 1
    return st


def build_examples(joined: Sequence[tuple[Served, Reward]], history: PointInTimeHistory, item_index,
                   max_session: int, max_history: int = 50,
                   true_value: Callable[[Served], float] | None = None,
                   session_events: Mapping[str, Sequence[UserEvent]] | None = None
                   ) -> tuple[RewardExamples, Counter]:
    """:class:`RewardExamples` of joined pairs: sessions cut to ``max_session`` slots, histories as of ``served.ts``.

    Items the catalog does not know become :data:`UNKNOWN_ITEM` slots (counted as ``unknown_items``);
    sessions with no items are left out (``empty_sessions``). ``session_events`` (request id -> the events
    answering it, :func:`events_by_request`), when given, adds per-slot targets (``slot_targets``;
    ``slot_labelled`` counts the sessions that have them).
    """
    if max_session < 1:
        raise ValueError(f"max_session={max_session} must be >= 1 (slots per session, e.g. the served length)")
    index = as_item_index(item_index)
    c: Counter = Counter()
    keep = []
    for s, r in joined:
        if not s.items:
            c["empty_sessions"] += 1
            continue
        if len(s.items) > max_session:
            c["cut_sessions"] += 1
        keep.append((s, r))
    sessions = np.full((len(keep), max_session), EMPTY, dtype=np.int64)
    targets = np.zeros((len(keep), 4), dtype=np.float32)
    slots = None if session_events is None else np.full((len(keep), max_session, len(HEADS)), np.nan, np.float32)
    for j, (s, r) in enumerate(keep):
        for k, item in enumerate(s.items[:max_session]):
            i = index(item)
            if i is None or i < 0:
                c["unknown_items"] += 1
                i = UNKNOWN_ITEM
            sessions[j, k] = i
        targets[j] = targets_from_components(r.components)
        if slots is not None:
            st = session_slot_targets(s, r, session_events.get(s.request_id), max_session, c)
            if st is not None:
                slots[j] = st
                c["slot_labelled"] += 1
    users = [s.user_id for s, _ in keep]
    ts = [int(s.ts) for s, _ in keep]
    hist = history.histories(users, ts, max_history)
    tv = None if true_value is None else np.array([true_value(s) for s, _ in keep], dtype=np.float64)
    ex = RewardExamples(hist, sessions, targets, np.asarray(ts, np.int64), users, [s.request_id for s, _ in keep], tv,
                        slots)
    c["examples"] = len(ex)
    return ex, c


def examples_from_archive(root: str | Path, item_index, max_session: int, max_history: int = 50,
                          known_versions: Collection[str] | None = None, known_arms: Collection[str] | None = None,
                          history_types: Collection[str] = DEFAULT_HISTORY_TYPES) -> tuple[RewardExamples, Counter]:
    """Examples from the archive's ``served``, ``rewards`` and ``user-events`` topics (complete flushes only)."""
    from ingest.archive import read_records

    return examples_from_records(read_records(root, SERVED), read_records(root, REWARDS),
                                 read_records(root, USER_EVENTS), item_index, max_session, max_history,
                                 known_versions, known_arms, history_types)


def examples_from_records(served, rewards, user_events, item_index, max_session: int, max_history: int = 50,
                          known_versions: Collection[str] | None = None, known_arms: Collection[str] | None = None,
                          history_types: Collection[str] = DEFAULT_HISTORY_TYPES) -> tuple[RewardExamples, Counter]:
    """Point-in-time examples of ``served`` sessions joined with their ``rewards``, histories from
    ``user_events`` (the archive's records, or a window of them), per-slot targets from the events that
    carry a session's request id."""
    joined, c = join_rewards(served, rewards, known_versions, known_arms)
    user_events = list(user_events)
    history = PointInTimeHistory(user_events, item_index, history_types)
    ex, c2 = build_examples(joined, history, item_index, max_session, max_history,
                            session_events=events_by_request(user_events))
    return ex, c + c2


# ---- the simulator path ----------------------------------------------------------------------

def exploration_served(world, n_sessions: int, session_len: int, seed: int = 0, start_ts: int | None = None,
                       end_ts: int | None = None, taste_pool: int = 40, model_version: str = "sim-explore",
                       request_prefix: str = "rm") -> list[Served]:
    """Served sessions of a logging policy that explores: per session a share ``q ~ U(0, 1)`` of the slots
    comes from the user's ``taste_pool`` best available items (the world's truth), the rest from item
    popularity — so sessions range from poor to good and the reward model sees both. Users are drawn in
    proportion to their activity, times uniformly over ``[start_ts, end_ts)`` (default: the world's span)."""
    if n_sessions < 1 or session_len < 1:
        raise ValueError(f"n_sessions={n_sessions} and session_len={session_len} must be >= 1")
    cfg = world.cfg
    t0 = cfg.start_ts_ms if start_ts is None else int(start_ts)
    t1 = cfg.start_ts_ms + cfg.duration_ms if end_ts is None else int(end_ts)
    if t1 <= t0:
        raise ValueError(f"end_ts={t1} must be after start_ts={t0}")
    rng = np.random.default_rng([seed, 7])
    act = world.user_activity / world.user_activity.sum()
    users = rng.choice(len(world.user_ids), size=n_sessions, p=act)
    times = np.sort(rng.integers(t0, t1, size=n_sessions))
    pop = np.asarray(world.item_popularity, dtype=np.float64)
    out = []
    for j, (u, ts) in enumerate(zip(users.tolist(), times.tolist())):
        uid = world.user_ids[u]
        alive = np.flatnonzero(world.item_arrival_ms <= ts)
        best = [world.item_index(i) for i in world.best_items(uid, taste_pool, ts)]
        q = rng.random()
        p = pop[alive] / pop[alive].sum()
        chosen: list[int] = []
        while len(chosen) < min(session_len, len(alive)):
            pick = int(rng.choice(best)) if rng.random() < q else int(alive[rng.choice(len(alive), p=p)])
            if pick not in chosen:
                chosen.append(pick)
        items = [world.item_ids[i] for i in chosen]
        out.append(Served(request_id=f"{request_prefix}-{seed}-{j}", user_id=uid, ts=int(ts),
                          model_version=model_version, experiment="", arm="", items=items,
                          sids=[[] for _ in items], scores=[0.0] * len(items)))
    return out


def with_item_lengths(world, events: Iterable[UserEvent]) -> list[UserEvent]:
    """The events with the watched item's length in ``context["item_length_ms"]`` (as a player reports it),
    so the reward components carry a watch fraction."""
    out = []
    for e in events:
        if e.watch_ms is not None and (e.context is None or "item_length_ms" not in e.context):
            ctx = dict(e.context or {})
            ctx["item_length_ms"] = int(world.item_length_ms[world.item_index(e.item_id)])
            e = msgspec.structs.replace(e, context=ctx)
        out.append(e)
    return out


def simulate_rewards(world, served: Sequence[Served], spec: RewardSpec = RewardSpec(),
                     item_lengths: bool = True) -> tuple[list[Reward], list[UserEvent]]:
    """Each served session answered by ``world.respond`` and scored into a ``Reward`` record with the reward
    joiner's own functions; also returns the answers (they belong in later sessions' histories)."""
    rewards, answers = [], []
    for s in served:
        events = world.respond(s.user_id, list(s.items), s.request_id, int(s.ts))
        if item_lengths:
            events = with_item_lengths(world, events)
        answers.extend(events)
        comp = session_components(s, events)
        rewards.append(Reward(request_id=s.request_id, user_id=s.user_id, experiment=s.experiment, arm=s.arm,
                              model_version=s.model_version, components=comp, reward=scalar_reward(spec, comp),
                              window_closed_ts=int(s.ts), ts=int(s.ts)))
    return rewards, answers


def true_session_value(world, user_id: str, item_ids: list[str], ts: int, spec: RewardSpec = RewardSpec(),
                       draws: int = 8, salt: str = "tv") -> float:
    """The world's expected reward of a session under ``spec``: ``world.expected_value`` when the world has
    it, else the mean scalar reward of ``draws`` answers to the same session under different request ids."""
    ev = getattr(world, "expected_value", None)
    if callable(ev):
        import inspect

        kw = {"reward": spec} if "reward" in inspect.signature(ev).parameters else {}
        return float(ev(user_id, list(item_ids), int(ts), **kw))
    served = Served(request_id="x", user_id=user_id, ts=int(ts), model_version="v", experiment="", arm="",
                    items=list(item_ids), sids=[[] for _ in item_ids], scores=[0.0] * len(item_ids))
    total = 0.0
    for d in range(draws):
        events = world.respond(user_id, list(item_ids), f"{salt}-{user_id}-{ts}-{d}", int(ts))
        total += scalar_reward(spec, session_components(served, events))
    return total / draws


@dataclass
class WorldExamples:
    """The simulator's training set and how it was made."""

    examples: RewardExamples
    counters: Counter
    rewards: list[Reward]
    item_length_ms: np.ndarray | None = None   # [n_world_items] as the answers' events report them, 0 = unknown


def examples_from_world(world, served: Sequence[Served], spec: RewardSpec = RewardSpec(), max_session: int | None = None,
                        max_history: int = 50, history_types: Collection[str] = DEFAULT_HISTORY_TYPES,
                        include_answers: bool = True, item_lengths: bool = True,
                        true_value_draws: int = 0) -> WorldExamples:
    """Reward-model examples of ``served`` sessions in ``world`` (see module docstring).

    Histories come from the world's log plus (``include_answers``) the answers to the served sessions
    themselves, each as of its session's served time. ``true_value_draws`` > 0 also records each session's
    true value (:func:`true_session_value`) for rank-correlation checks.
    """
    rewards, answers = simulate_rewards(world, served, spec, item_lengths)
    events = list(world.user_events) + (answers if include_answers else [])
    history = PointInTimeHistory(events, _world_index(world), history_types)
    joined, c = join_rewards(served, rewards)
    k = max_session or max((len(s.items) for s in served), default=1)
    tv = None
    if true_value_draws > 0:
        tv = lambda s: true_session_value(world, s.user_id, list(s.items), s.ts, spec, true_value_draws)  # noqa: E731
    ex, c2 = build_examples(joined, history, _world_index(world), k, max_history, tv,
                            session_events=events_by_request(answers))
    lengths = item_lengths_from_events(events, _world_index(world), len(world.item_ids))
    return WorldExamples(ex, c + c2, rewards, lengths)


def _world_index(world) -> ItemIndex:
    """``world.item_index`` as an :data:`ItemIndex` (None for an id the world does not know)."""
    def f(item_id: str):
        try:
            return world.item_index(item_id)
        except KeyError:
            return None
    return f
