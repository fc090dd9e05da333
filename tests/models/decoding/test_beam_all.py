"""The whole final beam: its best beam is beam_session's, every beam a distinct valid session."""

from __future__ import annotations

import numpy as np
import torch

from models.decoding.beam_all import beam_candidates
from models.decoding.constraint import SidConstraint
from models.decoding.search import beam_session
from models.evaluation.generator_ranker import build_trie
from models.generator.model import GenerativeRecommender, GeneratorConfig, HistoryBatch

torch.set_num_threads(1)


def _setup(n_items: int = 40):
    torch.manual_seed(0)
    levels = (4, 4, 4)
    rng = np.random.default_rng(0)
    keys = rng.choice(64, size=n_items, replace=False)
    item_sids = np.stack([keys // 16, (keys // 4) % 4, keys % 4], 1)
    model = GenerativeRecommender(GeneratorConfig(level_sizes=levels, d_model=16, heads=2, enc_layers=1, dec_layers=1,
                                                  max_history=6, session_len=3, dropout=0.0)).eval()
    b, s = 3, 5
    hist = HistoryBatch(torch.from_numpy(item_sids[rng.integers(0, n_items, (b, s))]), torch.ones(b, s, dtype=torch.long),
                        torch.ones(b, s, dtype=torch.long), torch.ones(b, s, dtype=torch.bool))
    return model, item_sids, hist, SidConstraint.of(build_trie(item_sids, levels), "cpu")


def test_best_beam_is_beam_session_and_all_beams_are_valid_distinct_sessions():
    model, item_sids, hist, con = _setup()
    W = 6
    seen = torch.zeros(3, len(item_sids), dtype=torch.bool)
    seen[:, :5] = True
    res = beam_candidates(model, hist, con, beam_width=W, seen=seen)
    best = beam_session(model, hist, con, beam_width=W, seen=seen)
    assert res.items.shape == (3, W, 3) and res.sids.shape == (3, W, 3, 3) and res.scores.shape == (3, W)
    assert torch.equal(res.items[:, 0], best.items)
    assert torch.allclose(res.scores[:, 0], best.scores.sum(1), atol=1e-5)
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()                      # best first
    items = res.items.numpy()
    assert ((items >= 5) & (items < len(item_sids))).all()                        # catalog items, seen excluded
    assert (item_sids[items] == res.sids.numpy()).all()                           # codes are the items' SIDs
    for u in range(3):
        assert len({tuple(r) for r in items[u]}) == W                             # distinct sessions
        assert all(len(set(r)) == 3 for r in items[u])                           # no repeats within one


def test_more_beams_than_sessions_leaves_dead_beams_empty():
    model, item_sids, hist, con = _setup(n_items=3)
    res = beam_candidates(model, hist, con, beam_width=8)                          # only 3! = 6 orderings exist
    live = torch.isfinite(res.scores)
    assert live.sum(1).tolist() == [6, 6, 6]
    assert (res.items[~live] == -1).all() and (res.items[live] >= 0).all()
