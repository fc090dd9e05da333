"""DPO, the bounded feedback loss and the KL estimate against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from models.alignment.dpo import dpo_loss, gbpo_loss, sampled_kl


def test_dpo_loss_matches_the_formula_by_hand():
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -3.0]), torch.tensor([-1.0, -2.0])
    beta = 0.5
    out = dpo_loss(pc, pr, rc, rr, beta)
    # pair 0: chosen 0.5*(−1+1.5)=0.25, rejected 0.5*(−2+1)=−0.5, logit 0.75
    # pair 1: chosen 0.5*(−3+3)=0,    rejected 0.5*(−1+2)=0.5,   logit −0.5
    l0, l1 = math.log1p(math.exp(-0.75)), math.log1p(math.exp(0.5))
    assert out.loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert out.reward_margin.item() == pytest.approx((0.75 - 0.5) / 2)
    assert out.chosen_reward.item() == pytest.approx(0.125)
    assert out.rejected_reward.item() == pytest.approx(0.0)
    assert out.accuracy.item() == pytest.approx(0.5)


def test_dpo_gradient_raises_chosen_and_lowers_rejected_and_ignores_the_reference():
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    rc = torch.tensor([-2.0], requires_grad=True)
    rr = torch.tensor([-2.0], requires_grad=True)
    dpo_loss(pc, pr, rc, rr, 0.1).loss.backward()
    assert pc.grad.item() == pytest.approx(-0.1 * 0.5)   # −β σ(−0) : descent raises log π(chosen)
    assert pr.grad.item() == pytest.approx(0.1 * 0.5)
    assert rc.grad is None and rr.grad is None
    # equal policy and reference: loss log 2, margin 0
    out = dpo_loss(rc.detach(), rr.detach(), rc.detach(), rr.detach(), 0.1)
    assert out.loss.item() == pytest.approx(math.log(2))
    assert out.reward_margin.item() == 0.0


def test_dpo_refuses_bad_input():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, 0.0)
    with pytest.raises(ValueError, match=r"\[P\]"):
        dpo_loss(x, torch.zeros(2), x, x, 0.1)


def test_gbpo_loss_by_hand_and_bounded_negative_gradient():
    lp = torch.log(torch.tensor([[0.5, 0.2], [0.9, 0.3]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.4, 0.4], [0.5, 0.5]]))
    adv = torch.tensor([1, -1])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss = gbpo_loss(lp, old, adv, mask)
    # A=+1: p / max(p_old, p): 0.5/0.5, 0.2/0.4 ; A=−1: −p / max(p_old, 1−p): −0.9/0.5, −0.3/0.7
    want = -(1.0 + 0.5 - 0.9 / 0.5 - 0.3 / 0.7) / 4
    assert loss.item() == pytest.approx(want, rel=1e-5)
    loss.backward()
    # negative sample, tiny probability: gradient of log(1 − p) ≈ p, bounded (not 1/p as −log p would give)
    tiny = torch.log(torch.tensor([[1e-6]])).requires_grad_(True)
    gbpo_loss(tiny, torch.log(torch.tensor([[1e-6]])), torch.tensor([-1]), torch.ones(1, 1, dtype=torch.bool)).backward()
    assert abs(tiny.grad.item()) < 1e-5
    # advantage 0 is dropped
    z = gbpo_loss(lp.detach(), old, torch.tensor([0, 0]), mask)
    assert z.item() == 0.0


def test_sampled_kl():
    assert sampled_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.5])).item() == pytest.approx(0.5)
