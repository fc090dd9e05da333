"""The reward model's shapes, padding invariance, new-item representation and config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.evaluation.ranker import Histories
from models.reward_model.data import HEADS
from models.reward_model.features import history_batch
from models.reward_model.model import RewardModel, RewardModelConfig

torch.set_num_threads(1)


def _model(seed: int = 0, **kw) -> RewardModel:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sids = np.stack([rng.integers(0, 4, 30), rng.integers(0, 4, 30), np.arange(30) % 3], 1)
    cfg = RewardModelConfig(n_items=30, level_sizes=(4, 4, 3), d_model=16, max_history=8, max_session=6, **kw)
    return RewardModel(cfg, sids).eval()


def _hist(seqs, ts=None) -> Histories:
    ts = ts or [np.arange(len(s)) * 60_000 for s in seqs]
    return Histories([np.array(s, np.int64) for s in seqs], ts=ts, types=[np.ones(len(s), np.int64) for s in seqs])


def test_shapes_and_ranges():
    m = _model()
    hist = history_batch(_hist([[1, 2, 3], [], [4] * 12]), 8, 16)
    out = m(hist, torch.tensor([[1, 2, 3, -1], [5, -1, -1, -1], [7, 8, 9, 10]]))
    assert out.rates.shape == (3, len(HEADS)) and out.value.shape == (3,) and out.slot_probs.shape == (3, 4, 4)
    assert bool(((out.rates >= 0) & (out.rates <= 1)).all()) and bool(torch.isfinite(out.value).all())


def test_padding_does_not_change_the_output():
    m = _model()
    sess = torch.tensor([[3, 4, 5]])
    base = m(history_batch(_hist([[1, 2, 6]]), 8, 16), sess)
    # less or more padding in the history window (5 or 12 columns; the model keeps the last max_history=8)
    # and trailing empty slots in the session
    for width in (5, 12):
        out = m(history_batch(_hist([[1, 2, 6]]), width, 16), torch.tensor([[3, 4, 5, -1, -1, -1]]))
        torch.testing.assert_close(out.value, base.value)
        torch.testing.assert_close(out.rates, base.rates)
    hb = history_batch(_hist([[1, 2, 6]]), 8, 16)
    # right-padded history (padding on the other side) gives the same too
    right = type(hb)(*(torch.roll(t, shifts=-5, dims=1) for t in hb))
    torch.testing.assert_close(m(right, sess).value, base.value)
    # an empty slot in a batch neighbour changes nothing for this row
    both = m(type(hb)(*(torch.cat([t, t]) for t in hb)), torch.tensor([[3, 4, 5], [9, -1, -1]]))
    torch.testing.assert_close(both.value[:1], base.value)


def test_new_items_are_represented_by_their_sids():
    m = _model()
    sids = m.item_sids.clone()
    # two items the id table never saw (indices 30, 31) with different SIDs, one like item 0's
    m.set_item_sids(torch.cat([sids, torch.tensor([[1, 2, 0], [3, 0, 1]])]))
    v = m.item_vectors(torch.tensor([30, 31, -2]))
    assert not torch.allclose(v[0], v[1]), "new items with different SIDs must get different vectors"
    torch.testing.assert_close(v[2], m.id_emb.weight[0])  # unknown item: the unknown-id row only
    hist = history_batch(_hist([[1, 2]]), 8, 16)
    out = m(hist, torch.tensor([[30, 31]]))
    assert bool(torch.isfinite(out.value).all())


def test_value_is_the_configured_combination():
    m = _model(value_weights={"click": 1.0})
    out = m(history_batch(_hist([[1, 2]]), 8, 16), torch.tensor([[3, 4, -1]]))
    torch.testing.assert_close(out.value, out.rates[:, 0])


@pytest.mark.parametrize("kw,match", [
    (dict(n_items=0), r"n_items=0 must be a positive int"),
    (dict(n_items=5, d_model=30, heads=4), r"divisible by heads=4; try d_model=28"),
    (dict(n_items=5, level_sizes=(4, 0)), r"take them from the tokenizer"),
    (dict(n_items=5, value_weights={"clicks": 1.0}), r"unknown head\(s\) \['clicks'\]; use some of"),
    (dict(n_items=5, dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
])
def test_config_errors_name_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        RewardModelConfig(**kw)


def test_too_long_sessions_are_refused():
    m = _model()
    with pytest.raises(ValueError, match="raise RewardModelConfig.max_session"):
        m(history_batch(_hist([[1]]), 8, 16), torch.zeros((1, 7), dtype=torch.long))


def test_the_value_counts_watch_minutes_of_each_items_length():
    """Value watch term = mean over slots of P(click) × watch fraction × the item's minutes: a longer item
    raises it in proportion; without lengths every item counts 1 minute; an unknown one the mean length."""
    m = _model()
    hist = history_batch(_hist([[1, 2, 6]]), 8, 16)
    sess = torch.tensor([[3, 4, -1]])
    out0 = m(hist, sess)
    p = out0.slot_probs[0]
    w = dict(zip(HEADS, m.cfg.weight_vector()))
    per_item = lambda mins: (p[:2, 0] + 0 * mins).mean() * w["click"] + p[:2, 1].mean() * w["like"] + \
        (p[:2, 0] * p[:2, 2] * mins).mean() * w["watch"] + p[:2, 3].mean() * w["skip"]   # noqa: E731
    torch.testing.assert_close(out0.value[0], per_item(torch.ones(2)))
    lengths = np.zeros(30)
    lengths[3], lengths[4], lengths[5] = 120_000, 30_000, 90_000      # 2, 0.5 and 1.5 minutes; others unknown
    m.set_item_lengths(lengths)
    out = m(hist, sess)
    torch.testing.assert_close(out.slot_probs, out0.slot_probs)       # the heads do not change
    torch.testing.assert_close(out.value[0], per_item(torch.tensor([2.0, 0.5])))
    assert float(m.minutes(torch.tensor([7]))) == pytest.approx(80_000 / 60_000)   # unknown: the mean known
    assert float(m.minutes(torch.tensor([-2]))) == pytest.approx(80_000 / 60_000)

