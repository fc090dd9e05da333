"""The narrowing guard's rule: the last snapshot within the bound, evaluated lazily; none = 0."""

from __future__ import annotations

import pytest

from models.alignment.config import AlignConfig
from models.alignment.guard import is_checkpoint, keep_checkpoint


def test_checkpoints_every_k_steps_and_the_last():
    assert [s for s in range(1, 51) if is_checkpoint(s, 50, 10)] == [10, 20, 30, 40, 50]
    assert [s for s in range(1, 25) if is_checkpoint(s, 24, 10)] == [10, 20, 24]
    assert [s for s in range(1, 8) if is_checkpoint(s, 7, 10)] == [7]
    assert [s for s in range(1, 8) if is_checkpoint(s, 7, 0)] == [7]


def test_keeps_the_last_step_within_the_bound_and_evaluates_no_more_than_needed():
    ndcg = {10: 0.101, 20: 0.0985, 30: 0.090, 40: 0.097}
    asked = []

    def at(s):
        asked.append(s)
        return ndcg[s]

    r = keep_checkpoint(0.1, [10, 20, 30, 40], at, 0.02, n_users=300)
    assert r.held and r.kept_step == 20 and r.kept_ndcg == 0.0985 and r.bound == pytest.approx(0.098)
    assert asked == [40, 30, 20] and [s for s, _ in r.checked] == [40, 30, 20]
    assert keep_checkpoint(0.1, [10, 20, 30, 40], ndcg.get, 0.0).kept_step == 10
    assert keep_checkpoint(0.1, [10, 20, 30, 40], ndcg.get, 0.5).kept_step == 40


def test_none_within_the_bound_keeps_nothing():
    r = keep_checkpoint(0.2, [5, 10], lambda s: 0.1, 0.02)
    assert not r.held and r.kept_step == 0 and len(r.checked) == 2
    assert r.to_dict()["checked"] == [[10, 0.1], [5, 0.1]]


@pytest.mark.parametrize("kw, match", [({"guard_every": -1}, "guard_every"), ({"guard_max_drop": 1.0}, "guard_max_drop"),
                                       ({"guard_users": -1}, "guard_users")])
def test_config_refuses_bad_guard_values(kw, match):
    with pytest.raises(ValueError, match=match):
        AlignConfig(**kw)
    with pytest.raises(ValueError, match="max_drop"):
        keep_checkpoint(0.1, [1], lambda s: 0.1, -0.1)
