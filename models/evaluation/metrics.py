"""Top-N ranking metrics for leave-one-out evaluation with full ranking.

Each test case has one target item; a model returns a ranked list of item
indices [B, n] over the *whole* catalog (no sampled negatives — sampled
metrics can reorder models, Krichene & Rendle, KDD 2020). With one relevant
item at 1-based rank r:

* HR@K   = 1 if r ≤ K else 0
* NDCG@K = 1 / log2(r + 1) if r ≤ K else 0 (the ideal DCG is 1)
* MRR    = 1 / r if the target is in the returned list, else 0 (i.e. MRR@n)

Averaged over cases. Catalog coverage@K is the share of the catalog that
appears in anyone's top K; the invalid-ID rate is the share of returned
entries that are not a catalog item (``-1`` or out of range) — a generator
decoding under the catalog trie must score exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

HR_KS = (1, 5, 10, 50)
NDCG_KS = (5, 10, 50)


@dataclass(frozen=True)
class MetricsConfig:
    """Which cut-offs to report (defaults: HR@{1,5,10,50}, NDCG@{5,10,50}, coverage@10)."""

    hr_ks: tuple[int, ...] = HR_KS
    ndcg_ks: tuple[int, ...] = NDCG_KS
    coverage_k: int = 10

    def __post_init__(self) -> None:
        for name in ("hr_ks", "ndcg_ks"):
            ks = getattr(self, name)
            if not ks or any(int(k) < 1 for k in ks):
                raise ValueError(f"MetricsConfig.{name} must be a non-empty tuple of cut-offs >= 1, got {ks!r}")
        if self.coverage_k < 1:
            raise ValueError(f"MetricsConfig.coverage_k must be >= 1, got {self.coverage_k}")

    @property
    def max_k(self) -> int:
        return max(max(self.hr_ks), max(self.ndcg_ks), self.coverage_k)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64)


def target_ranks(ranked, targets) -> np.ndarray:
    """1-based rank of each target in its row of ``ranked`` [B, n]; 0 where it is absent. → [B]"""
    ranked, targets = _as_numpy(ranked), _as_numpy(targets).reshape(-1)
    if ranked.ndim != 2 or ranked.shape[0] != len(targets):
        raise ValueError(f"ranked must be [B={len(targets)}, n], got shape {ranked.shape}")
    hit = ranked == targets[:, None]  # [B, n]
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), first + 1, 0).astype(np.int64)


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """HR@K from 1-based ranks (0 = missed)."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 1) & (ranks <= k))) if len(ranks) else 0.0


def ndcg_per_case(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-case NDCG@K with one relevant item, from 1-based ranks (0 = missed): ``[n]`` float64."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where((ranks >= 1) & (ranks <= k), 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0)


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item, from 1-based ranks (0 = missed): the mean of :func:`ndcg_per_case`."""
    gain = ndcg_per_case(ranks, k)
    return float(gain.mean()) if len(gain) else 0.0


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the returned lists (0 for a missed target)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if not len(ranks):
        return 0.0
    return float(np.where(ranks >= 1, 1.0 / np.maximum(ranks, 1), 0.0).mean())


def invalid_rate(ranked, n_items: int) -> float:
    """Share of returned entries that are not catalog items (-1 / out of range)."""
    ranked = _as_numpy(ranked)
    if ranked.size == 0:
        return 0.0
    return float(np.mean((ranked < 0) | (ranked >= n_items)))


def validity(items, n_items: int, live=None) -> float:
    """Share of generated entries that are (live) catalog items; empty slots (-1) are not counted.

    The alignment loop requires 1.0: the catalog trie makes every generated item valid by construction,
    and a round or a gate that sees less has found a broken constraint. ``live`` [n_items] bool, optional.
    """
    it = _as_numpy(items).reshape(-1).astype(np.int64)
    it = it[it != -1]
    if not it.size:
        return 1.0
    ok = (it >= 0) & (it < n_items)
    if live is not None:
        ok &= np.asarray(live, dtype=bool)[np.clip(it, 0, n_items - 1)]
    return float(ok.mean())


def coverage(ranked, n_items: int, k: int) -> float:
    """Share of the catalog that appears in at least one top-K list."""
    top = _as_numpy(ranked)[:, :k].reshape(-1)
    top = top[(top >= 0) & (top < n_items)]
    return float(len(np.unique(top)) / n_items) if n_items else 0.0


def duplicate_rate(ranked) -> float:
    """Share of valid entries that repeat an item already earlier in the same row."""
    ranked = _as_numpy(ranked)
    dup = total = 0
    for row in ranked:
        row = row[row >= 0]
        total += len(row)
        dup += len(row) - len(np.unique(row))
    return dup / total if total else 0.0


def seen_rate(ranked, histories) -> float:
    """Share of returned entries that are in the user's own history (must be 0 with exclude-seen)."""
    ranked = _as_numpy(ranked)
    bad = 0
    for row, hist in zip(ranked, histories.items):
        bad += int(np.isin(row[row >= 0], hist).sum())
    return bad / ranked.size if ranked.size else 0.0


def evaluate_ranking(ranked, targets, n_items: int, cfg: MetricsConfig = MetricsConfig()) -> dict[str, float]:
    """All metrics of one model on one set of cases, as a flat dict.

    Keys: ``hr@K``, ``ndcg@K``, ``mrr``, ``coverage@K``, ``diversity@K`` (inter-user diversity
    of the top-K lists, :func:`models.evaluation.personalisation.inter_user_diversity`),
    ``invalid_rate``, ``duplicate_rate``, ``n_cases``.
    """
    from models.evaluation.personalisation import inter_user_diversity

    ranked = _as_numpy(ranked)
    if ranked.shape[1] < cfg.max_k:
        raise ValueError(f"ranked lists have {ranked.shape[1]} entries but the metrics need {cfg.max_k}; "
                         f"ask the ranker for n >= {cfg.max_k}")
    ranks = target_ranks(ranked, targets)
    out = {f"hr@{k}": hit_rate(ranks, k) for k in cfg.hr_ks}
    out.update({f"ndcg@{k}": ndcg(ranks, k) for k in cfg.ndcg_ks})
    out["mrr"] = mrr(ranks)
    out[f"coverage@{cfg.coverage_k}"] = coverage(ranked, n_items, cfg.coverage_k)
    div = inter_user_diversity(ranked, cfg.coverage_k, n_items) if len(ranked) >= 2 else 0.0
    out[f"diversity@{cfg.coverage_k}"] = div
    out["invalid_rate"] = invalid_rate(ranked, n_items)
    out["duplicate_rate"] = duplicate_rate(ranked)
    out["n_cases"] = float(len(ranks))
    return out
