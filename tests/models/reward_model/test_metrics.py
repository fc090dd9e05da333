"""AUC, calibration and rank correlation of reward-model predictions."""

from __future__ import annotations

import numpy as np

from models.reward_model.data import targets_from_components
from models.reward_model.metrics import (auc, calibration, head_report, rank_correlation,
                                         within_user_rank_correlation)


def test_calibration_of_a_calibrated_and_a_biased_predictor():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20_000)
    y = (rng.uniform(0, 1, p.size) < p).astype(float)
    good = calibration(p, y, 10)
    assert good.ece < 0.02 and sum(b[2] for b in good.bins) == p.size
    biased = calibration(np.clip(p + 0.2, 0, 1), y, 10)
    assert biased.ece > 0.1 and biased.mean_pred > biased.mean_obs


def test_auc_and_rank_correlation():
    assert auc([0.1, 0.9, 0.8, 0.2], [0, 1, 1, 0]) == 1.0
    assert np.isnan(auc([0.1, 0.2], [1, 1]))
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert np.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))
    # per user: right order for user 0, reversed for user 1, constant (skipped) for user 2
    pred = np.array([[1, 2, 3], [1, 2, 3], [5, 5, 5]])
    true = np.array([[1, 2, 3], [3, 2, 1], [1, 2, 3]])
    assert within_user_rank_correlation(pred, true) == 0.0
    assert within_user_rank_correlation(pred[:1], true[:1]) == 1.0


def test_targets_and_head_report():
    t = targets_from_components({"impressions": 4, "clicks": 1, "likes": 0, "skips": 2, "dislikes": 1,
                                 "watch_fraction": 0.6})
    np.testing.assert_allclose(t, [0.25, 0.0, 0.6, 0.75])
    assert np.isnan(targets_from_components({"impressions": 3, "clicks": 0})[2])  # no watch fraction known
    targets = np.array([[0.0, 0, np.nan, 0.8], [0.5, 0.25, 0.9, 0.1], [0.25, 0, 0.2, 0.6], [0, 0, np.nan, 0.9]])
    rates = np.array([[0.01, 0.0, 0.5, 0.7], [0.4, 0.2, 0.8, 0.2], [0.3, 0.0, 0.3, 0.5], [0.05, 0.01, 0.5, 0.8]])
    rep = head_report(rates, targets)
    assert rep["rm_auc_click"] == 1.0 and rep["rm_auc_skip"] == 1.0
    assert rep["rm_n_watch"] == 2.0 and rep["rm_auc_watch"] == 1.0
