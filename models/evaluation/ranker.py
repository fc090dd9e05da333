"""The ``Ranker`` protocol every evaluated model implements, and shared ranking helpers.

Offline evaluation (leave-one-out, full ranking; see :mod:`models.evaluation.metrics`)
compares very different models — a generator that decodes semantic IDs under a
trie, SASRec that scores every item, a popularity count — so they meet at one
narrow interface: given users' histories, return the top-``n`` *item indices*
(0 … n_items-1) for each user, best first.

Fairness rule (identical for every model): items already in the user's history
are excluded from the ranking when ``exclude_seen`` is true (the default, the
usual full-ranking protocol, e.g. RecBole / Krichene & Rendle 2020 "On Sampled
Metrics for Item Recommendation"). Score-based models get it from
:func:`topn_from_scores`; a generator applies the same exclusion as a logits
processor. The evaluator checks it: any returned seen item is reported.

A row may end with ``-1`` when a model cannot fill ``n`` distinct items; the
evaluator counts ``-1`` and out-of-range indices as invalid IDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch


@dataclass
class Histories:
    """A batch of user histories, item level (what every ranker reads).

    ``items[b]`` are item indices of user ``b``'s events, oldest first
    (int64, shape [S_b]); ``ts[b]`` their event times in ms and ``types[b]``
    their event-type codes (index into ``ingest.contract.EVENT_TYPES``), both
    optional and, when given, of the same length as ``items[b]``.
    """

    items: list[np.ndarray]
    ts: list[np.ndarray] | None = None
    types: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        self.items = [np.asarray(x, dtype=np.int64).reshape(-1) for x in self.items]
        for name in ("ts", "types"):
            other = getattr(self, name)
            if other is None:
                continue
            other = [np.asarray(x, dtype=np.int64).reshape(-1) for x in other]
            if len(other) != len(self.items) or any(len(a) != len(b) for a, b in zip(other, self.items)):
                raise ValueError(f"Histories.{name} must have one array per user with the same length "
                                 f"as items; got {len(other)} arrays for {len(self.items)} users")
            setattr(self, name, other)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: Sequence[int] | slice) -> "Histories":
        """The histories of some users (a batch of the evaluation)."""
        if isinstance(idx, slice):
            idx = range(*idx.indices(len(self.items)))
        idx = list(idx)
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return Histories([self.items[i] for i in idx], pick(self.ts), pick(self.types))

    def truncated(self, max_len: int) -> "Histories":
        """Only the last ``max_len`` events of every history."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        cut = lambda xs: None if xs is None else [x[-max_len:] for x in xs]  # noqa: E731
        return Histories(cut(self.items), cut(self.ts), cut(self.types))


def as_histories(h: "Histories | Sequence[Sequence[int]]") -> Histories:
    """Accept a :class:`Histories` or a plain list of per-user item-index sequences."""
    return h if isinstance(h, Histories) else Histories([np.asarray(x, dtype=np.int64) for x in h])


@runtime_checkable
class Ranker(Protocol):
    """What the evaluator calls: top-``n`` item indices per user, best first.

    ``rank(histories, n)`` returns a LongTensor ``[B, n]`` (B = len(histories)).
    Items in the history must not appear when ``exclude_seen`` is true; pad
    with ``-1`` when fewer than ``n`` items can be returned.
    """

    name: str

    def rank(self, histories: Histories, n: int) -> torch.Tensor:  # [B, n]
        ...


def left_pad(seqs: Sequence[np.ndarray], max_len: int, pad: int = 0, shift: int = 0) -> np.ndarray:
    """Right-aligned [B, max_len] int64 array of the last ``max_len`` entries of each sequence.

    ``shift`` is added to every real entry (e.g. +1 so that 0 can be the padding id).
    """
    out = np.full((len(seqs), max_len), pad, dtype=np.int64)  # [B, L]
    for b, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[-max_len:]
        if len(s):
            out[b, max_len - len(s):] = s + shift
    return out


def seen_mask(histories: Histories, n_items: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """BoolTensor [B, n_items], True where the item is in the user's history."""
    mask = torch.zeros(len(histories), n_items, dtype=torch.bool, device=device)
    for b, s in enumerate(histories.items):
        s = s[(s >= 0) & (s < n_items)]
        if len(s):
            mask[b, torch.as_tensor(s, device=device)] = True
    return mask


def topn_from_scores(scores: torch.Tensor, histories: Histories, n: int,
                     exclude_seen: bool = True) -> torch.Tensor:
    """Top-``n`` item indices [B, n] of a score matrix [B, n_items], seen items masked.

    This is the one place score-based rankers apply the seen-item rule, so it
    is the same for all of them. Rows with fewer than ``n`` eligible items end
    in ``-1``.
    """
    if scores.dim() != 2 or scores.shape[0] != len(histories):
        raise ValueError(f"scores must be [B={len(histories)}, n_items], got {tuple(scores.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    n_items = scores.shape[1]
    scores = scores.clone() if scores.is_floating_point() else scores.float()
    if exclude_seen:
        scores[seen_mask(histories, n_items, scores.device)] = float("-inf")
    k = min(n, n_items)
    vals, idx = torch.topk(scores, k, dim=1)  # [B, k]
    idx = torch.where(torch.isinf(vals) & (vals < 0), torch.full_like(idx, -1), idx)
    if k < n:
        idx = torch.cat([idx, torch.full((idx.shape[0], n - k), -1, dtype=idx.dtype, device=idx.device)], 1)
    return idx.long()
