"""Personalisation metrics against brute-force definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from models.evaluation.personalisation import inter_user_diversity, per_user_ndcg, personalisation_report


def _brute_diversity(ranked: np.ndarray, k: int, n_items: int) -> float:
    sets = [{int(i) for i in row[:k] if 0 <= i < n_items} for row in ranked]
    overlaps = [len(a & b) / k for a, b in itertools.combinations(sets, 2)]
    return 1.0 - float(np.mean(overlaps))


def _brute_ndcg(row, target, k: int) -> float:
    for pos, item in enumerate(list(row)[:k]):
        if item == target:
            return 1.0 / math.log2(pos + 2)
    return 0.0


@pytest.mark.parametrize("seed", range(5))
def test_diversity_and_coverage_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_items, users, n = 30, 12, 15
    ranked = np.stack([rng.permutation(n_items)[:n] for _ in range(users)])
    ranked[rng.random(ranked.shape) < 0.1] = -1                       # empty slots never count
    ranked[0, 3] = n_items + 4                                        # out of catalog: an empty slot too
    for k in (1, 5, 10):
        assert inter_user_diversity(ranked, k, n_items) == pytest.approx(_brute_diversity(ranked, k, n_items))
    rep = personalisation_report(torch.as_tensor(ranked), np.zeros(users, np.int64), n_items, k=10)
    distinct = {int(i) for i in ranked[:, :10].ravel() if 0 <= i < n_items}
    assert rep.coverage == pytest.approx(len(distinct) / n_items)
    assert rep.diversity == pytest.approx(_brute_diversity(ranked, 10, n_items))
    assert math.isnan(rep.beats_baseline) and rep.n_users == users


def test_diversity_extremes_and_repeats():
    same = np.tile(np.arange(10), (4, 1))
    assert inter_user_diversity(same, 10) == pytest.approx(0.0)
    disjoint = np.arange(40).reshape(4, 10)
    assert inter_user_diversity(disjoint, 10) == pytest.approx(1.0)
    # an item repeated inside one list is shared once with another list, as with sets
    rep = np.array([[1, 1, 2], [1, 3, 4]])
    assert inter_user_diversity(rep, 3) == pytest.approx(_brute_diversity(rep, 3, 10)) == pytest.approx(2 / 3)
    assert math.isnan(inter_user_diversity(same[:1], 10))
    with pytest.raises(ValueError, match="k=0"):
        inter_user_diversity(same, 0)


@pytest.mark.parametrize("seed", range(3))
def test_win_loss_shares_match_per_user_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_items, users = 20, 50
    model = np.stack([rng.permutation(n_items)[:10] for _ in range(users)])
    base = np.stack([rng.permutation(n_items)[:10] for _ in range(users)])
    targets = rng.integers(0, n_items, users)
    g = np.array([_brute_ndcg(r, t, 10) for r, t in zip(model, targets)])
    b = np.array([_brute_ndcg(r, t, 10) for r, t in zip(base, targets)])
    assert np.allclose(per_user_ndcg(model, targets, 10), g)
    rep = personalisation_report(model, targets, n_items, baseline_ranked=base, k=10)
    assert rep.beats_baseline == pytest.approx(np.mean(g > b))
    assert rep.loses_to_baseline == pytest.approx(np.mean(g < b))
    with pytest.raises(ValueError, match="baseline lists"):
        personalisation_report(model, targets, n_items, baseline_ranked=base[:3])
