"""Training sessions: (history prefix, next ``K`` engaged items) pairs from users' event logs.

Pure NumPy. Every engaged event of a user is an *anchor*: the history is
everything the user did before it, the target session is that event's item
and the next ``K - 1`` engaged items (OneRec's session-wise generation, Deng et
al. 2025). Using every prefix of each sequence as an example is what
sequential recommenders do (SASRec trains every position; TIGER builds all
prefixes) and it matters most on small data sets.

Examples are kept as flat indices into :class:`~models.generator.features.FlatEvents`
(no per-example copies), and batches are gathered on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.generator.model import HistoryBatch
from models.generator.features import FlatEvents, gather_history, gather_window


def engaged_type_mask() -> np.ndarray:
    """Bool [len(EVENT_TYPES)]: which event-type indices count as engagement (contract constants)."""
    from ingest.contract import ENGAGED_TYPES, EVENT_TYPES  # constants only, no I/O

    return np.array([t in ENGAGED_TYPES for t in EVENT_TYPES], dtype=bool)


@dataclass(frozen=True)
class SessionConfig:
    """How examples are cut. ``session_len`` items per target; anchors with fewer
    than ``min_history`` earlier events are skipped (0 keeps cold-start examples)."""

    session_len: int = 5
    min_history: int = 0

    def __post_init__(self) -> None:
        if self.session_len < 1:
            raise ValueError(f"session_len={self.session_len} must be >= 1")
        if self.min_history < 0:
            raise ValueError(f"min_history={self.min_history} must be >= 0")


@dataclass
class SessionExamples:
    """Anchors and their target sessions over one :class:`FlatEvents` log."""

    events: FlatEvents
    anchors: np.ndarray   # [M] flat index of the first target event (history = events before it)
    targets: np.ndarray   # [M, K] item indices of the session, -1 where the user has no more items

    def __len__(self) -> int:
        return len(self.anchors)

    def subset(self, idx: np.ndarray) -> "SessionExamples":
        idx = np.asarray(idx, dtype=np.int64)
        return SessionExamples(self.events, self.anchors[idx], self.targets[idx])

    def batch(self, idx: np.ndarray, item_sids: np.ndarray, max_history: int,
              n_time_buckets: int) -> tuple[HistoryBatch, torch.Tensor, torch.Tensor]:
        """Tensors of examples ``idx``: (HistoryBatch, target SIDs [B, K, D], target mask [B, K])."""
        idx = np.asarray(idx, dtype=np.int64)
        a = self.anchors[idx]
        hist = gather_history(self.events, a, self.events.start[a], item_sids, max_history, n_time_buckets)
        tgt = self.targets[idx]                                               # [B, K]
        tmask = tgt >= 0
        sids = np.asarray(item_sids, dtype=np.int64)[np.maximum(tgt, 0)]      # [B, K, D]
        sids = np.where(tmask[..., None], sids, 0)
        return hist, torch.from_numpy(sids), torch.from_numpy(tmask)


@dataclass
class WindowBatch:
    """Examples sharing encoder windows (see :meth:`GenerativeRecommender.forward_anchors`)."""

    window: HistoryBatch     # [W, S(, D)] left-aligned windows
    anchor_row: torch.Tensor  # [N] window of each example
    anchor_len: torch.Tensor  # [N] history length of each example inside its window
    targets: torch.Tensor     # [N, K, D]
    target_mask: torch.Tensor  # [N, K]
    target_items: torch.Tensor | None = None  # [N, K] item indices of the session, -1 where none


def plan_windows(ex: SessionExamples, window: int, rng: np.random.Generator | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Assign every example to an encoder window: (window starts [W], window of each example [M]).

    A user's anchors are cut into chunks of ``window``: anchor ``a`` gets the
    window starting at the chunk boundary before it, and its history is the
    events from there to ``a`` (1..window events; 0 only for the user's very
    first event, the true cold start). With ``rng``, chunk boundaries shift by
    a random offset per user, so across epochs an anchor is seen with
    different history lengths (like SASRec's random crops).
    """
    ev, a = ex.events, ex.anchors
    s = ev.start[a]
    rel = a - s
    if rng is not None:
        n_users = len(ev.user_offsets) - 1
        off_u = rng.integers(0, window, size=n_users)
        user = np.searchsorted(ev.user_offsets, a, side="right") - 1
        off = off_u[user]
    else:
        off = np.zeros_like(rel)
    k = np.ceil((rel - off) / window).astype(np.int64) - 1
    ws = np.where(rel <= off, s, s + off + k * window)
    starts, inverse = np.unique(ws, return_inverse=True)
    return starts, inverse.reshape(-1)


