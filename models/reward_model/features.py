"""Tensors of the reward model's inputs: user histories and sessions (pure numpy/torch).

History features per event are those of the generator's encoder
(:mod:`models.generator.features`): the item, its event-type code (``EVENT_TYPES``
index + 1, 0 = padding) and its log2 time-gap bucket to the user's previous
event (0 = unknown / padding). Histories keep their ``max_history`` most recent
events and are left-padded; unknown items (index < 0) are dropped.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from models.evaluation.ranker import Histories
from ingest.contract import EVENT_TYPES  # constants only
from models.generator.features import event_type_codes, gap_buckets


class RewardHistory(NamedTuple):
    """Encoder input; padding wherever ``mask`` is False."""

    items: Tensor        # [B, S] long: catalog item index (-1 = padding)
    event_type: Tensor   # [B, S] long: event-type code (0 = padding)
    time_bucket: Tensor  # [B, S] long: time-gap bucket (0 = padding / unknown)
    mask: Tensor         # [B, S] bool: True = real event

    def to(self, device) -> "RewardHistory":
        return RewardHistory(*(t.to(device) for t in self))

    def index_select(self, idx: Tensor) -> "RewardHistory":
        return RewardHistory(*(t.index_select(0, idx) for t in self))


def history_batch(histories: Histories, max_history: int, n_time_buckets: int) -> RewardHistory:
    """A :class:`RewardHistory` ``[B, max_history]`` of ``histories`` (the most recent events, left-padded)."""
    b, h = len(histories), max_history
    items = np.full((b, h), -1, dtype=np.int64)
    types = np.zeros((b, h), dtype=np.int64)
    tb = np.zeros((b, h), dtype=np.int64)
    click = EVENT_TYPES.index("click")   # a history without types is clicks (as the generator assumes)
    for r in range(b):
        it = histories.items[r]
        keep = it >= 0
        ty = histories.types[r] if histories.types is not None else np.full(it.shape, click, np.int64)
        if histories.ts is not None:
            ts = histories.ts[r]
            gaps = np.diff(ts, prepend=ts[:1]) if len(ts) else ts
            has_prev = np.arange(len(ts)) > 0
            buckets = gap_buckets(gaps, has_prev, n_time_buckets)
        else:
            buckets = np.zeros(it.shape, np.int64)
        it, ty, buckets = it[keep][-h:], ty[keep][-h:], buckets[keep][-h:]
        n = len(it)
        if n:
            items[r, h - n:] = it
            types[r, h - n:] = event_type_codes(ty)
            tb[r, h - n:] = buckets
    items_t = torch.from_numpy(items)
    return RewardHistory(items_t, torch.from_numpy(types), torch.from_numpy(tb), items_t >= 0)
