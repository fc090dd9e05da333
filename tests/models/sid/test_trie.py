"""SidTrie: vectorised walks and the flattened key tables agree with a plain dict walk; add/remove keep it exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from models.sid.trie import SidTrie


def _naive(sids: np.ndarray, items: np.ndarray) -> dict[tuple, set]:
    """prefix tuple -> set of next codes, plus full SID -> item, by brute force."""
    nxt: dict[tuple, set] = {}
    for s in sids.tolist():
        for p in range(len(s)):
            nxt.setdefault(tuple(s[:p]), set()).add(s[p])
    return nxt


def _next_mask(trie: SidTrie, prefixes: list[tuple]) -> torch.Tensor:
    """[P, K_max] bool: next codes of each prefix, from the trie's sorted keys (``trie.keys()``)."""
    t = trie.keys()
    codes = torch.arange(trie.k_max)
    out = torch.zeros(len(prefixes), trie.k_max, dtype=torch.bool)
    for i, p in enumerate(prefixes):
        lvl = len(p)
        lo = sum(int(c) * int(t.mult[j]) for j, c in enumerate(p)) + codes * t.mult[lvl]
        out[i] = (t.count(lo, lo + t.mult[lvl]) > 0) & (codes < trie.level_sizes[lvl])
    return out


def _check_against_naive(trie: SidTrie, live: dict[int, tuple]):
    sids = np.array(list(live.values()), dtype=np.int64).reshape(-1, trie.depth)
    items = np.array(list(live.keys()), dtype=np.int64)
    nxt = _naive(sids, items)
    # every live SID decodes to exactly its item, walking through the node API
    nodes = trie.root(len(items))
    for lvl in range(trie.depth):
        assert (trie.leaf_item(nodes) == -1).all()
        codes = torch.as_tensor(sids[:, lvl])
        nodes = trie.step(nodes, codes)
        assert (nodes >= 0).all()
    assert torch.equal(trie.leaf_item(nodes), torch.as_tensor(items))
    # every prefix reaches a node, and its next codes (from the key tables) are the brute-force set
    for p, codes in nxt.items():
        node = trie.walk(torch.tensor([list(p)], dtype=torch.long).reshape(1, len(p)))
        assert int(node) >= 0
        m = _next_mask(trie, [p])[0].nonzero().flatten().tolist()
        assert set(m) == codes, (p, m, codes)
    assert len(trie) == len(live) == len(trie.keys())
    if not live:
        assert trie.num_edges == 0 and not _next_mask(trie, [()]).any()
    # no dangling edges: edges = number of distinct non-empty prefixes
    distinct = {tuple(s[:p]) for s in sids.tolist() for p in range(1, trie.depth + 1)}
    assert trie.num_edges == len(distinct)


def test_basic_walk_mask_leaf():
    t = SidTrie((4, 4, 3))
    t.add(np.array([[0, 1, 0], [0, 1, 1], [2, 3, 0]]), np.array([10, 11, 12]))
    root = t.root(2)
    m = _next_mask(t, [(), (1,), (0, 1)])
    assert m[0].tolist() == [True, False, True, False]
    assert m[1].sum() == 0                       # no item under (1,): nothing allowed
    assert m[2].tolist() == [True, True, False, False]
    n = t.step(root, torch.tensor([0, 1]))
    assert n[1].item() == -1 and n[0].item() > 0
    n = t.step(n, torch.tensor([1, 1]))
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
    root_mask, m0 = _next_mask(t, [(), (0,)])
    assert root_mask.tolist() == [True, False, False]
    assert m0.tolist() == [True, False, False]   # prefix (0,2) is gone
    assert t.walk(torch.tensor([[0, 2]])).item() == -1
    t.remove([1, 2])
    assert len(t) == 0 and t.num_edges == 0
    assert not _next_mask(t, [()]).any()
    # the freed SID can be taken by a new item
    t.add(np.array([[0, 2, 0]]), np.array([4]))
    assert t.lookup(np.array([[0, 2, 0]])).tolist() == [4]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_every_sid_decodes_to_exactly_one_live_item(data):
    sizes = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4), label="sizes"))
    t = SidTrie(sizes)
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


def test_key_tables_match_entries_and_follow_every_change():
    rng = np.random.default_rng(0)
    sizes = (16, 16, 16, 8)
    sids = np.unique(rng.integers(0, 8, size=(2000, 4)) * np.array([2, 2, 2, 1]), axis=0)
    t = SidTrie(sizes)
    items = rng.permutation(3 * len(sids))[:len(sids)]
    t.add(sids, items)
    k = t.keys()
    assert k is t.keys() and k.version == t.version
    mult = np.array([16 * 16 * 8, 16 * 8, 8, 1])
    order = np.argsort(sids @ mult)
    assert k.keys.tolist() == (sids @ mult)[order].tolist() and k.items.tolist() == items[order].tolist()
    assert torch.equal(k.keys_of(torch.as_tensor(items)), torch.as_tensor(sids @ mult))
    t.remove(items[:5])
    k2 = t.keys()
    assert k2 is not k and len(k2) == len(sids) - 5 and (k2.keys_of(torch.as_tensor(items[:5])) == -1).all()
