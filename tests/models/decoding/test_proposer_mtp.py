"""The fused draft step of the MTP heads is the heads' own step (speculative beam drafts with it)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from models.decoding.proposer_mtp import FusedHeadStep, head_step
from models.generator.mtp import MTPConfig, MTPHeads


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), levels=st.sampled_from([(4, 3, 3), (8, 8, 2), (5, 2, 7, 3)]),
       n=st.integers(1, 9), d=st.sampled_from([8, 16]))
def test_fused_step_equals_heads_step_at_every_level(seed, levels, n, d):
    """Same next state and logits (-inf beyond the next level) for every input level, codes outside the
    level (dead draft rows) clamped exactly as the heads clamp them."""
    torch.manual_seed(seed)
    heads = MTPHeads(MTPConfig(levels, d)).double().eval()
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.3 * torch.randn_like(p))
        fused = FusedHeadStep(heads)
        for lv in range(len(levels)):
            s = torch.randn(n, d, dtype=torch.float64)
            code = torch.randint(-1, max(levels) + 1, (n,))
            want_s, want = heads.step(s, code, lv)
            got_s, got = fused(s, code, lv)
            torch.testing.assert_close(got_s, want_s)
            assert torch.equal(torch.isneginf(got), torch.isneginf(want))
            torch.testing.assert_close(got, want)


def test_head_step_picks_the_fused_step_for_mtp_heads_only():
    heads = MTPHeads(MTPConfig((4, 3), 8))
    assert isinstance(head_step(heads), FusedHeadStep)

    class Other:
        def step(self, s, code, level):
            return s, code

    other = Other()
    assert head_step(other) == other.step
    with pytest.raises(AttributeError):
        head_step(object())
