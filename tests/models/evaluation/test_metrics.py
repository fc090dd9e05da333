"""Ranking metrics: hand-computed examples and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.evaluation.metrics import (MetricsConfig, coverage, duplicate_rate, evaluate_ranking, hit_rate, invalid_rate,
                            mrr, ndcg, seen_rate, target_ranks)
from models.evaluation.ranker import Histories


def test_target_ranks_are_one_based_and_zero_when_missing():
    ranked = np.array([[7, 3, 5], [1, 2, 3], [4, 4, 9]])
    assert target_ranks(ranked, [7, 3, 0]).tolist() == [1, 3, 0]
    assert target_ranks(torch.tensor(ranked), torch.tensor([5, 1, 9])).tolist() == [3, 1, 3]


def test_hand_computed_values():
    ranks = np.array([1, 3, 0, 12])
    assert hit_rate(ranks, 1) == 0.25
    assert hit_rate(ranks, 10) == 0.5
    assert hit_rate(ranks, 50) == 0.75
    assert ndcg(np.array([1]), 10) == 1.0
    assert ndcg(np.array([3]), 10) == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert ndcg(np.array([3]), 2) == 0.0
    assert ndcg(ranks, 10) == pytest.approx((1 + 0.5) / 4)
    assert ndcg(ranks, 50) == pytest.approx((1 + 0.5 + 1 / math.log2(13)) / 4)
    assert mrr(ranks) == pytest.approx((1 + 1 / 3 + 0 + 1 / 12) / 4)


def test_invalid_coverage_duplicates_and_seen():
    ranked = np.array([[0, 1, -1], [1, 5, 2]])
    assert invalid_rate(ranked, n_items=5) == pytest.approx(2 / 6)  # -1 and 5
    assert coverage(ranked, n_items=5, k=2) == pytest.approx(2 / 5)  # {0, 1}; 5 is not an item
    assert coverage(ranked, n_items=5, k=3) == pytest.approx(3 / 5)
    assert duplicate_rate(np.array([[1, 1, 2], [3, 4, -1]])) == pytest.approx(1 / 5)
    hist = Histories([np.array([1]), np.array([9])])
    assert seen_rate(np.array([[1, 2], [3, 4]]), hist) == pytest.approx(1 / 4)


def test_evaluate_ranking_keys_and_guard_on_short_lists():
    rng = np.random.default_rng(0)
    ranked = np.stack([rng.permutation(100)[:50] for _ in range(20)])
    out = evaluate_ranking(ranked, ranked[:, 4], n_items=100)
    for k in ("hr@1", "hr@5", "hr@10", "hr@50", "ndcg@5", "ndcg@10", "ndcg@50", "mrr", "coverage@10",
              "invalid_rate"):
        assert k in out
    assert out["hr@1"] == 0.0 and out["hr@5"] == 1.0
    assert out["ndcg@10"] == pytest.approx(1 / math.log2(6))
    with pytest.raises(ValueError, match="n >= 50"):
        evaluate_ranking(ranked[:, :10], ranked[:, 0], n_items=100)
    with pytest.raises(ValueError, match="cut-offs"):
        MetricsConfig(hr_ks=(0,))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=40))
def test_hr_and_ndcg_are_monotone_in_k_and_bounded(ranks):
    ranks = np.array(ranks)
    hrs = [hit_rate(ranks, k) for k in (1, 5, 10, 50)]
    nds = [ndcg(ranks, k) for k in (1, 5, 10, 50)]
    assert hrs == sorted(hrs) and nds == sorted(nds)
    for h, n in zip(hrs, nds):
        assert 0.0 <= n <= h <= 1.0
    assert 0.0 <= mrr(ranks) <= ndcg(ranks, 10**6) + 1e-12  # 1/r <= 1/log2(r+1)


def test_validity_counts_items_outside_the_catalog_and_not_live_ones():
    from models.evaluation.metrics import validity

    assert validity(np.array([[[0, 1, -1]]]), 5) == 1.0                     # -1 is an empty slot
    assert validity(np.array([[[0, 5, -7]]]), 5) == pytest.approx(1 / 3)
    assert validity(np.array([[[0, 1]]]), 5, live=np.arange(5) != 1) == 0.5
    assert validity(np.full((2, 3), -1), 5) == 1.0
