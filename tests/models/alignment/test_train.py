"""The alignment step: NTP + λ·DPO raises the chosen-vs-rejected margin; sharding by rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.alignment.config import AlignConfig
from models.alignment.logprob import session_logprob
from models.alignment.train import AlignData, FeedbackData, PairData, align_step, make_optimizer, train_alignment
from models.generator.features import FlatEvents
from models.generator.model import GenerativeRecommender, GeneratorConfig, HistoryBatch
from models.generator.sessions import SessionConfig, build_sessions

torch.set_num_threads(1)
LEVELS = (4, 4, 2)


def _setup(seed: int = 0, n_pairs: int = 6):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_items = 32
    item_sids = np.stack([np.arange(n_items) // 8, (np.arange(n_items) // 2) % 4, np.arange(n_items) % 2], 1)
    model = GenerativeRecommender(GeneratorConfig(level_sizes=LEVELS, d_model=16, heads=2, enc_layers=1,
                                                  dec_layers=1, max_history=10, session_len=2, dropout=0.1)).eval()
    seqs = [rng.integers(0, n_items, size=rng.integers(4, 10)) for _ in range(20)]
    ntp = build_sessions(FlatEvents.from_sequences(seqs, n_items=n_items), SessionConfig(session_len=2))
    hist, _, _ = ntp.batch(np.arange(n_pairs), item_sids, 10, 16)
    ch = torch.from_numpy(item_sids[rng.integers(0, n_items, (n_pairs, 2))])
    rj = torch.from_numpy(item_sids[rng.integers(0, n_items, (n_pairs, 2))])
    m = torch.ones(n_pairs, 2, dtype=torch.bool)
    with torch.no_grad():
        rc, rr = session_logprob(model, hist, ch, m), session_logprob(model, hist, rj, m)
    return model, AlignData(ntp, item_sids, PairData(hist, ch, m, rj, m, rc, rr))


def test_first_step_margin_is_zero_then_dpo_raises_it():
    model, data = _setup()
    cfg = AlignConfig(steps=25, pair_batch=6, ntp_batch=16, beta=0.5, lr=3e-3, dpo_weight=1.0)
    hist = train_alignment(model, model, data, cfg)
    assert hist[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)   # π_θ = π_ref, dropout off
    assert hist[0]["dpo_loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert hist[-1]["reward_margin"] > 0.5
    p = data.pairs
    with torch.no_grad():
        after = (session_logprob(model, p.hist, p.chosen, p.chosen_mask)
                 - session_logprob(model, p.hist, p.rejected, p.rejected_mask))
    assert float(after.mean()) > float((p.ref_chosen - p.ref_rejected).mean()) + 1.0


def test_without_dpo_the_margin_does_not_move_on_purpose():
    """λ = 0 is plain NTP: the pairs' margin is whatever NTP makes of it, not pushed up by the pairs."""
    model, data = _setup()
    hist = train_alignment(model, model, data, AlignConfig(steps=25, pair_batch=6, ntp_batch=16, beta=0.5, lr=3e-3,
                                                           dpo_weight=0.0))
    assert hist[-1]["reward_margin"] < 0.5


def test_chosen_ntp_term_holds_the_chosen_likelihood_up():
    """RPO: with μ > 0 the chosen sessions' log-probability ends higher than with plain DPO from the same
    start, and the step reports the chosen NLL; μ = 0 reports none."""
    cfg = dict(steps=20, pair_batch=6, ntp_batch=16, beta=0.5, lr=3e-3, dpo_weight=1.0)
    ends = {}
    for mu in (0.0, 2.0):
        model, data = _setup()
        hist = train_alignment(model, model, data, AlignConfig(**cfg, chosen_ntp_weight=mu))
        assert ("chosen_nll" in hist[-1]) == (mu > 0)
        p = data.pairs
        with torch.no_grad():
            ends[mu] = float(session_logprob(model, p.hist, p.chosen, p.chosen_mask).mean())
    assert ends[2.0] > ends[0.0] + 0.1


def _kl_to_parent(model, parent, data) -> float:
    """Mean KL(parent ‖ model) per code over every NTP example (the anchor's measure, computed directly)."""
    hist, tgt, tmask = data.ntp.batch(np.arange(len(data.ntp)), data.item_sids, 10, 16)
    t = torch.where(tmask[..., None], tgt, torch.zeros_like(tgt))
    with torch.no_grad():
        lq, lp = (torch.log_softmax(m(hist, t).logits.float(), -1).clamp(min=-1e4) for m in (parent, model))
    kl = (lq.exp() * (lq - lp)).sum(-1)                                     # [B, K*D]
    w = tmask.float().repeat_interleave(tgt.shape[-1], 1)
    return float((kl * w).sum() / w.sum())


def test_ntp_kl_anchor_is_zero_at_the_start_and_keeps_the_policy_near_the_parent():
    """κ > 0: the step reports the KL to the frozen parent (0 before the first update), and after the same
    steps of strong DPO the policy's next-code distributions on the NTP data are closer to the parent's
    than without the anchor; κ = 0 reports none."""
    import copy

    cfg = dict(steps=25, pair_batch=6, ntp_batch=16, beta=0.5, lr=3e-3, dpo_weight=2.0)
    kls = {}
    for kappa in (0.0, 5.0):
        model, data = _setup()
        parent = copy.deepcopy(model)
        hist = train_alignment(model, model, data, AlignConfig(**cfg, ntp_kl_weight=kappa))
        assert ("ntp_kl" in hist[0]) == (kappa > 0)
        if kappa:
            assert hist[0]["ntp_kl"] == pytest.approx(0.0, abs=1e-6)
            assert hist[-1]["ntp_kl"] > 0
        kls[kappa] = _kl_to_parent(model, parent, data)
    assert kls[5.0] < 0.7 * kls[0.0]


def test_ntp_kl_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="ntp_kl_weight"):
        AlignConfig(ntp_kl_weight=-0.1)


def test_feedback_step_and_sharding():
    model, data = _setup()
    p = data.pairs
    k, d = p.chosen.shape[1], p.chosen.shape[2]
    with torch.no_grad():
        old = torch.full((len(p), k, d), -1.0)
    fb = FeedbackData(p.hist, p.chosen, p.chosen_mask, torch.tensor([1, -1, 0, 1, -1, 1]), old)
    cfg = AlignConfig(steps=3, pair_batch=4, ntp_batch=8, mode="feedback")
    m = align_step(model, model, make_optimizer(model, cfg), data.ntp.batch(np.arange(8), data.item_sids, 10, 16),
                   cfg, None, fb)
    assert np.isfinite(m["feedback_loss"]) and "dpo_loss" not in m
    for rank in (0, 1):
        hist = train_alignment(model, model, AlignData(data.ntp, data.item_sids, None, fb), cfg, rank=rank, world_size=2)
        assert len(hist) == 3
    with pytest.raises(ValueError, match="rank"):
        train_alignment(model, model, data, cfg, rank=2, world_size=2)


def test_histories_of_different_lengths_are_stacked():
    from models.alignment.train import _cat_hist

    a = HistoryBatch(torch.ones(2, 3, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long),
                     torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool))
    b = HistoryBatch(torch.ones(1, 5, 3, dtype=torch.long), torch.ones(1, 5, dtype=torch.long),
                     torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool))
    c = _cat_hist([a, b])
    assert c.sids.shape == (3, 5, 3) and c.mask[:2, :2].sum() == 0 and c.mask[:2, 2:].all()
