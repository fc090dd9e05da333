"""Most-popular baseline: every user gets the most interacted-with items they have not seen.

The floor any personalised model must clear. Popularity is counted on the
training part of the split only (no peeking at validation/test targets);
ties break towards the lower item index, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.evaluation.ranker import Histories, as_histories, topn_from_scores


@dataclass(frozen=True)
class PopularityConfig:
    """recent_weight_halflife: 0 = plain counts; > 0 = each interaction weighted by
    0.5 ** (age / halflife) in events-from-the-end of the log (recency-aware popularity).
    exclude_seen: mask items in the user's history (the shared evaluation rule)."""

    recent_weight_halflife: float = 0.0
    exclude_seen: bool = True

    def __post_init__(self) -> None:
        if self.recent_weight_halflife < 0:
            raise ValueError(f"PopularityConfig.recent_weight_halflife must be >= 0 (0 = plain counts), "
                             f"got {self.recent_weight_halflife}")


class PopularityRanker:
    """``Ranker`` that scores items by how often they occur in the training sequences."""

    name = "popularity"

    def __init__(self, n_items: int, cfg: PopularityConfig = PopularityConfig()):
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        self.n_items = n_items
        self.cfg = cfg
        self.scores = torch.zeros(n_items)  # [N]

    def fit(self, train: Histories) -> "PopularityRanker":
        train = as_histories(train)
        flat = np.concatenate(train.items) if len(train) else np.zeros(0, np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= self.n_items):
            raise ValueError(f"training items must be indices in [0, {self.n_items}), "
                             f"got range [{flat.min()}, {flat.max()}]")
        if self.cfg.recent_weight_halflife > 0 and train.ts is not None and flat.size:
            ts = np.concatenate(train.ts).astype(np.float64)
            order = np.argsort(ts, kind="stable")
            age = np.empty(len(ts))
            age[order] = np.arange(len(ts))[::-1]
            w = 0.5 ** (age / self.cfg.recent_weight_halflife)
            counts = np.bincount(flat, weights=w, minlength=self.n_items)
        else:
            counts = np.bincount(flat, minlength=self.n_items).astype(np.float64)
        # tie-break: lower index first (scores strictly decreasing in index among equal counts)
        self.scores = torch.as_tensor(counts - np.arange(self.n_items) * 1e-9, dtype=torch.float64)
        return self

    def rank(self, histories: Histories, n: int) -> torch.Tensor:  # [B, n]
        histories = as_histories(histories)
        scores = self.scores.unsqueeze(0).expand(len(histories), -1)  # [B, N]
        return topn_from_scores(scores.double(), histories, n, self.cfg.exclude_seen)
