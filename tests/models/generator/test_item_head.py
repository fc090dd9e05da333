"""The item head (LIGER-style): every encoder position scores catalog items; ranking orders the catalog by it,
the beam's candidates lifted (union), or the beam's candidates alone (rerank)."""

import numpy as np
import pytest
import torch

from models.decoding.constraint import SidConstraint
from models.decoding.search import beam_topn
from models.evaluation.generator_ranker import GeneratorRanker, build_trie, rerank_by_item_head
from models.evaluation.ranker import as_histories, seen_mask
from models.generator.checkpoint import GeneratorBundle, decode, encode
from models.generator.features import history_batch
from models.generator.model import GeneratorConfig, GenerativeRecommender, HistoryBatch
from models.generator.training import TrainConfig, fit_generator, item_head_loss

SIZES = (5, 4, 3)
N_ITEMS = 20
SIDS = np.stack([np.arange(N_ITEMS) % 5, (np.arange(N_ITEMS) // 5) % 4, np.arange(N_ITEMS) // 10 % 3], 1)


def _model(seed: int = 0, **kw) -> GenerativeRecommender:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(level_sizes=SIZES, d_model=16, heads=2, max_history=8, session_len=2, item_head=True, **kw)
    return GenerativeRecommender(cfg).eval()


def test_item_scores_shapes_and_forward_anchors_scores_the_catalog():
    m = _model()
    cat = torch.from_numpy(SIDS)
    states = torch.randn(3, 16)
    full = m.item_scores(states, cat)                                         # [3, I]
    assert full.shape == (3, N_ITEMS)
    cand = torch.tensor([[4, 0, 7], [1, 1, 2], [19, 3, 5]])
    torch.testing.assert_close(m.item_scores(states, cat[cand]), full.gather(1, cand))   # per-row candidates
    g = torch.Generator().manual_seed(1)
    win = HistoryBatch(cat[torch.randint(0, N_ITEMS, (2, 8), generator=g)], torch.full((2, 8), 2),
                       torch.full((2, 8), 3), torch.ones(2, 8, dtype=torch.bool))
    row, alen = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 8])
    tgt = cat[torch.tensor([[1, 2], [3, 4], [5, 6]])]
    out = m.forward_anchors(win, row, alen, tgt, item_sids=cat)
    states = m.encode(win).states[row, alen]                                  # last history state (0: user token)
    torch.testing.assert_close(out.item_logits, m.item_scores(states, cat))
    assert m.forward_anchors(win, row, alen, tgt).item_logits is None          # no catalog, no item logits


def test_item_head_loss_is_the_cross_entropy_of_targets_and_skips_missing_ones():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]])
    got = item_head_loss(logits, torch.tensor([0, -1, 1]))
    want = (-torch.log_softmax(logits[0], 0)[0] - torch.log_softmax(logits[2], 0)[1]) / 2
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="item_loss_weight"):
        TrainConfig(item_loss_weight=-0.5)
    with pytest.raises(ValueError, match="item_head"):
        GeneratorConfig(level_sizes=SIZES, item_head=1)
    with pytest.raises(ValueError, match="item_head=True"):
        GenerativeRecommender(GeneratorConfig(level_sizes=SIZES)).item_scores(torch.zeros(1, 64), torch.from_numpy(SIDS))


def test_training_learns_the_item_head():
    """A deterministic successor world: after training, the item head ranks each item's successor first far
    more often than chance, and the loss fell."""
    rng = np.random.default_rng(0)
    seqs = [(int(rng.integers(0, N_ITEMS)) + np.arange(int(rng.integers(4, 9)))) % N_ITEMS for _ in range(80)]
    gcfg = GeneratorConfig(level_sizes=SIZES, d_model=32, heads=2, max_history=8, session_len=1, item_head=True)
    model, rep = fit_generator(seqs, SIDS, gcfg, TrainConfig(epochs=15, batch_size=128, progress=False, lr=1e-2,
                                                             warmup_frac=0.0), validate=False)
    model.eval()
    last = np.arange(N_ITEMS)
    hb = history_batch([[(i - 1) % N_ITEMS, i] for i in last], SIDS, gcfg.max_history, gcfg.n_time_buckets)
    with torch.no_grad():
        top = model.item_scores(model.user_states(model.encode(hb)), torch.from_numpy(SIDS)).argmax(1).numpy()
    assert (top == (last + 1) % N_ITEMS).mean() > 0.5                         # chance is 1 / 20
    assert rep.train_loss[-1] < rep.train_loss[0]


def test_ranker_orders_the_beams_candidates_by_the_item_head():
    m = _model(3)
    hists = [[1, 2, 3], [7], [10, 11, 12, 13]]
    ranker = GeneratorRanker(m, SIDS, beam_width=12, beam_bonus=None)
    got = ranker.rank(hists, 5)
    hb = history_batch(hists, SIDS, m.cfg.max_history, m.cfg.n_time_buckets)
    cand = beam_topn(m, hb, SidConstraint.of(ranker.trie), 12, beam_width=12,
                     seen=seen_mask(as_histories(hists), N_ITEMS, torch.device("cpu"))).items
    with torch.no_grad():
        scores = m.item_scores(m.user_states(m.encode(hb)), torch.from_numpy(SIDS))     # [3, I]
    for r in range(3):
        c = [int(x) for x in cand[r] if x >= 0]
        want = sorted(c, key=lambda i: -float(scores[r, i]))[:5]
        assert got[r].tolist() == want                                         # the beam's items, head's order
        assert not set(want) & set(hists[r])
    items = torch.tensor([[3, -1, 5]])
    hb1 = history_batch(hists[:1], SIDS, m.cfg.max_history, m.cfg.n_time_buckets)
    out = rerank_by_item_head(m, m.encode(hb1), items, torch.from_numpy(SIDS))
    assert out[0, -1] == -1                                                   # padding stays last
    back = decode(*encode(GeneratorBundle(m))).model                            # safetensors + JSON round trip
    assert back.cfg.item_head and torch.equal(GeneratorRanker(back.eval(), SIDS, beam_width=12, beam_bonus=None)
                                              .rank(hists, 5), got)


