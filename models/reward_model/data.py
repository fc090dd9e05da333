"""Training examples of the session reward model and their per-session targets (pure numpy).

One example = one served session: the user's history as of the served time (a
:class:`~models.evaluation.ranker.Histories` row), the session's item indices
(``[K]``, :data:`EMPTY` pads, :data:`UNKNOWN_ITEM` marks a shown item the catalog
does not know), and the targets of the four heads taken from the joined reward's
``components`` (:func:`actors.reward_spec.session_components`):

* ``click`` — clicks per served item, ``min(1, clicks / impressions)``;
* ``like`` — likes per served item;
* ``watch`` — the session's mean watch fraction (``watch_fraction``), NaN where no
  watched item's length was known (the head is trained only where it is known);
* ``skip`` — skips and explicit dislikes per served item.

Rates rather than "any click" labels, because the session value the aligner ranks
by is an expectation over the session's slots (OneRec trains its towers on view /
like / follow *rates* of a session with BCE).

Optional **per-slot targets** ``[M, K, 4]`` (``slot_targets``, :func:`slot_targets_from_events`):
which served position was clicked, liked, skipped / disliked (0 or 1 per served
slot — an impression the user never reached is still a 0 for click: the model's
slot-position embedding absorbs examination), and the watch fraction of each
clicked slot (NaN elsewhere). They say *which item* of a session the user
engaged with — item-level supervision, what ordering one user's near-identical
candidates needs. NaN = unknown (padding slots, or a session whose events did
not carry their served position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from models.evaluation.ranker import Histories

#: The heads, in the order of every ``[..., 4]`` array and tensor of this package.
HEADS: tuple[str, ...] = ("click", "like", "watch", "skip")
#: An empty session slot (padding).
EMPTY = -1
#: A slot that showed an item the catalog does not know (it gets the model's "unknown item" vector).
UNKNOWN_ITEM = -2


def targets_from_components(components: Mapping[str, float]) -> np.ndarray:
    """Per-session targets ``[4]`` (``HEADS`` order, float32, NaN = unknown) of a reward's components."""
    out = np.full(len(HEADS), np.nan, dtype=np.float32)
    n = float(components.get("impressions", 0.0))
    if n > 0:
        out[0] = min(1.0, float(components.get("clicks", 0.0)) / n)
        out[1] = min(1.0, float(components.get("likes", 0.0)) / n)
        out[3] = min(1.0, (float(components.get("skips", 0.0)) + float(components.get("dislikes", 0.0))) / n)
    wf = components.get("watch_fraction")
    if wf is not None and np.isfinite(wf):
        out[2] = float(np.clip(wf, 0.0, 1.0))
    return out


def slot_targets_from_events(n_items: int, events: Sequence, max_session: int,
                             item_length: "Callable[[object], int | None] | None" = None) -> np.ndarray | None:
    """Per-slot targets ``[max_session, 4]`` (``HEADS`` order, float32, NaN = unknown) of one session served
    with ``n_items`` items, from its answering events (anything with ``UserEvent``'s ``type``, ``position``,
    ``watch_ms``); None when some event has no position, or one outside the served slots (the labels of that
    session are unknown, the session-level targets still hold).

    Slots ``0 .. min(n_items, max_session) - 1`` get click / like / skip 0 or 1 (skip: a skip or a dislike
    event at that position); watch: the mean ``min(1, watch_ms / length)`` of the slot's watch events whose
    length ``item_length(event)`` knows, NaN where none (and on every slot that was not clicked)."""
    out = np.full((max_session, len(HEADS)), np.nan, dtype=np.float32)
    k = min(int(n_items), max_session)
    out[:k, 0] = out[:k, 1] = out[:k, 3] = 0.0
    fr: dict[int, list[float]] = {}
    for e in events:
        pos = getattr(e, "position", None)
        if pos is None or not 0 <= int(pos) < int(n_items):
            return None
        pos = int(pos)
        if pos >= k:
            continue
        t = e.type
        if t == "click":
            out[pos, 0] = 1.0
        elif t == "like":
            out[pos, 1] = 1.0
        elif t in ("skip", "dislike"):
            out[pos, 3] = 1.0
        if e.watch_ms and item_length is not None:
            length = item_length(e)
            if length:
                fr.setdefault(pos, []).append(min(1.0, float(e.watch_ms) / float(length)))
    for pos, f in fr.items():
        if out[pos, 0] == 1.0:
            out[pos, 2] = float(np.mean(f))
    return out


