"""Popularity baseline: counts from training only, seen items excluded, deterministic ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.baselines.popularity import PopularityConfig, PopularityRanker
from models.evaluation.ranker import Histories, topn_from_scores


def test_ranks_by_training_counts_excluding_seen_items():
    train = Histories([np.array([0, 1, 2]), np.array([2, 1]), np.array([2, 3])])
    pop = PopularityRanker(5).fit(train)
    # counts: 2 -> 3, 1 -> 2, 0 -> 1, 3 -> 1, 4 -> 0; tie 0/3 breaks to the lower index
    assert pop.rank(Histories([np.array([], dtype=np.int64)]), 5).tolist() == [[2, 1, 0, 3, 4]]
    assert pop.rank([[2]], 3).tolist() == [[1, 0, 3]]
    assert pop.rank([[2, 1, 0, 3]], 3).tolist() == [[4, -1, -1]]  # catalog exhausted -> -1 padding
    keep = PopularityRanker(5, PopularityConfig(exclude_seen=False)).fit(train)
    assert keep.rank([[2]], 2).tolist() == [[2, 1]]


def test_recency_weighting_prefers_recent_items():
    train = Histories([np.array([0, 0, 0, 1, 1])], ts=[np.array([1, 2, 3, 4, 5])])
    assert PopularityRanker(2).fit(train).rank([[]], 1).tolist() == [[0]]
    recent = PopularityRanker(2, PopularityConfig(recent_weight_halflife=0.5)).fit(train)
    assert recent.rank([[]], 1).tolist() == [[1]]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        PopularityRanker(3).fit(Histories([np.array([0, 5])]))
    with pytest.raises(ValueError, match="halflife"):
        PopularityConfig(recent_weight_halflife=-1)
    with pytest.raises(ValueError, match="same length"):
        Histories([np.array([1, 2])], ts=[np.array([1])])
    with pytest.raises(ValueError, match="n must be"):
        topn_from_scores(torch.zeros(1, 3), Histories([[]]), 0)
