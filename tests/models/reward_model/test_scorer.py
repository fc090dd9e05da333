"""The aligner's interface: RewardModelScorer.score(histories, sessions [U, N, K]) -> [U, N]."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.evaluation.ranker import Histories
from models.reward_model.features import history_batch
from models.reward_model.model import RewardModel, RewardModelConfig
from models.reward_model.scorer import RewardModelScorer

torch.set_num_threads(1)


def _scorer(batch_rows: int = 4096) -> RewardModelScorer:
    torch.manual_seed(1)
    sids = np.stack([np.arange(40) % 6, np.arange(40) // 6 % 7], 1)
    return RewardModelScorer(RewardModel(RewardModelConfig(n_items=40, level_sizes=(6, 7), d_model=16), sids),
                             batch_rows)


def test_scores_match_the_model_and_do_not_depend_on_batching():
    rng = np.random.default_rng(0)
    hist = Histories([rng.integers(0, 40, n) for n in (0, 3, 9, 20)],
                     ts=[np.sort(rng.integers(0, 10**7, n)) for n in (0, 3, 9, 20)],
                     types=[rng.integers(0, 11, n) for n in (0, 3, 9, 20)])
    sessions = rng.integers(-1, 45, (4, 5, 3))   # indices >= 40: items the model never saw
    s = _scorer()
    out = s.score(hist, sessions)
    assert out.shape == (4, 5) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(_scorer(batch_rows=3).score(hist, sessions), out, rtol=1e-5, atol=1e-6)
    # one (user, session) pair through the model directly
    hb = history_batch(hist.subset([2]), s.model.cfg.max_history, s.model.cfg.n_time_buckets)
    with torch.no_grad():
        direct = s.model(hb, torch.as_tensor(sessions[2, 1:2])).value
    assert abs(float(direct) - out[2, 1]) < 1e-5
    assert s.score_heads(hist, sessions).shape == (4, 5, 4)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"sessions must be \[U=2, N, K\]"):
        _scorer().score(Histories([np.array([1]), np.array([2])]), np.zeros((3, 2, 2), np.int64))