def window_batches(ex: SessionExamples, item_sids: np.ndarray, window: int, n_time_buckets: int,
                   batch_size: int, rng: np.random.Generator | None = None):
    """Yield :class:`WindowBatch` es of about ``batch_size`` examples covering every example once."""
    starts, win_of = plan_windows(ex, window, rng)
    order = np.argsort(win_of, kind="stable")                                   # examples grouped by window
    bounds = np.searchsorted(win_of[order], np.arange(len(starts) + 1))
    wins = rng.permutation(len(starts)) if rng is not None else np.arange(len(starts))
    counts = np.diff(bounds)[wins]
    cum = np.cumsum(counts)
    group = (cum - 1) // batch_size                                              # windows -> batch number
    item_sids = np.asarray(item_sids, dtype=np.int64)
    for g in np.unique(group):
        wsel = wins[group == g]                                                  # [Wb] window ids
        ex_idx = np.concatenate([order[bounds[w]:bounds[w + 1]] for w in wsel])
        local = np.repeat(np.arange(len(wsel)), np.diff(bounds)[wsel])
        hist = gather_window(ex.events, starts[wsel], item_sids, window, n_time_buckets)
        alen = ex.anchors[ex_idx] - starts[wsel][local]
        tgt = ex.targets[ex_idx]
        tmask = tgt >= 0
        sids = np.where(tmask[..., None], item_sids[np.maximum(tgt, 0)], 0)
        yield WindowBatch(hist, torch.from_numpy(local), torch.from_numpy(alen.astype(np.int64)),
                          torch.from_numpy(sids), torch.from_numpy(tmask), torch.from_numpy(tgt.astype(np.int64)))


def build_sessions(events: FlatEvents, cfg: SessionConfig, engaged: np.ndarray | None = None,
                   anchor_filter: np.ndarray | None = None) -> SessionExamples:
    """All (prefix, next-session) examples of a flat log.

    ``engaged`` — bool per event-type index (default: the contract's engaged
    types); only engaged events with a known item become targets.
    ``anchor_filter`` — optional bool [E]: only these events may be anchors
    (e.g. the validation split keeps each user's last one).
    """
    if engaged is None:
        engaged = engaged_type_mask()
    engaged = np.asarray(engaged, dtype=bool)
    types = np.clip(events.types, 0, len(engaged) - 1)
    is_target = engaged[types] & (events.items >= 0)                          # [E]
    epos = np.flatnonzero(is_target)                                          # flat positions of targets
    K = cfg.session_len
    # session k-th item = (k)-th next target position, if it is still the same user's
    j = np.arange(len(epos))[:, None] + np.arange(K)[None, :]                 # [T, K]
    inb = j < len(epos)
    pos = epos[np.minimum(j, max(len(epos) - 1, 0))] if len(epos) else np.zeros(j.shape, np.int64)
    same_user = inb & (pos < events.end[epos][:, None])
    targets = np.where(same_user, events.items[pos] if len(epos) else -1, -1)
    keep = (epos - events.start[epos]) >= cfg.min_history
    if anchor_filter is not None:
        keep &= np.asarray(anchor_filter, dtype=bool)[epos]
    return SessionExamples(events, epos[keep], targets[keep].astype(np.int64).reshape(-1, K))


def split_last(events: FlatEvents, cfg: SessionConfig, engaged: np.ndarray | None = None
               ) -> tuple[SessionExamples, SessionExamples]:
    """(train, valid): each user's last engaged event is a validation anchor; training
    examples use only events before it (targets never include validation items).

    Users with a single engaged event keep it for training.
    """
    if engaged is None:
        engaged = engaged_type_mask()
    engaged = np.asarray(engaged, dtype=bool)
    types = np.clip(events.types, 0, len(engaged) - 1)
    is_target = engaged[types] & (events.items >= 0)
    epos = np.flatnonzero(is_target)
    user = np.searchsorted(events.user_offsets, epos, side="right") - 1
    n_per_user = np.bincount(user, minlength=len(events.user_offsets) - 1)
    last = np.zeros(len(events.items), dtype=bool)
    if len(epos):
        is_last = np.append(user[1:] != user[:-1], True)
        cand = epos[is_last & (n_per_user[user] >= 2)]
        last[cand] = True
    valid = build_sessions(events, SessionConfig(1, cfg.min_history), engaged, anchor_filter=last)
    # training log: cut each validation user's log at its validation anchor
    cut_end = events.end.copy()
    for_u = np.flatnonzero(last)
    if len(for_u):
        u_of = np.searchsorted(events.user_offsets, for_u, side="right") - 1
        new_end = events.user_offsets[1:].copy()
        new_end[u_of] = for_u
        cut_end = new_end[np.searchsorted(events.user_offsets, np.arange(len(events.items)), side="right") - 1]
    train_events = FlatEvents(np.where(np.arange(len(events.items)) < cut_end, events.items, -1),
                              events.types, events.ts, events.start, cut_end, events.user_offsets)
    train = build_sessions(train_events, cfg, engaged)
    return train, valid