@pytest.mark.parametrize("bonus", [0.0, 0.5, 100.0])
def test_union_ranking_is_the_head_over_the_live_unseen_catalog_with_the_beams_items_lifted(bonus):
    """Against a per-item loop: score = log-softmax of the head over live unseen items + bonus for the beam's
    items. Bonus 0 is the head alone; a bonus larger than any log-prob gap puts the beam's items first in the
    head's order (the rerank ranking, then the rest of the catalog)."""
    m = _model(4)
    hists = [[1, 2, 3], [7], [10, 11, 12, 13], []]
    dead = [6, 15]                                                             # retired: not in the trie
    live = np.setdiff1d(np.arange(N_ITEMS), dead)
    trie = build_trie(SIDS, SIZES, live=np.isin(np.arange(N_ITEMS), live))
    got = GeneratorRanker(m, SIDS, beam_width=6, trie=trie, beam_bonus=bonus).rank(hists, 10)     # [4, 10]
    hb = history_batch(hists, SIDS, m.cfg.max_history, m.cfg.n_time_buckets)
    seen = seen_mask(as_histories(hists), N_ITEMS, torch.device("cpu"))
    cand = beam_topn(m, hb, SidConstraint.of(trie), 10, beam_width=10, seen=seen).items
    with torch.no_grad():
        logits = m.item_scores(m.user_states(m.encode(hb)), torch.from_numpy(SIDS))   # [4, I]
    for r, h in enumerate(hists):
        ok = [i for i in live.tolist() if i not in h]
        z = torch.logsumexp(logits[r, ok], 0)
        beam = {int(x) for x in cand[r] if x >= 0}
        score = {i: float(logits[r, i] - z) + (bonus if i in beam else 0.0) for i in ok}
        want = sorted(ok, key=lambda i: -score[i])[:10]
        assert got[r].tolist() == want
        assert not set(want) & (set(h) | set(dead))
        if bonus == 100.0:
            head_order = sorted(beam, key=lambda i: -float(logits[r, i]))
            assert want[:len(beam)] == head_order
    few = GeneratorRanker(m, SIDS, beam_width=6, beam_bonus=bonus).rank([list(range(N_ITEMS - 3))], 5)
    assert sorted(few[0, :3].tolist()) == [17, 18, 19] and few[0, 3:].tolist() == [-1, -1]     # -1 past the catalog


def test_prefix_embeddings_tell_items_with_shared_codes_apart():
    """item_prefix_rows: items that share every code but the last get vectors that differ by more than that
    code; zero-initialised, so an untrained head equals the code-only one; validation names the fix."""
    m = _model(5, item_prefix_rows=64)
    sids = torch.from_numpy(SIDS)
    torch.testing.assert_close(m.item_head_vectors(sids), m.item_vectors(sids))   # zero init
    with torch.no_grad():
        for t in m.prefix_emb:
            t.weight.normal_()
    a, b = torch.tensor([[1, 2, 0]]), torch.tensor([[1, 2, 1]])          # same first two codes
    c = torch.tensor([[1, 3, 0]])
    va, vb, vc = (m.item_head_vectors(x) for x in (a, b, c))
    code_only = m.item_vectors(a) - m.item_vectors(b)
    assert not torch.allclose(va - vb, code_only)                          # the level-2 prefix rows differ too
    assert not torch.allclose(va - vc, m.item_vectors(a) - m.item_vectors(c))
    with pytest.raises(ValueError, match="item_head=True"):
        GeneratorConfig(level_sizes=SIZES, item_prefix_rows=8)
    with pytest.raises(ValueError, match="item_prefix_rows"):
        GeneratorConfig(level_sizes=SIZES, item_head=True, item_prefix_rows=-1)


def test_prefix_input_reads_history_items_through_the_heads_vectors():
    """prefix_input: the encoder reads an item through its item-head vector (codes + prefix rows): the same
    as codes alone while the rows are zero, different once they are not; off, the rows are never read."""
    hb = HistoryBatch(torch.from_numpy(SIDS[[1, 6, 11]])[None], torch.full((1, 3), 2), torch.full((1, 3), 3),
                      torch.ones(1, 3, dtype=torch.bool))
    on, off = _model(3, item_prefix_rows=64, prefix_input=True), _model(3, item_prefix_rows=64)
    torch.testing.assert_close(on.encode(hb).states, off.encode(hb).states)    # zero-initialised prefix rows
    with torch.no_grad():
        for m in (on, off):
            for t in m.prefix_emb:
                t.weight.normal_(generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(on.encode(hb).states, off.encode(hb).states)
    fresh = _model(3, item_prefix_rows=64)
    torch.testing.assert_close(off.encode(hb).states, fresh.encode(hb).states)   # off: the rows are not read
    with pytest.raises(ValueError, match="item_prefix_rows > 0"):
        GeneratorConfig(level_sizes=SIZES, item_head=True, prefix_input=True)
    with pytest.raises(ValueError, match="prefix_input"):
        GeneratorConfig(level_sizes=SIZES, item_head=True, item_prefix_rows=8, prefix_input=1)
