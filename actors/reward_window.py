"""The reward joiner's engine: served sessions + their events → one reward per session (pure, no I/O).

:class:`RewardWindows` keeps every served session open for ``window_ms`` of
event time, attaches the ``user-events`` that name its ``request_id``, and
closes it when the **watermark** — the minimum over the joiner's input
partitions (``served`` and ``user-events``) of the newest event time seen,
minus ``lateness_ms`` — passes ``served.ts + window_ms``. Closing yields one
:class:`~ingest.contract.Reward` (components and scalar reward by
:mod:`actors.reward_spec`); a session without feedback yields one too.

Rules (all by event time, so a replay gives the same answer):

* an event counts for its session iff ``t0 − lateness ≤ ts ≤ t0 + window``
  and its ``event_id`` is new to the session; others are counted, not used:
  ``late[outside_window]``, ``late[window_closed]`` (its session already
  closed), ``duplicates``;
* an event whose session is not known yet waits (the two topics are read
  independently, so it may simply be ahead of its ``served`` record); once the
  watermark passes ``ts + lateness`` no in-time ``served`` record can still
  claim it, and it is counted as ``orphans``;
* a ``served`` record that arrives after the watermark passed its window end
  is closed at once (``late_served``); a repeated ``request_id`` is counted as
  ``duplicate_served`` and ignored.

Invariant: for input whose records arrive within ``lateness_ms`` of the newest
event time of their own partition, the rewards and counters depend only on
each partition's record sequence, not on how the partitions interleave — so a
joiner restarted from a checkpoint computes exactly the rewards it would have
without the crash. (Records later than that are still counted, never dropped
silently; which late reason they get may depend on the interleaving, as in any
watermark system.) :meth:`snapshot` / :meth:`from_bytes` carry the whole state.

Inputs may be contract records (``Served``, ``UserEvent``) or the joiner's wire
structs (:mod:`actors.reward_codec`): only attributes are read. The hot path
(one Python loop iteration per record, thousands per poll) keeps an open
session as ``[info, events]``: ``info`` the tuple of the served fields a reward
needs, ``events`` ``None`` or a dict ``event_id → event`` of its accepted
events (insertion order; it is also the duplicate check). Counters are added
once per call, not per record.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from typing import Iterable, Sequence

import msgspec

from actors.reward_spec import RewardSpec, components_of, reward_terms, scalar_reward
from ingest.codec_batch import WireUserEvent
from ingest.contract import Reward, Served, UserEvent

SNAPSHOT_VERSION = 2


def source_key(topic: str, partition: int) -> str:
    """The watermark source name of one input partition, e.g. ``served/3``."""
    return f"{topic}/{partition}"


#: An open session's ``info``: request_id, user_id, ts, model_version, experiment, arm, number of items.
_Info = tuple[str, str, int, str, str, str, int]


class _Snapshot(msgspec.Struct, array_like=True):
    """Version 2: ``sessions`` is the engine's own dict (``request_id → (info, events or None)``), encoded
    in one C call, no Python work per session."""

    version: int
    window_ms: int
    lateness_ms: int
    watermark: int | None
    newest: dict[str, int]
    sessions: dict[str, tuple[_Info, dict[str, WireUserEvent] | None]]
    pending: list[WireUserEvent]
    closed: dict[str, int]
    history: dict[str, list[float]]
    counters: dict[str, int]


class _SessionV1(msgspec.Struct, array_like=True):
    served: Served
    events: list[UserEvent]
    event_ids: set[str] = msgspec.field(default_factory=set)


class _SnapshotV1(msgspec.Struct, array_like=True):
    """Version 1 (whole ``Served`` records per session); still read, never written."""

    version: int
    window_ms: int
    lateness_ms: int
    watermark: int | None
    newest: dict[str, int]
    sessions: list[_SessionV1]
    pending: list[UserEvent]
    closed: dict[str, int]
    history: dict[str, list[float]]
    counters: dict[str, int]


class _Head(msgspec.Struct, array_like=True):
    version: int


_ENCODER = msgspec.msgpack.Encoder()
_DECODERS = {1: msgspec.msgpack.Decoder(_SnapshotV1), 2: msgspec.msgpack.Decoder(_Snapshot)}
_HEAD = msgspec.msgpack.Decoder(_Head)


def _info(s) -> tuple:
    """The fields of a served record a reward needs (the ``info`` of an open session)."""
    return (s.request_id, s.user_id, s.ts, s.model_version, s.experiment, s.arm, len(s.items))


class RewardWindows:
    """Open session windows of one joiner over its input partitions (``sources``: :func:`source_key` names).

    ``record``: the type of the records :meth:`advance` returns — ``Reward``
    (validated), or a struct with the same fields such as
    :class:`actors.reward_codec.WireReward` (what the joiner encodes and sends).
    """

    def __init__(self, sources: Iterable[str], window_ms: int, lateness_ms: int = 0,
                 spec: RewardSpec = RewardSpec(), record: type = Reward):
        if window_ms <= 0:
            raise ValueError(f"RewardWindows.window_ms={window_ms} must be > 0")
        if lateness_ms < 0:
            raise ValueError(f"RewardWindows.lateness_ms={lateness_ms} must be >= 0")
        self.sources = tuple(sorted(sources))
        if not self.sources:
            raise ValueError("RewardWindows needs at least one input partition (source)")
        self.window_ms, self.lateness_ms, self.spec = int(window_ms), int(lateness_ms), spec
        self.record = record
        self._terms = reward_terms(spec)
        self.newest: dict[str, int] = {}
        self.watermark: int | None = None
        self.sessions: dict[str, list] = {}                  # request_id -> [info, events or None]
        self._close_heap: list[tuple[int, str]] = []       # (t0, request_id) of open sessions
        self.pending: dict[str, dict] = {}                   # request_id -> event_id -> event
        self._pending_heap: list[tuple[int, str, str]] = []  # (ts, request_id, event_id)
        self.closed: dict[str, int] = {}                     # recently closed request_id -> t0, in close order
        self._closed_order: deque[tuple[int, str]] = deque()  # the same, (t0, request_id), oldest close first
        self.history: dict[str, list[float]] = {}            # user -> watch ms of recent sessions (oldest first)
        self.counters: Counter = Counter()

    # -- input -----------------------------------------------------------------------------

    def _seen(self, source: str, ts: int) -> None:
        if ts > self.newest.get(source, -1):
            self.newest[source] = ts

    def add_served(self, partition: int, records: Sequence, topic: str = "served") -> None:
        """Open a window per served record (records of one ``served`` partition, in offset order)."""
        if not records:
            return
        sessions, closed, push, heap = self.sessions, self.closed, heapq.heappush, self._close_heap
        pending = self.pending
        late_before = None if self.watermark is None else self.watermark - self.window_ms
        newest = dup = late = 0
        for s in records:
            ts = s.ts
            if ts > newest:
                newest = ts
            rid = s.request_id
            if rid in sessions or rid in closed:
                dup += 1
                continue
            if late_before is not None and ts < late_before:
                late += 1
            session = sessions[rid] = [(rid, s.user_id, ts, s.model_version, s.experiment, s.arm, len(s.items)),
                                       None]
            push(heap, (ts, rid))
            if pending:
                waiting = pending.pop(rid, None)
                if waiting:
                    for e in sorted(waiting.values(), key=lambda e: (e.ts, e.event_id)):
                        self._join(session, e)
        self._seen(source_key(topic, partition), newest)
        c = self.counters
        c["served"] += len(records)
        if dup:
            c["duplicate_served"] += dup
        if late:
            c["late_served"] += late

    def add_events(self, partition: int, records: Sequence, topic: str = "user-events") -> None:
        """Attach events (records of one ``user-events`` partition, in offset order) to their sessions."""
        if not records:
            return
        sessions, closed, pending = self.sessions, self.closed, self.pending
        lateness, window = self.lateness_ms, self.window_ms
        newest = no_request = joined = dups = outside = window_closed = 0
        for e in records:
            ts = e.ts
            if ts > newest:
                newest = ts
            rid = e.request_id
            if rid is None:
                no_request += 1
                continue
            session = sessions.get(rid)
            if session is not None:
                events = session[1]
                eid = e.event_id
                if events is None:
                    events = session[1] = {}
                elif eid in events:
                    dups += 1
                    continue
                t0 = session[0][2]
                if t0 - lateness <= ts <= t0 + window:
                    events[eid] = e
                    joined += 1
                else:
                    outside += 1
            elif rid in closed:
                window_closed += 1
            else:
                waiting = pending.get(rid)
                if waiting is None:
                    waiting = pending[rid] = {}
                elif e.event_id in waiting:
                    dups += 1
                    continue
                waiting[e.event_id] = e
                heapq.heappush(self._pending_heap, (ts, rid, e.event_id))
        self._seen(source_key(topic, partition), newest)
        c = self.counters
        c["events"] += len(records)
        for key, n in (("events_without_request", no_request), ("joined", joined), ("duplicates", dups),
                       ("late.outside_window", outside), ("late.window_closed", window_closed)):
            if n:
                c[key] += n

    def _join(self, session: list, e) -> None:
        events = session[1]
        if events is None:
            events = session[1] = {}
        elif e.event_id in events:
            self.counters["duplicates"] += 1
            return
        t0 = session[0][2]
        if not t0 - self.lateness_ms <= e.ts <= t0 + self.window_ms:
            self.counters["late.outside_window"] += 1
            return
        events[e.event_id] = e
        self.counters["joined"] += 1

    # -- watermark and closing ---------------------------------------------------------------

    def current_watermark(self, exclude: Iterable[str] = ()) -> int | None:
        """min over sources (but ``exclude``: idle ones) of the newest event time, minus lateness; None until
        every counted source has a record. Never moves back."""
        newest = self.newest
        if exclude:
            skip = set(exclude)
            counted = [s for s in self.sources if s not in skip]
        else:
            counted = self.sources
        if not counted or any(s not in newest for s in counted):
            return self.watermark
        wm = min(newest[s] for s in counted) - self.lateness_ms
        return wm if self.watermark is None else max(self.watermark, wm)

    def advance(self, exclude: Iterable[str] = ()) -> list:
        """Move the watermark; close every session whose window ended before it (oldest first), expire
        waiting events as orphans. Returns the closed sessions' rewards in (served ts, request_id) order."""
        wm = self.current_watermark(exclude)
        if wm is None:
            return []
        self.watermark = wm
        out: list = []
        heap, w = self._close_heap, self.window_ms
        if heap and heap[0][0] + w < wm:
            pop = heapq.heappop
            sessions, closed, remember = self.sessions, self.closed, self._closed_order.append
            spec, terms, record, history = self.spec, self._terms, self.record, self.history
            duration_aware, keep = spec.duration_aware, spec.history_sessions
            append = out.append
            horizon = wm - w
            no_feedback = 0
            while heap and heap[0][0] < horizon:
                item = pop(heap)
                t0, rid = item
                (_, user, _, model_version, experiment, arm, n_items), events = sessions.pop(rid)
                if events:
                    comp = components_of(n_items, events.values())
                else:
                    no_feedback += 1
                    comp = components_of(n_items, ())
                hist: Sequence[float] = ()
                if duration_aware:
                    past = history.get(user)
                    if past is None:
                        past = history[user] = []
                    hist = sorted(past)
                    past.append(comp["watch_ms"])
                    if len(past) > keep:
                        del past[0]
                append(record(rid, user, experiment, arm, model_version, comp,
                              scalar_reward(spec, comp, hist, terms), t0 + w, t0))
                closed[rid] = t0
                remember(item)
            c = self.counters
            c["closed"] += len(out)
            if no_feedback:
                c["closed_without_feedback"] += no_feedback
        ph = self._pending_heap
        while ph and ph[0][0] + self.lateness_ms < wm:
            _, rid, eid = heapq.heappop(ph)
            waiting = self.pending.get(rid)
            if waiting is not None and waiting.pop(eid, None) is not None:
                self.counters["orphans"] += 1
                if not waiting:
                    del self.pending[rid]
        # A closed id is remembered about one more window (to tell late from orphan): until every session
        # closed before it is forgotten too (ids close in t0 order, but for served records that came late).
        cq = self._closed_order
        if cq and cq[0][0] + 2 * w + self.lateness_ms < wm:
            closed, horizon, forget = self.closed, wm - 2 * w - self.lateness_ms, cq.popleft
            while cq and cq[0][0] < horizon:
                closed.pop(forget()[1], None)
        return out

    # -- views -----------------------------------------------------------------------------

    @property
    def open_sessions(self) -> int:
        return len(self.sessions)

    @property
    def waiting_events(self) -> int:
        return sum(len(v) for v in self.pending.values())

    def open_request_ids(self) -> set[str]:
        return set(self.sessions)

    def counter_dict(self) -> dict[str, int]:
        """Counters with their reasons split out: ``late`` is ``{reason: n}``."""
        out = {k: v for k, v in self.counters.items() if not k.startswith("late.")}
        out["late"] = {k[5:]: v for k, v in sorted(self.counters.items()) if k.startswith("late.")}
        return out

    # -- checkpoint ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes (msgpack); :meth:`from_bytes` restores it exactly."""
        snap = _Snapshot(
            version=SNAPSHOT_VERSION, window_ms=self.window_ms, lateness_ms=self.lateness_ms,
            watermark=self.watermark, newest=dict(self.newest), sessions=self.sessions,
            pending=[e for w in self.pending.values() for e in w.values()], closed=dict(self.closed),
            history={u: list(h) for u, h in self.history.items()}, counters=dict(self.counters))
        return _ENCODER.encode(snap)

    @classmethod
    def from_bytes(cls, blob: bytes, sources: Iterable[str], spec: RewardSpec = RewardSpec(),
                   record: type = Reward) -> "RewardWindows":
        version = _HEAD.decode(blob).version
        if version > SNAPSHOT_VERSION:
            raise ValueError(f"reward joiner snapshot version {version} is newer than this code "
                             f"({SNAPSHOT_VERSION}); upgrade genrec to read it")
        snap = _DECODERS[version].decode(blob)
        st = cls(sources, snap.window_ms, snap.lateness_ms, spec, record)
        st.watermark, st.newest = snap.watermark, dict(snap.newest)
        if version == 1:
            opened = [(_info(s.served), {e.event_id: e for e in s.events} or None) for s in snap.sessions]
        else:
            opened = list(snap.sessions.values())
        for info, events in opened:
            st.sessions[info[0]] = [info, events]
            st._close_heap.append((info[2], info[0]))
        heapq.heapify(st._close_heap)
        for e in snap.pending:
            st.pending.setdefault(e.request_id, {})[e.event_id] = e
            st._pending_heap.append((e.ts, e.request_id, e.event_id))
        heapq.heapify(st._pending_heap)
        st.closed = dict(snap.closed)  # in close order (msgpack keeps a map's order)
        st._closed_order = deque((t0, rid) for rid, t0 in st.closed.items())
        st.history = {u: list(h) for u, h in snap.history.items()}
        st.counters = Counter(snap.counters)
        return st
