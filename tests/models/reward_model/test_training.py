"""A reward model trained on a small synthetic world's simulated sessions ranks sessions like the world does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.reward_data import exploration_served, examples_from_world, true_session_value
from actors.train_job import fit_tokenizer
from ingest.synthetic import SyntheticWorld, WorldConfig
from models.reward_model.metrics import head_report, rank_correlation
from models.reward_model.model import RewardModelConfig
from models.reward_model.training import RewardTrainConfig, predict, train_reward_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained():
    world = SyntheticWorld(WorldConfig.small(seed=0, n_users=300))
    content = np.stack([world.item_topics(i) for i in world.item_ids])
    content = (content + 0.05 * np.random.default_rng(0).standard_normal(content.shape)).astype(np.float32)
    _, sids = fit_tokenizer(content, levels=2, codebook_size=16)
    ex = examples_from_world(world, exploration_served(world, 3000, 6, seed=0)).examples
    cut = int(world.cfg.start_ts_ms + 0.75 * world.cfg.duration_ms)
    train, test = ex.split_at(cut)
    cfg = RewardModelConfig(n_items=len(world.item_ids), level_sizes=tuple(int(x) + 1 for x in sids.max(0)),
                            d_model=32, max_history=30, max_session=6)
    res = train_reward_model(train, cfg, RewardTrainConfig(epochs=10, patience=3, batch_size=128, lr=1e-2), item_sids=sids)
    return world, res, train, test


def test_click_auc_and_true_value_correlation_on_a_later_window(trained):
    world, res, train, test = trained
    assert test.ts.min() > train.ts.max()
    rates, value = predict(res.model, test)
    rep = head_report(rates, test.targets)
    assert rep["rm_auc_click"] > 0.55, rep
    assert abs(rep["rm_mean_pred_click"] - rep["rm_mean_obs_click"]) < 0.03, rep
    sub = np.arange(0, len(test), 3)
    tv = np.array([true_session_value(world, test.user_ids[i], [world.item_ids[j] for j in test.sessions[i] if j >= 0],
                                      int(test.ts[i])) for i in sub])
    rho = rank_correlation(value[sub], tv)
    assert rho > 0.2, f"Spearman of predicted vs true session value {rho:.3f}"


def test_early_stopping_keeps_the_best_validation_epoch(trained):
    _, res, train, _ = trained
    losses = [r["valid_loss"] for r in res.history]
    assert res.best_epoch == 1 + int(np.argmin(losses)) and res.best_valid_loss == pytest.approx(min(losses))
    assert res.n_valid > 0 and res.n_train + res.n_valid == len(train)


@pytest.mark.parametrize("kw,match", [
    (dict(lr=0), r"lr=0 must be > 0, e.g. 3e-3"),
    (dict(valid_frac=1.0), r"valid_frac=1.0 must be in \[0, 1\)"),
    (dict(loss_weights={"watchtime": 1.0}), r"must map some of \['click', 'like', 'watch', 'skip'\]"),
    (dict(patience=-1), r"patience=-1 must be an int >= 0 \(0 = never stop\)"),
])
def test_train_config_errors_name_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        RewardTrainConfig(**kw)


def test_sessions_longer_than_the_model_are_refused(trained):
    _, res, train, _ = trained
    cfg = RewardModelConfig(n_items=10, max_session=3)
    with pytest.raises(ValueError, match="raise max_session"):
        train_reward_model(train, cfg)


# ---- the within-user ranking loss --------------------------------------------------------------

def test_ranking_loss_is_the_mean_pairwise_logistic_loss_within_groups():
    from models.reward_model.training import ranking_loss

    value = torch.tensor([0.5, -0.5, 2.0, 0.0], requires_grad=True)
    observed = torch.tensor([1.0, 0.0, 0.0, 3.0])
    groups = torch.tensor([0, 0, 1, 2])           # only users 0's two sessions form a pair
    loss, n = ranking_loss(value, observed, groups)
    assert n == 1
    assert float(loss.detach()) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(-1.0))))
    loss.backward()
    assert value.grad[0] < 0 < value.grad[1] and value.grad[2] == 0 == value.grad[3]   # pushes 0 up, 1 down
    # ties (within the margin) and different users give no pair, but still a graph
    loss0, n0 = ranking_loss(value, torch.tensor([1.0, 0.9, 0.0, 3.0]), groups, margin=0.2)
    assert n0 == 0 and float(loss0.detach()) == 0.0 and loss0.requires_grad


def test_observed_value_combines_targets_like_the_model_value():
    from models.reward_model.training import observed_value

    t = torch.tensor([[0.5, 0.25, 0.8, 0.1], [0.0, 0.0, float("nan"), 0.5]])
    w = torch.tensor([1.0, 2.0, 1.0, -0.5])
    np.testing.assert_allclose(observed_value(t, w).numpy(), [0.5 + 0.5 + 0.4 - 0.05, -0.25], rtol=1e-6)


def test_user_batches_keep_each_users_examples_together():
    from models.reward_model.training import _user_batches

    groups = np.repeat(np.arange(7), [3, 1, 4, 2, 5, 1, 2])
    batches = _user_batches(groups, 4, np.random.default_rng(0))
    order = np.concatenate(batches)
    assert sorted(order.tolist()) == list(range(len(groups)))
    g = groups[order]
    assert len(np.flatnonzero(np.diff(g) != 0)) == 6          # each user's examples form one run
    assert all(len(b) <= 4 for b in batches)


def test_training_with_the_ranking_loss_runs_and_learns(trained):
    world, _, train, test = trained
    cfg = RewardModelConfig(n_items=len(world.item_ids), d_model=16, max_history=30, max_session=6)
    res = train_reward_model(train, cfg, RewardTrainConfig(epochs=2, patience=0, lr=1e-2, rank_weight=1.0))
    assert len(res.history) == 2 and all(np.isfinite(r["loss"]) for r in res.history)
    assert res.history[1]["loss"] < res.history[0]["loss"]
    with pytest.raises(ValueError, match="rank_weight=-1"):
        RewardTrainConfig(rank_weight=-1)


# ---- per-slot targets ----------------------------------------------------------------------------

def test_slot_losses_are_per_slot_bce_and_watch_error_on_known_real_slots():
    from models.reward_model.model import RewardOutput
    from models.reward_model.training import slot_losses

    nan = float("nan")
    p = torch.tensor([[[0.8, 0.5, 0.6, 0.1], [0.2, 0.5, 0.9, 0.7], [0.3, 0.3, 0.3, 0.3]]], requires_grad=True)
    y = torch.tensor([[[1.0, 0.0, 0.5, 0.0], [0.0, nan, nan, 1.0], [1.0, 1.0, 1.0, 1.0]]])
    sess = torch.tensor([[4, 7, -1]])                                   # the third slot is padding
    out = RewardOutput(torch.zeros(1, 4), torch.zeros(1), p)
    total, parts = slot_losses(out, y, sess)
    bce = lambda q, t: -(t * np.log(q) + (1 - t) * np.log(1 - q))     # noqa: E731
    assert parts["click"] == pytest.approx((bce(0.8, 1) + bce(0.2, 0)) / 2, rel=1e-5)
    assert parts["like"] == pytest.approx(bce(0.5, 0), rel=1e-5)      # slot 1's like is unknown
    assert parts["watch"] == pytest.approx((0.6 - 0.5) ** 2, rel=1e-5)  # only the clicked slot's watch
    assert parts["skip"] == pytest.approx((bce(0.1, 0) + bce(0.7, 1)) / 2, rel=1e-5)
    assert float(total.detach()) == pytest.approx(sum(parts.values()), rel=1e-5)
    total.backward()
    assert (p.grad[0, 2] == 0).all()                                  # padding never trains
    # nothing known: 0 with a graph
    t0, parts0 = slot_losses(out, torch.full_like(y, nan), sess)
    assert float(t0.detach()) == 0.0 and parts0 == {} and t0.requires_grad


def test_slot_and_session_weights_are_validated():
    with pytest.raises(ValueError, match=r"slot_weight=-1 must be a number >= 0"):
        RewardTrainConfig(slot_weight=-1)
    with pytest.raises(ValueError, match="nothing trains the heads; set session_weight=1.0"):
        RewardTrainConfig(slot_weight=0.0, session_weight=0.0)


def test_slot_targets_teach_which_item_of_a_session_is_engaged_with(trained):
    """With the per-slot term the slots' click probabilities rank the clicked positions of a later window
    far better than the session-only model's (which has no item-level credit) — and better than chance."""
    from models.reward_model.metrics import slot_head_report
    from models.reward_model.training import predict_slots

    world, res, train, test = trained
    assert train.slot_targets is not None and np.isfinite(train.slot_targets[:, :, 0]).any()
    cfg = res.model.cfg
    slot = train_reward_model(train, cfg, RewardTrainConfig(epochs=6, patience=0, batch_size=128, lr=1e-2,
                                                            slot_weight=1.0, session_weight=0.0))
    sess = train_reward_model(train, cfg, RewardTrainConfig(epochs=6, patience=0, batch_size=128, lr=1e-2,
                                                            slot_weight=0.0, session_weight=1.0))
    a_slot = slot_head_report(predict_slots(slot.model, test), test.slot_targets)["rm_slot_auc_click"]
    a_sess = slot_head_report(predict_slots(sess.model, test), test.slot_targets)["rm_slot_auc_click"]
    assert a_slot > 0.6 and a_slot > a_sess + 0.02, (a_slot, a_sess)


def test_observed_value_counts_watch_minutes_per_clicked_slot_when_known():
    from models.reward_model.training import observed_value

    nan = float("nan")
    w = torch.tensor([1.0, 2.0, 1.0, -0.5])
    t = torch.tensor([[0.5, 0.0, 0.6, 0.5], [0.5, 0.0, 0.6, 0.5]])
    minutes = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])                    # the third slot is padding
    slots = torch.tensor([[[0.0, 0.0, nan, 1.0], [1.0, 0.0, 0.6, 0.0], [nan] * 4],  # the short item clicked
                          [[nan] * 4, [nan] * 4, [nan] * 4]])                        # unknown: session rates
    v = observed_value(t, w, slots, minutes).numpy()
    np.testing.assert_allclose(v, [0.5 + 0.6 * 1.0 / 2 - 0.25, 0.5 + 0.5 * 0.6 * 1.5 - 0.25], rtol=1e-6)
