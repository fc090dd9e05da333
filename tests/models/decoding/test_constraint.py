"""The constraint engine against its brute-force reference: masks, advances and completed items equal,
over random catalogs, exclusions, code choices and catalog retire / add between steps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from models.decoding.constraint import SENTINEL, ConstraintConfig, ConstraintState, SidConstraint
from models.decoding.constraint_reference import ReferenceConstraint
from models.sid.trie import SidTrie

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _random_catalog(rng, level_sizes, n):
    grid = np.array(np.meshgrid(*[np.arange(k) for k in level_sizes], indexing="ij")).reshape(len(level_sizes), -1).T
    n = min(n, len(grid))
    sids = grid[rng.choice(len(grid), n, replace=False)]
    items = rng.choice(3 * n, n, replace=False)
    return sids.astype(np.int64), items.astype(np.int64)


@SETTINGS
@given(seed=st.integers(0, 100_000), levels=st.sampled_from([(3, 2), (4, 3, 3), (2, 5, 3), (3, 3, 2, 2)]),
       n=st.integers(1, 30), b=st.integers(1, 4), steps=st.integers(1, 24), no_repeat=st.booleans(),
       churn=st.floats(0.0, 0.5), offbook=st.floats(0.0, 0.2))
def test_engine_equals_reference(seed, levels, n, b, steps, no_repeat, churn, offbook):
    rng = np.random.default_rng(seed)
    sids, items = _random_catalog(rng, levels, n)
    live = rng.random(len(items)) < 0.8
    live[0] = True
    trie = SidTrie(levels)
    trie.add(sids[live], items[live])
    cfg = ConstraintConfig(no_repeat=no_repeat)
    seen = [list(rng.choice(items, rng.integers(0, len(items) + 1), replace=True)) + [999] for _ in range(b)]
    fast, ref = SidConstraint.of(trie, config=cfg), ReferenceConstraint.of(trie, cfg)
    fs, rs = fast.init(b, seen), ref.init(b, seen)
    K = max(levels)
    for _ in range(steps):
        m = fast.mask(fs)
        assert torch.equal(m, ref.mask(rs))
        based = fast.rebase(fs)                      # the same banned set in any order: the scatter count
        assert based.keys_sorted and torch.equal(based.banned_keys, based.banned_keys.sort(1).values)
        perm = torch.as_tensor(rng.permutation(based.banned_keys.shape[1]))
        assert torch.equal(fast.mask(replace(based, banned_keys=based.banned_keys[:, perm], keys_sorted=False)), m)
        # mostly an allowed code, sometimes a disallowed or off-codebook one (dead paths must agree too)
        noise = torch.as_tensor(rng.random((b, K)))
        codes = torch.where(m, noise + 1, noise).argmax(1)
        wild = torch.as_tensor(rng.random(b) < offbook)
        codes = torch.where(wild, torch.as_tensor(rng.integers(0, K, b)), codes)
        fs, fi = fast.advance(fs, codes)
        rs, ri = ref.advance(rs, codes)
        assert torch.equal(fi, ri)
        if rng.random() < churn:                     # the catalog changes between two steps
            gone = rng.choice(items, rng.integers(1, 3))
            trie.remove(gone)
            back = ~np.isin(items, trie.items()) & (rng.random(len(items)) < 0.5)
            trie.add(sids[back], items[back])
            if len(trie) == 0:
                trie.add(sids[:1], items[:1])
            fast, ref = SidConstraint.of(trie, config=cfg), ReferenceConstraint.of(trie, cfg)
        if rng.random() < 0.2:                       # beams reorder rows
            idx = torch.as_tensor(rng.integers(0, b, b))
            fs, rs = fs.select(idx), rs.select(idx)


def test_state_rows_at_different_levels_and_cat():
    trie = SidTrie((3, 3))
    trie.add(np.array([[0, 0], [0, 1], [1, 2], [2, 0]]), np.array([5, 6, 7, 8]))
    con = SidConstraint.of(trie)
    a = con.init(1, [[6]])
    a, _ = con.advance(a, torch.tensor([0]))                 # row a at level 1 under prefix (0,)
    both = ConstraintState.cat([a, con.init(1)])
    assert both.shared_level is None
    assert con.mask(both).tolist() == [[True, False, False], [True, True, True]]
    s, item = con.advance(both, torch.tensor([0, 1]))
    assert item.tolist() == [5, -1]
    assert s.level.tolist() == [0, 1]
    # rows with different numbers of exclusions (a bool mask and lists) stack with exact padding
    wide = con.init(2, torch.tensor([[False] * 5 + [True, True, True, False], [False] * 9]))
    mixed = ConstraintState.cat([con.init(1, [[7]]), wide])
    ref = ReferenceConstraint.of(trie)
    rs = ref.init(3, [[7], [5, 6, 7], []])
    assert torch.equal(con.mask(mixed), ref.mask(rs))
    assert mixed.banned_keys[0, 1:].tolist() == [SENTINEL, SENTINEL] and (mixed.banned_keys[2] == SENTINEL).all()


def test_retired_banned_item_no_longer_blocks_and_returning_one_is_banned_again():
    trie = SidTrie((2, 2))
    trie.add(np.array([[0, 0], [0, 1], [1, 0]]), np.array([0, 1, 2]))
    con = SidConstraint.of(trie)
    s = con.init(1, [[0]])
    assert con.mask(s).tolist() == [[True, True]]
    trie.remove(1)                                           # prefix (0,) holds only the banned item 0 now
    assert SidConstraint.of(trie).mask(s).tolist() == [[False, True]]
    trie.remove(0)
    trie.add(np.array([[0, 1]]), np.array([1]))              # banned item gone, another under (0,)
    assert SidConstraint.of(trie).mask(s).tolist() == [[True, True]]
    trie.add(np.array([[0, 0]]), np.array([0]))              # the banned item returns: still banned
    assert SidConstraint.of(trie).advance(SidConstraint.of(trie).advance(s, torch.tensor([0]))[0],
                                          torch.tensor([0]))[1].tolist() == [-1]


def test_tables_cached_once_per_trie_version():
    trie = SidTrie((4, 4, 2))
    trie.add(np.array([[0, 1, 0], [2, 3, 0]]), np.array([0, 1]))
    first = trie.keys()
    assert trie.keys() is first
    trie.remove(1)
    trie.add(np.array([[2, 3, 0]]), np.array([2]))           # same SID, another item: a new catalog
    again = trie.keys()
    assert again is not first and again.item_at(again.key(torch.tensor([2, 3, 0]))).item() == 2


def test_empty_catalog_allows_nothing_and_level_mismatch_is_a_clear_error():
    trie = SidTrie((2, 2))
    con = SidConstraint.of(trie)
    s = con.init(2, [[1], []])
    assert not con.mask(s).any()
    s, _ = con.advance(s, torch.tensor([0, 1]))
    assert con.advance(s, torch.tensor([0, 0]))[1].tolist() == [-1, -1]
    trie.add(np.array([[0, 0]]), np.array([0]))
    with pytest.raises(ValueError, match="level_sizes"):
        SidConstraint.of(trie).check_levels((2, 3))


@SETTINGS
@given(seed=st.integers(0, 100_000), levels=st.sampled_from([(3, 2), (4, 3, 3), (2, 5, 3), (3, 3, 2, 2)]),
       n=st.integers(0, 30), b=st.integers(1, 4), steps=st.integers(1, 16), no_repeat=st.booleans(),
       churn=st.floats(0.0, 0.5), offbook=st.floats(0.0, 0.3))
def test_one_level_fast_paths_equal_the_engine(seed, levels, n, b, steps, no_repeat, churn, offbook):
    """mask_at / advance_at (rows all at one level, a host int) and masked_logprobs give exactly mask / advance /
    logprobs: allowed codes, prefixes, exclusions, completed items as seen by the next mask, dead rows; with
    sorted banned keys (binary search) and in any order; extend_at is advance_at of the selected rows on every
    row whose code was allowed."""
    from models.decoding.constraint import masked_log_softmax, masked_logprobs
    rng = np.random.default_rng(seed)
    sids, items = _random_catalog(rng, levels, max(n, 1))
    trie = SidTrie(levels)
    if n:
        trie.add(sids, items)
    cfg = ConstraintConfig(no_repeat=no_repeat)
    con = SidConstraint.of(trie, config=cfg)
    seen = [list(rng.choice(items, rng.integers(0, len(items) + 1), replace=True)) for _ in range(b)]
    slow = fast = con.init(b, seen)
    K, D = max(levels), len(levels)
    for t in range(steps):
        lv = t % D
        m = con.mask(slow)
        assert torch.equal(con.mask_at(fast, lv), m)
        keys = con.rebase(fast).banned_keys
        assert fast.keys_sorted and torch.equal(keys, keys.sort(1).values)   # the binary-search path's premise
        perm = torch.as_tensor(rng.permutation(keys.shape[1]))             # the same set, in any order
        shuffled = replace(con.rebase(fast), banned_keys=keys[:, perm], keys_sorted=False)
        assert torch.equal(con.mask_at(shuffled, lv), m)
        logits = torch.as_tensor(rng.normal(size=(b, K)))
        fast_lp = masked_logprobs(logits, con.mask_at(fast, lv))
        torch.testing.assert_close(fast_lp, con.logprobs(logits, slow), rtol=0, atol=0)
        assert torch.equal(fast_lp, masked_log_softmax(logits.float().masked_fill(~m, float("-inf"))))
        noise = torch.as_tensor(rng.random((b, K)))
        codes = torch.where(m, noise + 1, noise).argmax(1)
        wild = torch.as_tensor(rng.random(b) < offbook)
        codes = torch.where(wild, torch.as_tensor(rng.integers(-1, K + 1, b)), codes)
        rows = torch.as_tensor(rng.integers(0, b, b))                    # a draft step: rows re-picked, then advanced
        ext, ref = con.extend_at(fast, rows, codes[rows], lv), con.advance_at(fast.select(rows), codes[rows], lv)
        live = m[rows].gather(1, codes[rows].clamp(0, K - 1)[:, None])[:, 0] & (codes[rows] >= 0) & (codes[rows] < K)
        assert torch.equal(ext.prefix[live], ref.prefix[live]) and torch.equal(ext.level, ref.level)
        assert torch.equal(con.mask_at(ext, (lv + 1) % D)[live], con.mask_at(ref, (lv + 1) % D)[live])
        assert ext.keys_sorted == ref.keys_sorted and ext.shared_level == ref.shared_level
        slow, _ = con.advance(slow, codes)
        fast = con.advance_at(fast, codes, lv)
        assert torch.equal(fast.prefix, slow.prefix) and torch.equal(fast.level, slow.level)
        assert fast.shared_level == slow.shared_level == (lv + 1) % D
        if rng.random() < churn and n:               # the catalog changes between two steps
            trie.remove(rng.choice(items, rng.integers(1, 3)))
            back = ~np.isin(items, trie.items()) & (rng.random(len(items)) < 0.5)
            trie.add(sids[back], items[back])
            con = SidConstraint.of(trie, config=cfg)
        if rng.random() < 0.2:                       # beams reorder rows
            idx = torch.as_tensor(rng.integers(0, b, b))
            fast, slow = fast.select(idx), slow.select(idx)


def test_masked_logprobs_rows_with_nothing_allowed_are_all_minus_inf():
    from models.decoding.constraint import masked_logprobs
    logits = torch.tensor([[1.0, 2.0, float("-inf")], [0.5, 0.1, 0.2]], dtype=torch.float64)
    allowed = torch.tensor([[True, True, True], [False, False, False]])
    out = masked_logprobs(logits, allowed)
    assert out.dtype == torch.float32 and torch.isneginf(out[1]).all() and torch.isneginf(out[0, 2])
    torch.testing.assert_close(out[0, :2], torch.log_softmax(logits[0, :2].float(), 0))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), b=st.integers(1, 6), steps=st.integers(1, 12), no_repeat=st.booleans(),
       offbook=st.sampled_from([0.0, 0.3, 0.8]))
def test_advance_on_sorted_keys_equals_advance_on_unsorted_any_levels(seed, b, steps, no_repeat, offbook):
    """advance on sorted banned keys (rows at their own levels, completed keys inserted in order) leaves the
    same prefixes, levels, excluded set and completed items as on unsorted keys (appended), with the keys kept
    sorted; completes=False where no row is at the last level. Rows start 0..D+1 steps apart (each picked
    from its own step of one lock-step run)."""
    from models.decoding.constraint import pad_columns
    rng = np.random.default_rng(seed)
    levels = (4, 3, 3)
    sids, items = _random_catalog(rng, levels, 25)
    trie = SidTrie(levels)
    trie.add(sids, items)
    con = SidConstraint.of(trie, config=ConstraintConfig(no_repeat=no_repeat))
    K, D = max(levels), len(levels)
    seen = [list(rng.choice(items, rng.integers(0, 6), replace=False)) for _ in range(b)]
    run = [con.init(b, seen)]
    for t in range(D + 1):
        m = con.mask(run[-1])
        run.append(con.advance(run[-1], torch.where(m, torch.as_tensor(rng.random((b, K))) + 1, 0.0).argmax(1))[0])
    lag = torch.as_tensor(rng.integers(0, D + 2, b))                      # row r at step lag[r] of that run
    e = max(x.banned_keys.shape[1] for x in run)
    def pick(f, pad):                                                      # row r of step lag[r]
        return torch.stack([f(x) if pad is None else pad_columns(f(x), e, pad) for x in run])[lag, torch.arange(b)]
    fast = ConstraintState(pick(lambda x: x.prefix, None), pick(lambda x: x.level, None),
                           pick(lambda x: x.banned_items, -1),
                           pick(lambda x: con.rebase(x).banned_keys, SENTINEL).sort(1).values, con.tables, None, True)
    shuffled = fast.banned_keys[:, torch.randperm(fast.banned_keys.shape[1])]
    slow = ConstraintState(fast.prefix, fast.level, fast.banned_items, shuffled, con.tables, None, False)
    for _ in range(steps):
        m = con.mask(slow)
        assert torch.equal(con.mask(fast), m)
        codes = torch.where(m, torch.as_tensor(rng.random((b, K))) + 1, 0.0).argmax(1)
        wild = torch.as_tensor(rng.random(b) < offbook)         # codes the mask forbids: excluded items too
        codes = torch.where(wild, torch.as_tensor(rng.integers(-1, K + 1, b)), codes)
        fast, got = con.advance(fast, codes, bool((fast.level == D - 1).any()))
        slow, want = con.advance(slow, codes)
        assert torch.equal(got, want)
        assert torch.equal(fast.prefix, slow.prefix) and torch.equal(fast.level, slow.level)
        assert fast.keys_sorted and torch.equal(fast.banned_keys, fast.banned_keys.sort(1).values)
        for r in range(b):
            keys = lambda x: sorted(k for k in x.banned_keys[r].tolist() if k != SENTINEL)   # noqa: E731
            assert keys(fast) == keys(slow)                   # the same keys, each once (none counted twice)
