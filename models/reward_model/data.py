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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

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


@dataclass
class RewardExamples:
    """Served sessions with their targets. ``M`` examples, sessions padded to ``K`` slots.

    ``histories`` has one row per example (the user's events strictly before ``ts``);
    ``sessions`` ``[M, K]`` int64; ``targets`` ``[M, 4]`` float32 (NaN = unknown);
    ``ts`` ``[M]`` served time (ms); ``true_value`` ``[M]`` optional ground truth (simulator).
    """

    histories: Histories
    sessions: np.ndarray
    targets: np.ndarray
    ts: np.ndarray
    user_ids: list[str]
    request_ids: list[str]
    true_value: np.ndarray | None = None

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

    def __len__(self) -> int:
        return len(self.histories)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "RewardExamples":
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        return RewardExamples(self.histories.subset(idx.tolist()), self.sessions[idx], self.targets[idx],
                              self.ts[idx], [self.user_ids[i] for i in idx], [self.request_ids[i] for i in idx],
                              None if self.true_value is None else self.true_value[idx])

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
