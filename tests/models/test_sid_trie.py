"""SidTrie: vectorised prefix queries agree with a plain dict walk; add/remove keep it exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from models.sid_trie import SidTrie


def _naive(sids: np.ndarray, items: np.ndarray) -> dict[tuple, set]:
    """prefix tuple -> set of next codes, plus full SID -> item, by brute force."""
    nxt: dict[tuple, set] = {}
    for s in sids.tolist():
        for p in range(len(s)):
            nxt.setdefault(tuple(s[:p]), set()).add(s[p])
    return nxt


def _check_against_naive(trie: SidTrie, live: dict[int, tuple]):
    sids = np.array(list(live.values()), dtype=np.int64).reshape(-1, trie.depth)
    items = np.array(list(live.keys()), dtype=np.int64)
    nxt = _naive(sids, items)
    # every live SID decodes to exactly its item, walking through the node API
    nodes = trie.root(len(items))
    for lvl in range(trie.depth):
        assert (trie.leaf_item(nodes) == -1).all()
        mask = trie.next_mask(nodes)
        codes = torch.as_tensor(sids[:, lvl])
        assert mask[torch.arange(len(items)), codes].all()
        nodes = trie.step(nodes, codes)
        assert (nodes >= 0).all()
    assert torch.equal(trie.leaf_item(nodes), torch.as_tensor(items))
    assert (trie.next_mask(nodes).sum(1) == 0).all()
    # every prefix's mask equals the brute-force set of next codes
    prefixes = list(nxt.items())
    for p, codes in prefixes:
        node = trie.walk(torch.tensor([list(p)], dtype=torch.long).reshape(1, len(p)))
        m = trie.next_mask(node)[0].nonzero().flatten().tolist()
        assert set(m) == codes, (p, m, codes)
    assert len(trie) == len(live)
    if not live:
        assert trie.num_edges == 0 and not trie.next_mask(trie.root(1)).any()
    # no dangling edges: edges = number of distinct non-empty prefixes
    distinct = {tuple(s[:p]) for s in sids.tolist() for p in range(1, trie.depth + 1)}
    assert trie.num_edges == len(distinct)


def test_basic_walk_mask_leaf():
    t = SidTrie((4, 4, 3))
    t.add(np.array([[0, 1, 0], [0, 1, 1], [2, 3, 0]]), np.array([10, 11, 12]))
    root = t.root(2)
    m = t.next_mask(root)
    assert m.shape == (2, 4) and m[0].tolist() == [True, False, True, False]
    n = t.step(root, torch.tensor([0, 1]))
    assert n[1].item() == -1 and n[0].item() > 0
    assert t.next_mask(n)[1].sum() == 0          # invalid node: nothing allowed
    n = t.step(n, torch.tensor([1, 1]))
    assert t.next_mask(n)[0].tolist() == [True, True, False, False]
    leaf = t.step(n, torch.tensor([1, 0]))
    assert t.leaf_item(leaf).tolist() == [11, -1]
    assert t.lookup(np.array([[2, 3, 0], [2, 3, 1]])).tolist() == [12, -1]


def test_add_is_idempotent_and_rejects_conflicts():
    t = SidTrie((4, 4))
    t.add(np.array([[1, 2]]), np.array([5]))
    t.add(np.array([[1, 2]]), np.array([5]))       # same item, same SID: no-op
    assert len(t) == 1 and t.num_edges == 2
    with pytest.raises(ValueError, match="already held by item 5"):
        t.add(np.array([[1, 2]]), np.array([6]))
    with pytest.raises(ValueError, match="refusing to move"):
        t.add(np.array([[1, 3]]), np.array([5]))
    with pytest.raises(ValueError, match="outside level 1"):
        t.add(np.array([[1, 4]]), np.array([7]))
    with pytest.raises(ValueError, match=r"expected \[N, 2\]"):
        t.add(np.array([[1, 2, 3]]), np.array([7]))


def test_remove_prunes_empty_prefixes():
    t = SidTrie((3, 3, 2))
    t.add(np.array([[0, 0, 0], [0, 0, 1], [0, 2, 0]]), np.array([1, 2, 3]))
    assert t.remove([3, 99]) == 1
    root_mask = t.next_mask(t.root(1))[0]
    n0 = t.step(t.root(1), torch.tensor([0]))
    assert root_mask.tolist() == [True, False, False]
    assert t.next_mask(n0)[0].tolist() == [True, False, False]   # prefix (0,2) is gone
    t.remove([1, 2])
    assert len(t) == 0 and t.num_edges == 0
    assert not t.next_mask(t.root(1)).any()
    # the freed SID can be taken by a new item
    t.add(np.array([[0, 2, 0]]), np.array([4]))
    assert t.lookup(np.array([[0, 2, 0]])).tolist() == [4]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_every_sid_decodes_to_exactly_one_live_item(data):
    sizes = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4), label="sizes"))
    t = SidTrie(sizes)
    # 0 = every mask through the sorted-key (CSR) path; 12 = only the top level dense; default = all dense
    t.dense_budget_bytes = data.draw(st.sampled_from([0, 12, t.dense_budget_bytes]), label="budget")
    live: dict[int, tuple] = {}
    next_item = 0
    for _ in range(data.draw(st.integers(1, 6), label="rounds")):
        if data.draw(st.booleans(), label="add?") or not live:
            n = data.draw(st.integers(0, 12), label="n")
            cand = {tuple(data.draw(st.integers(0, k - 1)) for k in sizes) for _ in range(n)}
            cand -= set(live.values())
            cand = sorted(cand)
            items = np.arange(next_item, next_item + len(cand))
            next_item += len(cand)
            t.add(np.array(cand, dtype=np.int64).reshape(-1, len(sizes)), items)
            live.update(zip(items.tolist(), cand))
        else:
            gone = data.draw(st.lists(st.sampled_from(sorted(live)), max_size=len(live)), label="rm")
            t.remove(np.array(gone, dtype=np.int64))
            for g in set(gone):
                live.pop(g)
        _check_against_naive(t, live)
        # the reverse map agrees: each live item's SID leads back to it and only it
        sids, items = t.entries()
        assert sorted(items.tolist()) == sorted(live)
        assert {i: tuple(s) for i, s in zip(items.tolist(), sids.tolist())} == live
        assert np.unique(sids, axis=0).shape[0] == len(live)


@pytest.mark.parametrize("budget", [0, 4096, 64 << 20])
def test_batch_of_prefixes_matches_per_prefix_queries(budget):
    rng = np.random.default_rng(0)
    sizes = (16, 16, 16, 8)
    sids = np.unique(rng.integers(0, 8, size=(2000, 4)) * np.array([2, 2, 2, 1]), axis=0)
    t = SidTrie(sizes)
    t.dense_budget_bytes = budget
    t.add(sids, np.arange(len(sids)))
    pick = rng.integers(0, len(sids), 256)
    depth = rng.integers(0, 4, 256)
    nodes = t.root(256)
    for lvl in range(4):
        adv = torch.as_tensor(depth > lvl)
        nodes = torch.where(adv, t.step(nodes, torch.as_tensor(sids[pick, lvl])), nodes)
    batch = t.next_mask(nodes)
    for b in range(0, 256, 17):
        single = t.next_mask(nodes[b:b + 1])[0]
        assert torch.equal(batch[b], single)
