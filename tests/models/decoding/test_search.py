"""Constrained decoding: trie validity, beam(1) == greedy, no repeats, exclude-seen, top-N, cold start."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.decoding.constraint import ConstraintConfig, SidConstraint
from models.decoding.search import beam_session, beam_topn, greedy_session
from models.generator.model import BOS
from models.generator.model import GenerativeRecommender, GeneratorConfig
from models.evaluation.generator_ranker import GeneratorRanker, build_trie
from models.generator.features import history_batch
from models.evaluation.ranker import Histories
from models.sid.trie import SidTrie

torch.set_num_threads(1)

LEVELS = (4, 4, 3)
N_ITEMS = 25


@pytest.fixture(scope="module")
def catalog():
    """25 items with unique SIDs drawn from a sparse corner of the 4x4x3 space (many invalid prefixes)."""
    rng = np.random.default_rng(0)
    space = np.array([(a, b, c) for a in range(3) for b in range(4) for c in range(3)])  # level-0 code 3 unused
    sids = space[rng.choice(len(space), N_ITEMS, replace=False)]
    return sids, build_trie(sids, LEVELS)


def con(trie, no_repeat=True):
    return SidConstraint.of(trie, config=ConstraintConfig(no_repeat=no_repeat))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GeneratorConfig(level_sizes=LEVELS, d_model=32, heads=2, dropout=0.0, max_history=8, session_len=4)
    return GenerativeRecommender(cfg).eval()


def _hist(sids, rows):
    return history_batch([np.asarray(r, dtype=np.int64) for r in rows], sids, 8, 16)


ROWS = [[1, 2, 3], [], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [0]]


def test_trie_constraint_never_yields_invalid_items(catalog, model):
    sids, trie = catalog
    h = _hist(sids, ROWS)
    for out in (greedy_session(model, h, con(trie), session_len=6),
                beam_session(model, h, con(trie), session_len=6, beam_width=3)):
        items = out.items.numpy()
        assert (items >= 0).all() and (items < N_ITEMS).all()
        # the generated codes are exactly the SIDs of the returned items
        assert np.array_equal(out.sids.numpy(), sids[items])
    top = beam_topn(model, h, con(trie), 10)
    assert ((top.items >= 0) & (top.items < N_ITEMS)).all()
    assert np.array_equal(np.sort(top.scores.numpy(), axis=1)[:, ::-1], top.scores.numpy())


def test_untrained_model_would_emit_invalid_codes_without_trie(catalog, model):
    """The constraint matters: the unconstrained argmax hits SIDs that are no item."""
    sids, trie = catalog
    h = _hist(sids, ROWS)
    with torch.no_grad():                                   # unconstrained greedy decoding, 6 items
        mem = model.encode(h)
        cache, tok, codes = model.start_cache(mem), torch.full((len(ROWS), 1), BOS), []
        for pos in range(6 * 3):
            out = model.decode(tok, None, cache, pos)
            cache, tok = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
            codes.append(tok)
    invalid = (trie.lookup(torch.cat(codes, 1).reshape(-1, 3).numpy()) < 0).mean()
    assert invalid > 0


def test_beam_width_one_equals_greedy(catalog, model):
    sids, trie = catalog
    h = _hist(sids, ROWS)
    g = greedy_session(model, h, con(trie), session_len=5)
    b = beam_session(model, h, con(trie), session_len=5, beam_width=1)
    assert torch.equal(g.items, b.items)
    assert torch.equal(g.sids, b.sids)
    assert torch.allclose(g.scores, b.scores, atol=1e-5)
    assert g.stats["forwards"] == b.stats["forwards"] == 5 * 3


def test_wider_beam_scores_at_least_greedy(catalog, model):
    sids, trie = catalog
    h = _hist(sids, ROWS)
    g = greedy_session(model, h, con(trie), session_len=4)
    b = beam_session(model, h, con(trie), session_len=4, beam_width=6)
    assert (b.scores.sum(1) >= g.scores.sum(1) - 1e-5).all()


def test_no_repeats_within_session(catalog, model):
    sids, trie = catalog
    h = _hist(sids, ROWS)
    for out in (greedy_session(model, h, con(trie), session_len=N_ITEMS),
                beam_session(model, h, con(trie), session_len=12, beam_width=3)):
        for row in out.items.numpy():
            assert len(set(row.tolist())) == len(row)
    # the whole catalog fits in one session of N_ITEMS: every item exactly once
    full = greedy_session(model, h, con(trie), session_len=N_ITEMS).items.numpy()
    assert all(sorted(r.tolist()) == list(range(N_ITEMS)) for r in full)
    # without the no-repeat source, an untrained model does repeat
    rep = greedy_session(model, h, con(trie, no_repeat=False), session_len=8).items.numpy()
    assert any(len(set(r.tolist())) < len(r) for r in rep)


def test_exclude_seen(catalog, model):
    sids, trie = catalog
    h = _hist(sids, ROWS)
    seen = torch.zeros(len(ROWS), N_ITEMS, dtype=torch.bool)
    for b, r in enumerate(ROWS):
        seen[b, r] = True
    out = greedy_session(model, h, con(trie), session_len=8, seen=seen).items.numpy()
    top = beam_topn(model, h, con(trie, no_repeat=False), 10, seen=seen)
    for b, r in enumerate(ROWS):
        assert not set(out[b].tolist()) & set(r)
        assert not set(top.items[b].tolist()) & set(r)
    # a user who has seen everything but 2 items: the session holds those 2, then -1 (never an invalid item)
    seen_all = torch.ones(1, N_ITEMS, dtype=torch.bool)
    seen_all[0, [3, 17]] = False
    o = greedy_session(model, _hist(sids, [[1]]), con(trie), session_len=4, seen=seen_all)
    assert sorted(o.items[0, :2].tolist()) == [3, 17] and o.items[0, 2:].tolist() == [-1, -1]


def test_topn_distinct_and_matches_session_first_item(catalog, model):
    sids, trie = catalog
    h = _hist(sids, ROWS)
    top = beam_topn(model, h, con(trie), 8, beam_width=N_ITEMS * 3)
    for row in top.items.numpy():
        assert len(set(row.tolist())) == len(row)
    # with an exhaustive beam, the top-1 item is the best single item, which a 1-item beam session also finds
    s = beam_session(model, h, con(trie), session_len=1, beam_width=N_ITEMS * 3)
    assert torch.equal(s.items[:, 0], top.items[:, 0])
    # n larger than the catalog: padded with -1 / -inf
    big = beam_topn(model, h, con(trie), N_ITEMS + 5)
    assert (big.items[:, N_ITEMS:] == -1).all() and torch.isinf(big.scores[:, N_ITEMS:]).all()


def test_cold_start_session_is_valid_and_personalisable(catalog, model):
    sids, trie = catalog
    h = _hist(sids, [[], [], [5, 6]])
    out = greedy_session(model, h, con(trie), session_len=5)
    assert (out.items >= 0).all()
    assert torch.equal(out.items[0], out.items[1])          # same (empty) input -> same session
    assert torch.isfinite(out.scores).all()


def test_unknown_history_items_are_dropped(catalog, model):
    sids, trie = catalog
    a = _hist(sids, [[1, 2, 999, -5, 3]])
    b = _hist(sids, [[1, 2, 3]])
    assert torch.equal(a.sids, b.sids) and torch.equal(a.mask, b.mask)


def test_trie_level_mismatch_is_a_clear_error(model):
    trie = SidTrie((4, 4))
    trie.add(np.array([[0, 1]]), np.array([0]))
    with pytest.raises(ValueError, match="level_sizes"):
        beam_topn(model, _hist(np.zeros((1, 3), dtype=np.int64), [[0]]), con(trie), 1)


def test_retired_items_are_never_generated(catalog, model):
    sids, _ = catalog
    trie = build_trie(sids, LEVELS)
    h = _hist(sids, ROWS)
    before = beam_topn(model, h, con(trie), 5).items
    gone = np.unique(before[:, 0].numpy())
    trie.remove(gone)
    after = beam_topn(model, h, con(trie), 5).items
    assert not set(after.reshape(-1).tolist()) & set(gone.tolist())


def test_generator_ranker(catalog, model):
    sids, trie = catalog
    ranker = GeneratorRanker(model, sids, beam_width=10, batch_size=2)
    hist = Histories([np.array(r, dtype=np.int64) for r in ROWS])
    ranked = ranker.rank(hist, 5)
    assert ranked.shape == (len(ROWS), 5) and ranked.dtype == torch.long
    for b, r in enumerate(ROWS):
        assert not set(ranked[b].tolist()) & set(r)
        assert ((ranked[b] >= 0) & (ranked[b] < N_ITEMS)).all()


@pytest.mark.parametrize("width", [1, 3])
def test_lock_step_fast_path_equals_the_general_path(catalog, model, width, monkeypatch):
    """beam_session / beam_topn pass each step's SID level, so SidConstraint takes mask_at / advance_at;
    with the level hidden the same searches take mask / advance: sessions, scores and top-N must agree."""
    from models.decoding import search

    sids, trie = catalog
    hist = _hist(sids, ROWS)
    seen = [[1, 2], [], [5], [0, 3]]
    for no_repeat in (True, False):
        c = con(trie, no_repeat)
        fast = (beam_session(model, hist, c, beam_width=width, seen=seen), beam_topn(model, hist, c, 5, seen=seen))
        with monkeypatch.context() as m:
            for name in ("_logprobs", "_advance"):
                m.setattr(search, name, (lambda f: lambda con_, x, st, level: f(con_, x, st, None))(getattr(search, name)))
            slow = (beam_session(model, hist, c, beam_width=width, seen=seen), beam_topn(model, hist, c, 5, seen=seen))
        assert torch.equal(fast[0].items, slow[0].items) and torch.allclose(fast[0].scores, slow[0].scores, atol=1e-6)
        assert torch.equal(fast[1].items, slow[1].items) and torch.allclose(fast[1].scores, slow[1].scores, atol=1e-6)
