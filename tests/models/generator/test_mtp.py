"""MTP heads: shapes, second-stage training that leaves the generator untouched, and better drafts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastdec_helpers import random_world, one_thread  # noqa: E402
from models.generator.mtp import MTPConfig, MTPHeads, fit_mtp, mtp_loss  # noqa: E402
from models.decoding.proposer_mtp import MTPProposer  # noqa: E402
from models.decoding.spec_types import SpecConfig  # noqa: E402
from models.decoding.speculative import speculative_session  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chain_shapes_and_invalid_codes_masked():
    heads = MTPHeads(MTPConfig((4, 3, 2), d_model=8, horizon=3))
    hidden = torch.randn(2, 7, 8)
    tokens = torch.randint(0, 2, (2, 7))
    out = heads.chain(hidden, tokens, start=0)
    assert [tuple(o.shape) for o in out] == [(2, 6, 4), (2, 5, 4), (2, 4, 4)]
    # position p+1 of step 1 predicts level (p+1) % 3; level 2 has 2 codes, level 1 has 3
    assert torch.isinf(out[0][:, 0, 3]).all() and torch.isfinite(out[0][:, 0, :3]).all()   # p=0 -> level 1
    assert torch.isinf(out[0][:, 1, 2:]).all()                                               # p=1 -> level 2
    loss = mtp_loss(heads, hidden, torch.randn(2, 7, 4).masked_fill(torch.rand(2, 7, 4) < 0.2, float("-inf")), tokens)
    assert torch.isfinite(loss) and loss > 0


def test_fit_mtp_leaves_generator_unchanged_and_improves_drafts():
    w = random_world(4, b=48, n_items=30, dtype=torch.float32, session_len=4)
    model = w.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    # self-distillation data: the generator's own greedy sessions (what the verifier will accept)
    plain = speculative_session(model, w.memory, w.constraint, 4, seen=w.seen)
    sessions = plain.codes.view(48, 4, 3)
    cfg = MTPConfig(model.cfg.level_sizes, model.cfg.d_model, horizon=4,
                    train_epochs=15, train_batch_size=48, train_lr=1e-2)
    untrained = MTPHeads(cfg).eval()
    heads = MTPHeads(cfg).init_from_generator(model)
    losses = fit_mtp(model, heads, w.hist, sessions)
    assert losses[-1] < losses[0] - 0.15, losses
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"second-stage MTP training changed the generator ({k})"
    assert [p.requires_grad for p in model.parameters()] == flags

    def run(h):
        return speculative_session(model, w.memory, w.constraint, 4, proposer=MTPProposer(h),
                                   spec=SpecConfig(gamma=3, adaptive=False), seen=w.seen)

    base, better = run(untrained), run(heads)
    assert torch.equal(better.codes, plain.codes) and torch.equal(base.codes, plain.codes)
    assert better.stats.row_accepted > 1.5 * base.stats.row_accepted + 5


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="horizon"):
        MTPConfig((4, 4), d_model=8, horizon=0)
    with pytest.raises(ValueError, match="lr"):
        MTPConfig((4, 4), d_model=8, train_lr=0)
    heads = MTPHeads(MTPConfig((4, 4), d_model=8))
    w = random_world(1, level_sizes=(4, 3, 3), b=2)
    with pytest.raises(ValueError, match="D=3"):
        fit_mtp(w.model, heads, w.hist, torch.zeros(2, 2, 3, dtype=torch.long))
