"""Decoding tables follow catalog deltas: after any add/retire sequence they equal a fresh build and the
brute-force reference, are updated by a merge (not rebuilt), and decoding never emits an invalid or
repeated item while the catalog changes between steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.decoding.constraint import SidConstraint
from models.decoding.constraint_reference import ReferenceConstraint
from models.decoding.continuous import ContinuousGreedy
from models.generator.model import GenerativeRecommender, GeneratorConfig, HistoryBatch
from models.sid.catalog_keys import CatalogKeys
from models.sid.trie import SidTrie

LEVELS = (4, 3, 5)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _space():
    return np.array(np.meshgrid(*[np.arange(k) for k in LEVELS], indexing="ij")).reshape(len(LEVELS), -1).T


def _assert_equal_tables(got: CatalogKeys, want: CatalogKeys) -> None:
    assert got.version == want.version
    assert torch.equal(got.keys.cpu(), want.keys.cpu()) and torch.equal(got.items.cpu(), want.items.cpu())
    n = max(got.key_of_item.shape[0], want.key_of_item.shape[0])
    probe = torch.arange(-1, n + 1)
    assert torch.equal(got.keys_of(probe.to(got.keys.device)).cpu(), want.keys_of(probe).cpu())
    assert (got.keys[1:] > got.keys[:-1]).all()


def _random_ops(rng, trie, sid_of, live, pool, n_ops):
    """Random batches of adds (new items and returning ones, same SID) and retirements."""
    for _ in range(n_ops):
        if live and rng.random() < 0.45:
            gone = rng.choice(sorted(live), size=int(rng.integers(1, min(len(live), 6) + 1)), replace=False)
            trie.remove(gone)
            live.difference_update(int(i) for i in gone)
        else:
            cand = [i for i in pool if i not in live]
            if not cand:
                continue
            new = rng.choice(cand, size=int(rng.integers(1, min(len(cand), 6) + 1)), replace=False)
            trie.add(np.stack([sid_of[int(i)] for i in new]), new)
            live.update(int(i) for i in new)
        yield


@pytest.mark.parametrize("dev", DEVICES)
@pytest.mark.parametrize("seed", range(6))
def test_tables_follow_random_add_retire_sequences(seed, dev):
    rng = np.random.default_rng(seed)
    space = _space()
    pool = list(range(0, 3 * len(space), 3))[: len(space)]              # sparse item indices
    sid_of = dict(zip(pool, space[rng.permutation(len(space))]))
    trie, live = SidTrie(LEVELS), set()
    first = rng.choice(pool, 20, replace=False)
    trie.add(np.stack([sid_of[int(i)] for i in first]), first)
    live.update(int(i) for i in first)
    trie.keys(dev)
    for step, _ in enumerate(_random_ops(rng, trie, sid_of, live, pool, 40)):
        if rng.random() < 0.3:
            continue                                                     # several versions in one delta
        got = trie.keys(dev)
        sids, items = trie.entries()
        _assert_equal_tables(got, CatalogKeys.build(LEVELS, sids, items, trie.version))
        assert set(got.items.tolist()) == live
        # the constraint over the updated tables answers as the brute-force reference does
        con, ref = SidConstraint(got), ReferenceConstraint(LEVELS, sids, items)
        b = 5
        seen = [rng.choice(pool, 3, replace=False).tolist() for _ in range(b)]
        s, r = con.init(b, seen), ref.init(b, seen)
        for _ in range(len(LEVELS)):
            m = con.mask(s).cpu()
            assert torch.equal(m, ref.mask(r)), f"step {step}"
            pick = torch.where(m, torch.rand(m.shape) + 1, torch.rand(m.shape)).argmax(1)
            s, it = con.advance(s, pick.to(dev))
            r, rit = ref.advance(r, pick)
            assert torch.equal(it.cpu(), rit)
    assert trie.table_updates > 10 and trie.table_builds == 1          # merged, not rebuilt per version


def test_old_tables_are_left_as_they_were():
    """A decode in flight keeps the version it started with: an update makes new tables."""
    trie = SidTrie(LEVELS)
    trie.add(_space()[:10], np.arange(10))
    old = trie.keys()
    keys, koi = old.keys.clone(), old.key_of_item.clone()
    trie.remove([3, 4])
    trie.add(_space()[10:12], np.array([40, 41]))
    new = trie.keys()
    assert new is not old and torch.equal(old.keys, keys) and torch.equal(old.key_of_item, koi)
    assert len(new) == 10 and trie.table_updates == 1


def test_large_delta_falls_back_to_a_rebuild():
    trie = SidTrie((32, 16, 16))
    grid = np.array(np.meshgrid(np.arange(32), np.arange(16), np.arange(16), indexing="ij")).reshape(3, -1).T
    trie.add(grid[:100], np.arange(100))
    trie.keys()
    trie.add(grid[100:4300], np.arange(100, 4300))                        # > 4096 changes: log dropped
    got = trie.keys()
    assert trie.table_builds == 2 and trie.table_updates == 0
    _assert_equal_tables(got, CatalogKeys.build((32, 16, 16), *trie.entries(), trie.version))


def test_decoding_while_the_catalog_changes_never_emits_invalid_or_repeated_items():
    """Continuous batching with adds and retirements between steps: every emitted item is live at the step
    that emitted it, no row repeats an item, no row emits a seen item."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    space = _space()
    sid_of = dict(enumerate(space[rng.permutation(len(space))]))
    cfg = GeneratorConfig(level_sizes=LEVELS, d_model=16, heads=2, enc_layers=1, dec_layers=1, dropout=0.0,
                          session_len=12, max_history=4)
    model = GenerativeRecommender(cfg).eval()
    trie, live = SidTrie(LEVELS), set()
    start = rng.choice(len(space), 25, replace=False)
    trie.add(np.stack([sid_of[int(i)] for i in start]), start)
    live.update(int(i) for i in start)
    b = 4
    hs = torch.as_tensor(space[rng.integers(0, len(space), (b, 3))])
    hist = HistoryBatch(hs, torch.ones(b, 3, dtype=torch.long), torch.ones(b, 3, dtype=torch.long),
                        torch.ones(b, 3, dtype=torch.bool))
    seen = [rng.choice(sorted(live), 2, replace=False).tolist() for _ in range(b)]
    cb = ContinuousGreedy(model)
    with torch.no_grad():
        cb.admit(model.encode(hist), [12] * b, list(range(b)), seen)
    ops = _random_ops(rng, trie, sid_of, live, list(range(len(space))), 10_000)
    live_at_step = []
    out = {}
    while len(cb):
        next(ops)
        live_at_step.append(set(live))
        for f in cb.step(SidConstraint.of(trie)):
            out[f.tag] = f
    for tag, f in out.items():
        got = [i for i in f.items if i >= 0]
        assert len(got) == len(set(got)), f"row {tag} repeated an item: {f.items}"
        assert not set(got) & set(seen[tag])
        for step, item in enumerate(f.items):
            assert item == -1 or item in live_at_step[step], f"row {tag} emitted {item}, not live at step {step}"
    assert trie.table_updates >= 10
