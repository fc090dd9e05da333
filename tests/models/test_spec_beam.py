"""Speculative beam search: strict mode equals plain constrained beam search exactly; relaxed stays valid."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from fastdec_helpers import bigram_world, random_world, one_thread  # noqa: E402
from models.decoding import beam_session, default_processors  # noqa: E402
from models.mtp import MTPConfig, MTPHeads  # noqa: E402
from models.spec_beam import speculative_beam  # noqa: E402
from models.speculative import SpecConfig  # noqa: E402

FAST = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHEAP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain_beam(w, n_items, width):
    procs = default_processors(w.trie, seen=w.seen_mask, n_items=w.seen_mask.shape[1])
    return beam_session(w.model, w.memory, w.trie, session_len=n_items, beam_width=width, processors=procs)


def _assert_valid(w, codes, n_items):
    items = w.constraint.lookup(codes.view(codes.shape[0], n_items, -1))
    assert (items >= 0).all(), "invalid SID generated"
    for b in range(items.shape[0]):
        row = items[b].tolist()
        assert len(set(row)) == len(row), f"repeat within a session: {row}"
        assert not set(row) & {int(x) for x in w.seen[b]}, "seen item recommended"
    return items


def _item_scores(cum, b, n_items, D):
    ends = cum.view(b, n_items, D)[:, :, -1]
    return ends - torch.cat([ends.new_zeros(b, 1), ends[:, :-1]], 1)


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 3), width=st.integers(1, 5), gamma=st.integers(1, 5),
       n_items=st.integers(1, 4))
def test_strict_spec_beam_equals_plain_beam_random_model(seed, b, width, gamma, n_items):
    w = random_world(seed, b=b, session_len=n_items)
    ref = _plain_beam(w, n_items, width)
    heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()
    out = speculative_beam(w.model, w.memory, w.constraint, n_items, width, heads=heads,
                           spec=SpecConfig(gamma=gamma, gamma_max=6), seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    assert torch.equal(_assert_valid(w, out.codes, n_items), ref.items)
    np.testing.assert_allclose(_item_scores(out.cum, b, n_items, 3).numpy(), ref.scores.numpy(), atol=1e-5)
    plain = speculative_beam(w.model, w.memory, w.constraint, n_items, width, seen=w.seen)
    assert torch.equal(plain.codes, out.codes) and plain.stats.target_forwards == n_items * 3


@CHEAP
@given(seed=st.integers(0, 10_000), noise=st.sampled_from([0.0, 0.05, 0.5, 3.0]), b=st.integers(1, 3),
       width=st.integers(1, 4), gamma=st.integers(1, 6))
def test_strict_spec_beam_bigram_accepts_and_rejects(seed, noise, b, width, gamma):
    """Perfect drafts are all accepted; noisy ones partly; the output is always plain beam search's."""
    w, heads = bigram_world(seed, b=b, noise=noise)
    ref = _plain_beam(w, 4, width)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, width, heads=heads,
                           spec=SpecConfig(gamma=gamma, gamma_max=8), seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    _assert_valid(w, out.codes, 4)
    np.testing.assert_allclose(_item_scores(out.cum, b, 4, 3).numpy(), ref.scores.numpy(), atol=1e-5)
    if noise == 0.0:
        assert out.stats.acceptance_rate == 1.0
        assert out.stats.target_forwards < 12


def test_perfect_drafts_save_forwards_and_noisy_drafts_still_accept_some():
    w, heads = bigram_world(21, b=2, noise=0.0)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, 3, heads=heads, spec=SpecConfig(gamma=4),
                           seen=w.seen)
    assert out.stats.target_forwards <= 4          # 12 codes in 1 + ceil(11 / 5..8) forwards
    w, heads = bigram_world(21, b=2, noise=0.3)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, 3, heads=heads, spec=SpecConfig(gamma=4),
                           seen=w.seen)
    assert torch.equal(out.codes, _plain_beam(w, 4, 3).sids.reshape(2, -1))
    assert 0 < out.stats.accepted < out.stats.drafted


@CHEAP
@given(seed=st.integers(0, 10_000), noise=st.sampled_from([0.0, 0.5, 3.0]), width=st.integers(1, 4),
       factor=st.sampled_from([1.0, 2.0, 4.0]))
def test_relaxed_is_valid_and_labelled_lossy(seed, noise, width, factor):
    w, heads = bigram_world(seed, b=2, noise=noise)
    strict = speculative_beam(w.model, w.memory, w.constraint, 4, width, heads=heads, seen=w.seen)
    out = speculative_beam(w.model, w.memory, w.constraint, 4, width, heads=heads, seen=w.seen,
                           relaxed=True, relax_factor=factor)
    _assert_valid(w, out.codes, 4)
    assert not out.stats.lossless and strict.stats.lossless
    if noise == 0.0:                                   # perfect drafts: relaxed = strict
        assert torch.equal(out.codes, strict.codes)
