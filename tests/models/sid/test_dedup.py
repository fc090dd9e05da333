"""De-duplication level: unique SIDs, stable incremental slots, codebook statistics."""

from __future__ import annotations

import numpy as np
import pytest

from models.sid.dedup import (DedupAllocator, SidSpaceFull, assign_unique, collision_rate,
                              default_dedup_size, unique_fraction, utilization)


def test_assign_unique_numbers_collisions_in_row_order():
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [0, 1]])
    sids = assign_unique(codes)
    assert sids[:, -1].tolist() == [0, 0, 1, 2, 0]
    assert unique_fraction(sids) == 1.0
    assert collision_rate(codes) == pytest.approx(2 / 5)
    with pytest.raises(SidSpaceFull, match="3 items share"):
        assign_unique(codes, dedup_size=2)


def test_random_codes_become_unique():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=(500, 3))
    sids = assign_unique(codes)
    assert np.unique(sids, axis=0).shape[0] == 500
    assert (sids[:, :-1] == codes).all()
    assert utilization(codes, (4, 4, 8)) == [1.0, 1.0, 0.5]


def test_allocator_continues_after_reserved_slots():
    base = assign_unique(np.array([[3, 3], [3, 3], [1, 0]]))
    a = DedupAllocator(4)
    a.reserve(base)
    new = a.allocate(np.array([[3, 3], [2, 2], [3, 3]]))
    assert new[:, -1].tolist() == [2, 0, 3]
    assert a.free_slots([3, 3]) == 0
    with pytest.raises(SidSpaceFull, match="raise dedup_size"):
        a.allocate(np.array([[3, 3]]))
    b = DedupAllocator.from_state(a.state())
    assert b.allocate(np.array([[1, 0]]))[0].tolist() == [1, 0, 1]


def test_default_dedup_size_has_headroom():
    codes = np.array([[0, 0]] * 11 + [[1, 1]])
    assert default_dedup_size(codes) == 32
    assert default_dedup_size(np.array([[0, 1]])) == 16