@dataclass
class RewardExamples:
    """Served sessions with their targets. ``M`` examples, sessions padded to ``K`` slots.

    ``histories`` has one row per example (the user's events strictly before ``ts``);
    ``sessions`` ``[M, K]`` int64; ``targets`` ``[M, 4]`` float32 (NaN = unknown);
    ``ts`` ``[M]`` served time (ms); ``true_value`` ``[M]`` optional ground truth (simulator);
    ``slot_targets`` ``[M, K, 4]`` optional per-slot targets (NaN = unknown; a session whose slots are
    unknown is all NaN).
    """

    histories: Histories
    sessions: np.ndarray
    targets: np.ndarray
    ts: np.ndarray
    user_ids: list[str]
    request_ids: list[str]
    true_value: np.ndarray | None = None
    slot_targets: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.sessions = np.asarray(self.sessions, dtype=np.int64).reshape(len(self.histories), -1)
        self.targets = np.asarray(self.targets, dtype=np.float32).reshape(len(self.histories), len(HEADS))
        self.ts = np.asarray(self.ts, dtype=np.int64).reshape(-1)
        m = len(self.histories)
        if not (len(self.sessions) == len(self.targets) == len(self.ts) == len(self.user_ids)
                == len(self.request_ids) == m):
            raise ValueError(f"RewardExamples fields must all have one row per example ({m}); got sessions "
                             f"{len(self.sessions)}, targets {len(self.targets)}, ts {len(self.ts)}, "
                             f"user_ids {len(self.user_ids)}, request_ids {len(self.request_ids)}")
        if self.true_value is not None:
            self.true_value = np.asarray(self.true_value, dtype=np.float64).reshape(-1)
            if len(self.true_value) != m:
                raise ValueError(f"RewardExamples.true_value has {len(self.true_value)} rows for {m} examples")
        if self.slot_targets is not None:
            st = np.asarray(self.slot_targets, dtype=np.float32)
            if st.shape != (m, self.sessions.shape[1], len(HEADS)):
                raise ValueError(f"RewardExamples.slot_targets has shape {st.shape}; it must be [M={m}, "
                                 f"K={self.sessions.shape[1]}, {len(HEADS)}] (NaN = unknown)")
            self.slot_targets = st

    def __len__(self) -> int:
        return len(self.histories)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "RewardExamples":
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return RewardExamples(self.histories.subset(idx.tolist()), self.sessions[idx], self.targets[idx],
                              self.ts[idx], [self.user_ids[i] for i in idx], [self.request_ids[i] for i in idx],
                              None if self.true_value is None else self.true_value[idx],
                              None if self.slot_targets is None else self.slot_targets[idx])

    def split_at(self, ts: int) -> tuple["RewardExamples", "RewardExamples"]:
        """``(served before ts, served at or after ts)``: a split by time, the later part for evaluation."""
        return self.subset(np.flatnonzero(self.ts < ts)), self.subset(np.flatnonzero(self.ts >= ts))

    def split_by_time(self, later_frac: float) -> tuple["RewardExamples", "RewardExamples"]:
        """``(earlier, later)`` with about ``later_frac`` of the examples — the newest — in ``later``."""
        if not 0.0 < later_frac < 1.0:
            raise ValueError(f"later_frac={later_frac} must be in (0, 1), e.g. 0.2")
        if len(self) < 2:
            raise ValueError(f"cannot split {len(self)} example(s) by time; collect more sessions")
        order = np.argsort(self.ts, kind="stable")
        cut_ts = int(self.ts[order[int(round((1.0 - later_frac) * (len(self) - 1)))]])
        early, late = self.split_at(cut_ts)
        if len(early) == 0:   # every example at the same time: fall back to the order
            n_late = max(1, int(round(later_frac * len(self))))
            return self.subset(order[:-n_late]), self.subset(order[-n_late:])
        return early, late
