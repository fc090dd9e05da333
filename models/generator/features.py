"""Encoder inputs from raw history arrays: SID codes, event-type codes, time-gap buckets.

Pure NumPy/torch (no I/O). Both training (many prefixes of one flat event log)
and serving / evaluation (one history per request) go through
:func:`gather_history`, so features are computed identically in both.

Features per event (one encoder position per event, see
:mod:`models.generator.model`):

* SID codes of the item (``item_sids[item]``, ``[D]``);
* event-type code = index into ``ingest.contract.EVENT_TYPES`` **+ 1** (0 is padding);
* time-gap bucket: the gap to the user's previous event on a log2 scale of
  seconds — bucket 1 = first event (no previous), bucket ``2 + floor(log2(1 + gap_s))``
  capped at ``n_buckets - 1``; 0 = padding / unknown time. Log buckets follow
  the time-interval features of TiSASRec (Li et al., WSDM 2020) and the
  bucketed time features used by industrial generative recommenders.

Histories longer than ``max_history`` keep their most recent events; events
whose item is unknown to the catalog (index < 0 or ≥ N) are dropped, so a
stale or unknown id never crashes the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from models.generator.model import HistoryBatch

#: Event-type code of padding; real codes are EVENT_TYPES index + 1.
PAD_TYPE = 0


def _click_type() -> int:
    """EVENT_TYPES index of 'click': the type assumed when a history carries no types."""
    from ingest.contract import EVENT_TYPES  # constants only

    return EVENT_TYPES.index("click")


def event_type_codes(type_idx: np.ndarray) -> np.ndarray:
    """EVENT_TYPES indices -> encoder event-type codes (shifted by one; 0 = padding)."""
    return np.asarray(type_idx, dtype=np.int64) + 1


def gap_buckets(gap_ms: np.ndarray, has_prev: np.ndarray, n_buckets: int) -> np.ndarray:
    """Time-gap bucket per event (see module docstring). Negative gaps count as 0."""
    gap_s = np.maximum(np.asarray(gap_ms, dtype=np.float64), 0.0) / 1000.0
    b = 2 + np.floor(np.log2(1.0 + gap_s)).astype(np.int64)
    b = np.minimum(b, n_buckets - 1)
    return np.where(has_prev, b, 1).astype(np.int64)


@dataclass
class FlatEvents:
    """Many users' event logs concatenated: one flat array per field plus each event's user range.

    ``start[e]`` / ``end[e]``: flat index range ``[start, end)`` of the user that
    event ``e`` belongs to. ``ts`` may be None (no times known). Item indices
    < 0 mean "not in the catalog" and are skipped by :func:`gather_history`.
    """

    items: np.ndarray   # [E] int64 item indices
    types: np.ndarray   # [E] int64 EVENT_TYPES indices
    ts: np.ndarray | None  # [E] int64 ms
    start: np.ndarray   # [E] int64
    end: np.ndarray     # [E] int64
    user_offsets: np.ndarray  # [U + 1] int64: user u owns [offsets[u], offsets[u+1])

    @classmethod
    def from_sequences(cls, items: Sequence[np.ndarray], types: Sequence[np.ndarray] | None = None,
                       ts: Sequence[np.ndarray] | None = None, n_items: int | None = None,
                       default_type: int | None = None) -> "FlatEvents":
        """Concatenate per-user sequences (oldest first). Unknown items (≥ ``n_items``) become -1.

        Without ``types`` every event is a 'click' (training and serving must agree on this).
        """
        if default_type is None:
            default_type = _click_type()
        lens = np.array([len(x) for x in items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        cat = lambda xs: (np.concatenate([np.asarray(x, dtype=np.int64).reshape(-1) for x in xs])  # noqa: E731
                          if len(xs) else np.zeros(0, np.int64))
        it = cat(items)
        if n_items is not None:
            it = np.where((it >= 0) & (it < n_items), it, -1)
        ty = cat(types) if types is not None else np.full(it.shape, default_type, np.int64)
        tt = cat(ts) if ts is not None else None
        if ty.shape != it.shape or (tt is not None and tt.shape != it.shape):
            raise ValueError("items, types and ts must have the same length per user")
        user = np.repeat(np.arange(len(lens)), lens)
        return cls(it, ty, tt, offsets[user], offsets[user + 1], offsets)


def gather_history(ev: FlatEvents, anchors: np.ndarray, user_start: np.ndarray, item_sids: np.ndarray,
                   max_history: int, n_time_buckets: int) -> HistoryBatch:
    """Histories ending just before each anchor (flat index; a user's ``end`` = whole history).

    For anchor ``t`` of a user whose events start at ``user_start = s``, the history is
    the known-item events in ``[s, t)``, left-padded, keeping the
    ``max_history`` most recent. ``item_sids`` [N_items, D] int.
    Returns a :class:`HistoryBatch` of shape ``[M, max_history(, D)]``.
    """
    anchors = np.asarray(anchors, dtype=np.int64)
    m, H = anchors.shape[0], max_history
    item_sids = np.asarray(item_sids, dtype=np.int64)
    D = item_sids.shape[1]
    if m == 0:
        z = torch.zeros((0, H), dtype=torch.long)
        return HistoryBatch(torch.zeros((0, H, D), dtype=torch.long), z, z, z.bool())
    ustart = np.asarray(user_start, dtype=np.int64)
    if ustart.shape != anchors.shape or (ustart > anchors).any():
        raise ValueError("user_start must be [M] with user_start <= anchors")
    # Window wider than H so that dropped unknown items do not shorten a long history much.
    W = H + 8
    pos = anchors[:, None] - W + np.arange(W)[None, :]                      # [M, W]
    valid = pos >= ustart[:, None]
    posc = np.clip(pos, 0, max(len(ev.items) - 1, 0))
    items = ev.items[posc] if len(ev.items) else np.full(pos.shape, -1)
    valid &= items >= 0
    # keep the H most recent valid positions, right-aligned
    order = np.argsort(~valid, axis=1, kind="stable")                        # valid first, in time order
    n_valid = valid.sum(1)
    take = np.minimum(n_valid, H)
    # index within the sorted-valid list of the j-th output slot (right aligned)
    j = np.arange(H)[None, :]
    src_rank = n_valid[:, None] - take[:, None] + (j - (H - take[:, None]))
    slot_ok = j >= (H - take[:, None])                                       # [M, H]
    src_rank = np.clip(src_rank, 0, W - 1)
    src = np.take_along_axis(order, src_rank, axis=1)
    sel = np.take_along_axis(posc, src, axis=1)                              # [M, H] flat indices
    sel_items = np.where(slot_ok, ev.items[sel] if len(ev.items) else -1, -1)
    sids = np.where(slot_ok[..., None], item_sids[np.maximum(sel_items, 0)], 0)
    types = np.where(slot_ok, event_type_codes(ev.types[sel] if len(ev.items) else 0), PAD_TYPE)
    if ev.ts is not None and len(ev.items):
        # gap to the user's previous event in the log (even one outside the window)
        prev = sel - 1
        prev_ok = slot_ok & (prev >= ustart[:, None])
        gap = ev.ts[sel] - ev.ts[np.maximum(prev, 0)]
        tb = np.where(slot_ok, gap_buckets(gap, prev_ok, n_time_buckets), 0)
    else:
        tb = np.zeros((m, H), dtype=np.int64)
    return HistoryBatch(torch.from_numpy(np.ascontiguousarray(sids)), torch.from_numpy(types),
                        torch.from_numpy(tb.astype(np.int64)), torch.from_numpy(slot_ok))


def gather_window(ev: FlatEvents, ws: np.ndarray, item_sids: np.ndarray, window: int,
                  n_time_buckets: int) -> HistoryBatch:
    """Left-aligned windows of ``window`` events starting at flat indices ``ws`` [W] (training).

    Position ``j`` of row ``w`` is event ``ws[w] + j`` when it is still the same
    user's event and its item is known; other positions are masked. Time-gap
    buckets use the previous event of the log, exactly as :func:`gather_history`.
    """
    ws = np.asarray(ws, dtype=np.int64)
    item_sids = np.asarray(item_sids, dtype=np.int64)
    pos = ws[:, None] + np.arange(window)[None, :]                            # [W, S]
    n = len(ev.items)
    posc = np.clip(pos, 0, max(n - 1, 0))
    ok = (pos < ev.end[ws][:, None]) & (pos < n)
    items = np.where(ok, ev.items[posc], -1)
    ok &= items >= 0
    sids = np.where(ok[..., None], item_sids[np.maximum(items, 0)], 0)
    types = np.where(ok, event_type_codes(ev.types[posc]), PAD_TYPE)
    if ev.ts is not None and n:
        prev = posc - 1
        prev_ok = ok & (prev >= ev.start[ws][:, None])
        gap = ev.ts[posc] - ev.ts[np.maximum(prev, 0)]
        tb = np.where(ok, gap_buckets(gap, prev_ok, n_time_buckets), 0)
    else:
        tb = np.zeros(pos.shape, dtype=np.int64)
    return HistoryBatch(torch.from_numpy(np.ascontiguousarray(sids)), torch.from_numpy(types.astype(np.int64)),
                        torch.from_numpy(tb.astype(np.int64)), torch.from_numpy(ok))


def history_batch(items: Sequence[np.ndarray], item_sids: np.ndarray, max_history: int, n_time_buckets: int,
                  types: Sequence[np.ndarray] | None = None, ts: Sequence[np.ndarray] | None = None) -> HistoryBatch:
    """Whole histories of several users (oldest first) -> HistoryBatch [B, max_history(, D)].

    The serving / evaluation path: each row is a user's full history. Items
    outside ``[0, len(item_sids))`` are dropped (unknown to the catalog).
    """
    ev = FlatEvents.from_sequences(items, types, ts, n_items=len(item_sids))
    return gather_history(ev, ev.user_offsets[1:], ev.user_offsets[:-1], item_sids, max_history, n_time_buckets)
