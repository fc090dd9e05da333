"""Personalisation metrics of top-K lists: do different users get different, better-than-popular lists?

Accuracy alone cannot tell a personalised model from one that hands everyone
the same popular items (on a Zipf-shaped catalog the second can score well).
Beside NDCG@K these say how much the lists depend on the user:

* inter-user diversity@K = 1 − mean over user pairs of |top-K(u) ∩ top-K(v)| / K
  (0 = every user gets the same list; 1 = no two lists share an item) — the
  "personalisation" of Zhou et al., PNAS 2010, "Solving the apparent diversity–
  accuracy dilemma of recommender systems";
* coverage@K = distinct items in all top-K lists / catalog size
  (:func:`models.evaluation.metrics.coverage`);
* the share of users for whom the model's per-user NDCG@K is strictly above the
  popularity baseline's (and the share where it is strictly below; the rest tie,
  mostly both missing).

Pure NumPy; lists are item indices ``[U, n]`` best first, ``-1`` (or any index
outside the catalog) is an empty slot and never counts as shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.evaluation.metrics import coverage, target_ranks


def _valid_topk(ranked, k: int, n_items: int | None) -> np.ndarray:
    """``ranked`` [U, n] -> [U, min(n, k)] int64 with invalid entries and in-row repeats set to -1."""
    top = np.array(ranked.detach().cpu().numpy() if hasattr(ranked, "detach") else ranked, dtype=np.int64)
    if top.ndim != 2:
        raise ValueError(f"ranked lists must be [users, n], got shape {top.shape}")
    top = top[:, :k].copy()
    bad = top < 0
    if n_items is not None:
        bad |= top >= n_items
    top[bad] = -1
    if top.shape[1] > 1:                                          # an item repeated in a row counts once
        srt = np.sort(top, axis=1)
        has_dup = ((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(axis=1)
        for r in np.flatnonzero(has_dup):                         # rare: keep each item's first slot
            _, first = np.unique(top[r], return_index=True)
            keep = np.zeros(top.shape[1], dtype=bool)
            keep[first] = True
            top[r, ~keep] = -1
    return top


def inter_user_diversity(ranked, k: int = 10, n_items: int | None = None) -> float:
    """1 − mean pairwise overlap ``|A ∩ B| / k`` of the users' top-``k`` lists ([U, n] item indices).

    Computed from item counts (``sum_pairs |A ∩ B| = sum_items C(c_i, 2)``, ``c_i`` = lists
    holding item ``i``), so it is linear in ``U * k``. Fewer than two users: ``nan``.
    """
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    top = _valid_topk(ranked, k, n_items)
    u = top.shape[0]
    if u < 2:
        return float("nan")
    flat = top[top >= 0]
    counts = np.unique(flat, return_counts=True)[1].astype(np.float64)
    shared = float((counts * (counts - 1) / 2).sum())            # sum over pairs of |A ∩ B|
    pairs = u * (u - 1) / 2
    return 1.0 - shared / (pairs * k)


def per_user_ndcg(ranked, targets, k: int = 10) -> np.ndarray:
    """NDCG@k of each user (one relevant item): ``1 / log2(rank + 1)`` if rank <= k else 0. -> [U]"""
    r = target_ranks(ranked, targets)
    return np.where((r >= 1) & (r <= k), 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0)


@dataclass(frozen=True)
class PersonalisationReport:
    """See the module docstring. ``beats_baseline`` / ``loses_to_baseline`` are shares of users."""

    k: int
    diversity: float
    coverage: float
    beats_baseline: float
    loses_to_baseline: float
    n_users: int

    def as_dict(self) -> dict:
        return {f"diversity@{self.k}": self.diversity, f"coverage@{self.k}": self.coverage,
                "beats_baseline": self.beats_baseline, "loses_to_baseline": self.loses_to_baseline,
                "n_users": self.n_users}


def personalisation_report(ranked, targets, n_items: int, baseline_ranked=None, k: int = 10
                           ) -> PersonalisationReport:
    """Diversity@k, coverage@k and (with ``baseline_ranked``, e.g. popularity) the per-user win/loss shares.

    ``ranked`` / ``baseline_ranked``: [U, n] item indices of the same users, best first;
    ``targets`` [U]: each user's held-out item. Without a baseline the shares are ``nan``.
    """
    if n_items < 1:
        raise ValueError(f"n_items={n_items} must be >= 1 (the catalog size)")
    top = _valid_topk(ranked, k, n_items)
    u = top.shape[0]
    win = lose = float("nan")
    if baseline_ranked is not None:
        base = _valid_topk(baseline_ranked, k, n_items)
        if base.shape[0] != u:
            raise ValueError(f"baseline lists are for {base.shape[0]} users, the model's for {u}")
        if u:
            g, b = per_user_ndcg(top, targets, k), per_user_ndcg(base, targets, k)
            win, lose = float(np.mean(g > b)), float(np.mean(g < b))
    return PersonalisationReport(k, inter_user_diversity(top, k, n_items), coverage(top, n_items, k),
                                 win, lose, u)
