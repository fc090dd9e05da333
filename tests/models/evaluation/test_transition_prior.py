"""The last item's transition prior: counts against a per-pair loop, the union ranking with the prior against a
per-item reference, the weight chosen on validation users, and errors that name the fix."""

import math

import numpy as np
import pytest
import torch

from models.decoding.constraint import SidConstraint
from models.decoding.search import beam_topn
from models.evaluation.generator_ranker import GeneratorRanker, build_trie
from models.evaluation.ranker import as_histories, seen_mask
from models.evaluation.transition_prior import TransitionPrior, last_items
from models.generator.features import history_batch
from models.generator.model import GeneratorConfig, GenerativeRecommender

SIZES = (5, 4, 3)
N_ITEMS = 20
SIDS = np.stack([np.arange(N_ITEMS) % 5, (np.arange(N_ITEMS) // 5) % 4, np.arange(N_ITEMS) // 10 % 3], 1)


def _model(seed: int = 0, item_head: bool = True) -> GenerativeRecommender:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(level_sizes=SIZES, d_model=16, heads=2, max_history=8, session_len=2, item_head=item_head)
    return GenerativeRecommender(cfg).eval()


def test_counts_are_log1p_of_distance_weighted_co_occurrences_within_the_window():
    seqs = [np.array([0, 1, 2, 1]), np.array([3, 0]), np.array([4])]
    prior = TransitionPrior.fit(seqs, 6, window=2)
    want = np.zeros((6, 6))
    for s in seqs:                                                  # every pair at distance 1..window, both ways
        for a in range(len(s)):
            for b in range(a + 1, min(len(s), a + 3)):
                if s[a] != s[b]:
                    want[s[a], s[b]] += 1.0 / (b - a)
                    want[s[b], s[a]] += 1.0 / (b - a)
    got = prior.scores(np.array([0, 1, 2, 3, 4, 5, -1]))            # [7, 6]
    np.testing.assert_allclose(got[:6].numpy(), np.log1p(want), rtol=1e-6)
    assert torch.count_nonzero(got[6]) == 0                         # no last item: no prior
    assert math.isclose(float(got[1, 2]), math.log1p(2.0), rel_tol=1e-6)   # 1->2 and 2->1 at distance 1
    assert last_items(as_histories([[3, 7], [], [5]])).tolist() == [7, -1, 5]
    with pytest.raises(ValueError, match="window"):
        TransitionPrior.fit(seqs, 6, window=0)


@pytest.mark.parametrize("weight", [0.0, 1.5])
def test_union_ranking_adds_the_weighted_prior_of_the_last_item(weight):
    """Against a per-item loop: score = head log-softmax over live unseen items + 0.5 for the beam's items
    + weight x log(1 + c(last, item)); weight 0 is exactly the ranking without a prior."""
    m = _model(3)
    hists = [[1, 2, 3], [7], [10, 11, 12, 13], []]
    prior = TransitionPrior.fit([np.array([3, 9, 4, 3, 16]), np.array([7, 0, 19, 7, 5]), np.array([13, 8])], N_ITEMS)
    trie = build_trie(SIDS, SIZES)
    ranker = GeneratorRanker(m, SIDS, beam_width=6, trie=trie, transition=prior, transition_weight=weight)
    got = ranker.rank(hists, 10)                                                      # [4, 10]
    plain = GeneratorRanker(m, SIDS, beam_width=6, trie=trie).rank(hists, 10)
    if weight == 0.0:
        assert torch.equal(got, plain)
    hb = history_batch(hists, SIDS, m.cfg.max_history, m.cfg.n_time_buckets)
    seen = seen_mask(as_histories(hists), N_ITEMS, torch.device("cpu"))
    cand = beam_topn(m, hb, SidConstraint.of(trie), 10, beam_width=10, seen=seen).items
    with torch.no_grad():
        logits = m.item_scores(m.user_states(m.encode(hb)), torch.from_numpy(SIDS))   # [4, I]
    dense = prior.log_counts.toarray()
    for r, h in enumerate(hists):
        ok = [i for i in range(N_ITEMS) if i not in h]
        z = torch.logsumexp(logits[r, ok], 0)
        beam = {int(x) for x in cand[r] if x >= 0}
        score = {i: float(logits[r, i] - z) + (0.5 if i in beam else 0.0)
                 + (weight * dense[h[-1], i] if h else 0.0) for i in ok}
        assert got[r].tolist() == sorted(ok, key=lambda i: -score[i])[:10]
    assert not torch.equal(got, plain) or weight == 0.0              # the prior moved some list
    by_w = ranker.rank_by_weights(hists, 10, (0.0, weight))
    assert torch.equal(by_w[0.0], plain) and torch.equal(by_w[weight], got)


def test_a_large_weight_puts_the_last_items_neighbours_first():
    m = _model(4)
    prior = TransitionPrior.fit([np.array([2, 17]), np.array([17, 2, 11])], N_ITEMS)
    top = GeneratorRanker(m, SIDS, beam_width=6, transition=prior, transition_weight=50.0).rank([[5, 2]], 3)
    assert set(top[0, :2].tolist()) == {17, 11} and top[0, 0] == 17      # 17 at distance 1 twice, 11 once at 1


def test_errors_name_the_fix():
    prior = TransitionPrior.fit([np.array([0, 1])], N_ITEMS)
    with pytest.raises(ValueError, match="item_head=True"):
        GeneratorRanker(_model(item_head=False), SIDS, transition=prior)
    with pytest.raises(ValueError, match="beam_bonus"):
        GeneratorRanker(_model(), SIDS, transition=prior, beam_bonus=None)
    with pytest.raises(ValueError, match="transition_weight"):
        GeneratorRanker(_model(), SIDS, transition=prior, transition_weight=-1.0)
    with pytest.raises(ValueError, match="catalog has 20"):
        GeneratorRanker(_model(), SIDS, transition=TransitionPrior.fit([np.array([0, 1])], 5))
    with pytest.raises(ValueError, match="TransitionPrior.fit"):
        GeneratorRanker(_model(), SIDS).rank_by_weights([[1]], 5, (0.0,))
