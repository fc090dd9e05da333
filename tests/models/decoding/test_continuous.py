"""Continuous batching: every request's session equals greedy_session for it alone, however rows join and leave."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.decoding.continuous import ContinuousGreedy
from models.decoding.constraint import SidConstraint
from models.decoding.search import greedy_session
from models.generator.model import GenerativeRecommender, GeneratorConfig
from models.evaluation.generator_ranker import build_trie
from models.generator.features import history_batch
from models.generator.kv_cache import KVCache

torch.set_num_threads(1)

LEVELS = (4, 4, 3)
N_ITEMS = 30
#: CUDA too where there is a GPU (the device check runs this file there); CI has none
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def catalog():
    rng = np.random.default_rng(1)
    space = np.array([(a, b, c) for a in range(4) for b in range(4) for c in range(3)])
    sids = space[rng.choice(len(space), N_ITEMS, replace=False)]
    return sids, build_trie(sids, LEVELS)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    cfg = GeneratorConfig(level_sizes=LEVELS, d_model=32, heads=2, dropout=0.0, max_history=8, session_len=4,
                          dec_layers=2)
    return GenerativeRecommender(cfg).eval()


HISTORIES = [[1, 2, 3], [], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [0], [20, 21], [5, 5, 6, 29, 28, 27, 26]]
LENGTHS = [4, 2, 6, 1, 3, 5]


def _hist(sids, rows):
    return history_batch([np.asarray(r, dtype=np.int64) for r in rows], sids, 8, 16)


def _seen(rows):
    seen = torch.zeros(len(rows), N_ITEMS, dtype=torch.bool)
    for i, r in enumerate(rows):
        seen[i, r] = True
    return seen


def _alone(model, sids, trie, i, exclude_seen=True, dev="cpu"):
    """The reference: greedy_session for request i alone (batch of one)."""
    seen = _seen([HISTORIES[i]]).to(dev) if exclude_seen else None
    return greedy_session(model, _hist(sids, [HISTORIES[i]]).to(dev), SidConstraint.of(trie, dev),
                          session_len=LENGTHS[i], seen=seen)


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_staggered_arrivals_equal_greedy_alone(catalog, model, exclude_seen, dev):
    """Requests join at different steps (and leave after different lengths): each gets its solo greedy session."""
    sids, trie = catalog
    model = copy.deepcopy(model).to(dev)   # the module's model stays on the CPU for the other tests
    constraint = SidConstraint.of(trie, dev)
    cb = ContinuousGreedy(model)
    arrivals = {0: [0, 1], 1: [2], 2: [3, 4], 4: [5]}   # step -> requests admitted before it
    got, step, max_rows = {}, 0, 0
    while len(got) < len(HISTORIES):
        new = arrivals.get(step, [])
        if new:
            hb = _hist(sids, [HISTORIES[i] for i in new]).to(dev)
            seen = _seen([HISTORIES[i] for i in new]) if exclude_seen else None
            cb.admit(model.encode(hb), [LENGTHS[i] for i in new], new, seen)
        max_rows = max(max_rows, len(cb))
        for f in cb.step(constraint):
            got[f.tag] = f
        step += 1
        assert step < 50
    assert max_rows >= 4 and len(cb) == 0 and cb.cache is None
    for i in range(len(HISTORIES)):
        ref = _alone(model, sids, trie, i, exclude_seen, dev)
        assert got[i].items == ref.items[0].tolist(), f"request {i}"
        assert got[i].sids == ref.sids[0].tolist()
        np.testing.assert_allclose(got[i].scores, ref.scores[0].cpu().numpy(), rtol=1e-4, atol=1e-4)
        assert got[i].steps == LENGTHS[i]
        if exclude_seen:
            assert not set(got[i].items) & set(HISTORIES[i])
        assert len(set(got[i].items)) == len(got[i].items)   # no repeats within the session


def test_catalog_growth_between_steps(catalog, model):
    """Items added to the trie between steps become recommendable for rows already running."""
    sids, _ = catalog
    few = build_trie(sids[:10], LEVELS)
    cb = ContinuousGreedy(model)
    cb.admit(model.encode(_hist(sids, [[0, 1]])), [6], ["r"], _seen([[0, 1]])[:, :10])
    first = cb.step(SidConstraint.of(few))
    assert first == [] and len(cb) == 1
    full = build_trie(sids, LEVELS)
    out = []
    while not out:
        out = cb.step(SidConstraint.of(full))
    items = out[0].items
    assert 0 <= items[0] < 10                           # the first item came from the small catalog
    assert all(0 <= i < N_ITEMS for i in items) and len(set(items)) == 6
    assert not {0, 1} & set(items)


def test_admit_validates(catalog, model):
    sids, _ = catalog
    cb = ContinuousGreedy(model)
    mem = model.encode(_hist(sids, [[1], [2]]))
    with pytest.raises(ValueError, match="2 rows but 1 session lengths"):
        cb.admit(mem, [3], ["a"])
    with pytest.raises(ValueError, match=">= 1"):
        cb.admit(mem, [3, 0], ["a", "b"])


def test_concat_rows_pads_and_trim_drops_columns(model, catalog):
    """KVCache.concat_rows left-pads self K/V and right-pads memory; trim drops what no row needs."""
    sids, _ = catalog
    long_mem = model.encode(_hist(sids, [[1, 2, 3, 4, 5]]))
    short_mem = model.encode(_hist(sids, [[]]))
    a = model.start_cache(long_mem)
    a.self_pad = torch.zeros(1, dtype=torch.long)
    model.decode_ragged(torch.zeros(1, 1, dtype=torch.long), a)
    model.decode_ragged(torch.ones(1, 1, dtype=torch.long), a)           # a holds 2 positions
    b = model.start_cache(short_mem)
    merged = KVCache.concat_rows(a, b)
    assert merged.length == 2 and merged.self_pad.tolist() == [0, 2]
    assert merged.cross_mask.shape == (2, long_mem.mask.shape[1])
    assert merged.cross_mask[1].sum() == short_mem.mask.sum()
    only_b = merged.index_select(torch.tensor([1])).trim()
    assert only_b.length == 0 and only_b.self_pad.tolist() == [0]
    assert only_b.cross_mask.shape[1] == int(short_mem.mask.sum())
    with pytest.raises(ValueError, match="ragged"):
        merged.truncate(1)


def test_ragged_decode_matches_plain_decode(model, catalog):
    """A row decoded next to a longer row (padding masked) gets the logits it gets alone."""
    sids, _ = catalog
    mem = model.encode(_hist(sids, [[3, 4], [7]]))
    alone = model.start_cache(mem.index_select(torch.tensor([1])))
    ref = model.decode(torch.zeros(1, 1, dtype=torch.long), None, alone, 0).logits
    a = model.start_cache(mem.index_select(torch.tensor([0])))
    a.self_pad = torch.zeros(1, dtype=torch.long)
    for t in range(3):
        model.decode_ragged(torch.full((1, 1), t, dtype=torch.long), a)
    both = KVCache.concat_rows(a, model.start_cache(mem.index_select(torch.tensor([1]))))
    out = model.decode_ragged(torch.tensor([[2], [0]]), both).logits
    torch.testing.assert_close(out[1:], ref, rtol=1e-5, atol=1e-5)


def test_rows_at_different_levels_embed_and_project_like_each_row_alone(model):
    """Per-row start positions (any level) give each row what the int-start path gives it."""
    torch.manual_seed(0)
    hidden = torch.randn(3, 2, model.cfg.d_model)
    tokens = torch.tensor([[1, 2], [0, 3], [2, 1]])
    starts = torch.tensor([0, 4, 7])                  # levels 0, 1, 1 (D = 3) and different items
    with torch.no_grad():
        got_logits = model.project(hidden, starts)
        got_x = model._embed_tokens(tokens, starts)
        for r, s in enumerate(starts.tolist()):
            torch.testing.assert_close(got_logits[r:r + 1], model.project(hidden[r:r + 1], s))
            torch.testing.assert_close(got_x[r:r + 1], model._embed_tokens(tokens[r:r + 1], s))
