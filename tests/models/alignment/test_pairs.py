"""Chosen / rejected pairs from scored candidates and ±1 feedback advantages."""

from __future__ import annotations

import numpy as np
import pytest

from models.alignment.pairs import feedback_advantages, select_pairs


def test_best_and_worst_ties_skipped_invalid_excluded():
    scores = np.array([[0.1, 0.9, 0.5, 0.2],
                       [0.3, 0.3, 0.3, 0.3],      # a tie: skipped
                       [0.9, 0.9, 0.1, np.nan],   # tie for best -> lower index; NaN not usable
                       [5.0, 0.0, 1.0, 2.0]])
    valid = np.ones_like(scores, dtype=bool)
    valid[3, 1] = False                           # an incomplete session is never chosen or rejected
    p = select_pairs(scores, valid)
    assert p.user.tolist() == [0, 2, 3]
    assert p.chosen.tolist() == [1, 0, 0]
    assert p.rejected.tolist() == [0, 2, 2]
    assert np.allclose(p.gap, [0.8, 0.8, 4.0])


def test_bottom_k_draws_only_from_the_k_worst():
    rng = np.random.default_rng(0)
    scores = np.array([[10.0, 1.0, 2.0, 3.0, 4.0, 9.0]])
    drawn = {int(select_pairs(scores, bottom_k=3, rng=rng).rejected[0]) for _ in range(200)}
    assert drawn == {1, 2, 3}
    # a bottom-k pool never contains a candidate tied with the best
    p = select_pairs(np.array([[1.0, 1.0, 0.0]]), bottom_k=2, rng=rng)
    assert p.rejected.tolist() == [2]


def test_select_pairs_refuses_bad_shapes():
    with pytest.raises(ValueError, match=r"\[U, N\]"):
        select_pairs(np.zeros(3))
    with pytest.raises(ValueError, match="bottom_k"):
        select_pairs(np.zeros((2, 3)), bottom_k=0)


def test_keep_share_keeps_the_largest_relative_gaps_in_user_order():
    scores = np.array([[1.0, 0.0, 0.5],      # gap 1.0, mean 0.5: relative 2.0
                       [10.0, 9.0, 9.5],     # gap 1.0, mean 9.5: relative 0.105 (largest absolute, least sure)
                       [0.4, 0.1, 0.2],      # gap 0.3, mean 0.233: relative 1.29
                       [2.0, 1.9, 1.95]])    # gap 0.1, mean 1.95: relative 0.05
    assert select_pairs(scores).user.tolist() == [0, 1, 2, 3]
    p = select_pairs(scores, keep_share=0.5)
    assert p.user.tolist() == [0, 2]
    assert np.allclose(p.gap, [1.0, 0.3])
    assert select_pairs(scores, keep_share=0.01).user.tolist() == [0]      # at least one pair
    with pytest.raises(ValueError, match="keep_share"):
        select_pairs(scores, keep_share=0.0)


def test_feedback_advantages_by_the_users_own_mean():
    users = np.array(["a", "a", "a", "b", "b", "c"])
    rewards = np.array([1.0, 2.0, 3.0, 5.0, 5.0, 7.0])
    adv = feedback_advantages(users, rewards)
    assert adv.tolist() == [-1, 0, 1, 0, 0, 0]    # b ties, c has one session: no signal
    adv = feedback_advantages(users, rewards, disliked=np.array([0, 0, 1, 0, 0, 0], dtype=bool))
    assert adv.tolist() == [-1, 0, -1, 0, 0, 0]   # an explicit dislike is −1 whatever the reward
    with pytest.raises(ValueError, match=r"\[M\]"):
        feedback_advantages(users, rewards[:3])
