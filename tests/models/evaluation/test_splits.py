"""Leave-one-out split from arrays."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.splits import SplitConfig, leave_one_out


def _log():
    # user a: x(1) y(2) z(3) w(4); user b: y(5) x(6) v(7); user c: two events only
    users = np.array(["a", "b", "a", "c", "a", "b", "a", "c", "b"])
    items = np.array(["x", "y", "y", "x", "z", "x", "w", "z", "v"])
    ts = np.array([1, 5, 2, 1, 3, 6, 4, 2, 7])
    return users, items, ts


def test_last_is_test_second_to_last_is_valid_rest_is_train():
    sp = leave_one_out(*_log())
    name = lambda idx: [str(sp.item_ids[i]) for i in idx]  # noqa: E731
    assert list(sp.user_ids) == ["a", "b", "c"]
    assert sp.n_items == 5
    train = sp.train()
    assert name(train.items[0]) == ["x", "y"]
    assert name(train.items[1]) == ["y"]
    assert name(train.items[2]) == ["x", "z"]  # too short to evaluate: all training
    va, te = sp.valid(), sp.test()
    assert va.users.tolist() == te.users.tolist() == [0, 1]
    assert name(va.targets) == ["z", "x"] and name(te.targets) == ["w", "v"]
    assert name(va.histories.items[0]) == ["x", "y"]
    assert name(te.histories.items[0]) == ["x", "y", "z"]
    assert name(te.histories.items[1]) == ["y", "x"]
    assert te.histories.ts[0].tolist() == [1, 2, 3]
    # history + target is exactly the user's sequence prefix (no leakage of later events)
    for u, h, t in zip(te.users, te.histories.items, te.targets):
        assert np.array_equal(np.append(h, t), sp.items[u])


def test_sorted_by_time_with_stable_ties_and_counts():
    users = np.array([1, 1, 1, 1])
    items = np.array([10, 11, 12, 13])
    ts = np.array([5, 5, 1, 9])
    sp = leave_one_out(users, items, ts)
    assert [sp.item_ids[i] for i in sp.items[0]] == [12, 10, 11, 13]
    assert sp.item_counts("train").sum() == 2
    assert sp.item_counts("train_valid").sum() == 3


def test_max_users_and_bad_input():
    sp = leave_one_out(*_log(), cfg=SplitConfig(max_users=2))
    assert list(sp.user_ids) == ["a", "b"]
    with pytest.raises(ValueError, match="equal lengths"):
        leave_one_out(np.array([1, 2]), np.array([1]), np.array([1, 2]))
    with pytest.raises(ValueError, match="empty"):
        leave_one_out(np.array([]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="min_events"):
        SplitConfig(min_events=2)


def test_dedupe_keeps_first_interaction_per_user_item():
    users = np.array([1, 1, 1, 1, 1])
    items = np.array([7, 7, 8, 7, 9])  # click 7, watch 7, 8, like 7 again, 9
    ts = np.array([1, 2, 3, 4, 5])
    sp = leave_one_out(users, items, ts)
    assert [sp.item_ids[i] for i in sp.items[0]] == [7, 8, 9]
    assert sp.ts[0].tolist() == [1, 3, 5]
    raw = leave_one_out(users, items, ts, cfg=SplitConfig(dedupe=False))
    assert [raw.item_ids[i] for i in raw.items[0]] == [7, 7, 8, 7, 9]
