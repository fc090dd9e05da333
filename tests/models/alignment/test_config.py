"""AlignConfig validates and names the fix."""

from __future__ import annotations

import pytest

from models.alignment.config import AlignConfig


@pytest.mark.parametrize("kw, match", [
    ({"user_share": 0.0}, "user_share"), ({"n_candidates": 1}, "at least 2"), ({"beta": 0}, "beta"),
    ({"mode": "rl"}, "reward_model"), ({"generation": "greedy"}, "beam"), ({"bottom_k": 8, "n_candidates": 8}, "bottom_k"),
    ({"lr": 0}, "lr"), ({"dpo_weight": -1}, "dpo_weight"), ({"steps": 0}, "steps"),
    ({"chosen_ntp_weight": -1}, "chosen_ntp_weight"), ({"pair_keep_share": 0.0}, "pair_keep_share"),
    ({"pair_keep_share": 1.5}, "pair_keep_share"),
])
def test_bad_values_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        AlignConfig(**kw)


def test_round_trip_and_unknown_keys():
    c = AlignConfig(beta=0.2, mode="feedback")
    assert AlignConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown AlignConfig fields"):
        AlignConfig.from_dict({"betta": 1})
