"""SASRec baseline: learns a deterministic sequential pattern that popularity cannot see."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.evaluation.metrics import evaluate_ranking, invalid_rate
from models.baselines.popularity import PopularityRanker
from models.baselines.sasrec import SASRec, SASRecConfig
from models.evaluation.splits import leave_one_out

N_ITEMS = 24


def _cyclic_log(n_users=48, length=10, seed=0):
    """Every user walks the item cycle 0 -> 1 -> ... -> 23 -> 0 from a random start."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start = rng.integers(N_ITEMS)
        for t in range(length):
            users.append(u)
            items.append(f"i{(start + t) % N_ITEMS}")
            ts.append(1000 * u + t)
    return np.array(users), np.array(items), np.array(ts)


def test_sasrec_learns_the_cycle_far_above_popularity():
    torch.set_num_threads(1)
    sp = leave_one_out(*_cyclic_log())
    test = sp.test()
    cfg = SASRecConfig(max_len=10, d_model=32, heads=2, layers=1, dropout=0.0, lr=5e-3, batch_size=64,
                       epochs=60, eval_every=10, patience=3, seed=0)
    model = SASRec(sp.n_items, cfg).fit(sp.train(), sp.valid())
    ranked = model.rank(test.histories, 50)
    got = evaluate_ranking(ranked, test.targets, sp.n_items)
    pop = PopularityRanker(sp.n_items).fit(sp.train())
    base = evaluate_ranking(pop.rank(test.histories, 50), test.targets, sp.n_items)
    assert got["hr@1"] >= 0.8, got
    assert got["ndcg@10"] >= base["ndcg@10"] + 0.4, (got, base)
    assert invalid_rate(ranked[:, :10], sp.n_items) == 0.0  # beyond 15 unseen items the rows pad with -1
    assert model.best_epoch >= 1 and model.train_s > 0


def test_seen_items_are_never_ranked_and_odd_histories_do_not_crash():
    model = SASRec(N_ITEMS, SASRecConfig(max_len=8, d_model=16, heads=2, layers=1, epochs=1))
    long_hist = np.arange(N_ITEMS - 3)                    # longer than max_len
    hists = [long_hist, np.array([], dtype=np.int64), np.array([3, -1, 999])]  # unknown ids are dropped
    ranked = model.rank(hists, 5)
    assert ranked.shape == (3, 5)
    assert not np.isin(ranked[0].numpy(), long_hist).any()
    assert (ranked[1] >= 0).all() and 3 not in ranked[2].tolist()
    ranked_all = model.rank([long_hist], 50)
    assert (ranked_all[0, :3] >= 0).all() and (ranked_all[0, 3:] == -1).all()  # only 3 unseen items


def test_bce_variant_trains_and_state_round_trips():
    sp = leave_one_out(*_cyclic_log(n_users=8, length=6))
    cfg = SASRecConfig(max_len=6, d_model=16, heads=1, layers=1, loss="bce", epochs=2)
    model = SASRec(sp.n_items, cfg).fit(sp.train())
    again = SASRec.from_state(model.state())
    h = sp.test().histories
    assert torch.equal(model.scores(h), again.scores(h))
    with pytest.raises(ValueError, match="version"):
        SASRec.from_state({"version": "other"})
    with pytest.raises(ValueError, match="loss must be"):
        SASRecConfig(loss="hinge")
