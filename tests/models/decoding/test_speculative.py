"""Speculative greedy / sampling: exact equality with plain decoding, the rejection rule, KV rollback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy.stats import chisquare

import sys
from pathlib import Path

from fastdec_helpers import bigram_world, random_world, one_thread
from models.decoding.search import greedy_session
from models.generator.mtp import MTPConfig, MTPHeads
from models.decoding.proposer_draft_model import DraftModelProposer
from models.decoding.proposer_mtp import MTPProposer
from models.decoding.spec_types import SpecConfig
from models.decoding.speculative import speculative_session
from models.decoding.verifiers import AcceptAllVerifier, GreedyVerifier, SamplingVerifier

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])     # real generators
CHEAP = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])   # bigram target

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain_greedy(w, n_items):
    return greedy_session(w.model, w.memory, w.constraint, session_len=n_items, seen=w.seen_mask)


def _check_valid(w, codes, n_items, seen=True):
    """Every generated SID is a catalog item, no repeats within a session, nothing seen."""
    items = w.constraint.lookup(codes.view(codes.shape[0], n_items, -1))
    assert (items >= 0).all(), "generated an invalid SID"
    for b in range(items.shape[0]):
        row = items[b].tolist()
        assert len(set(row)) == len(row), f"repeated item in session {row}"
        if seen:
            assert not set(row) & set(int(x) for x in w.seen[b]), "recommended a seen item"
    return items


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), n_items=st.integers(1, 5), gamma=st.integers(1, 6),
       adaptive=st.booleans(), layers=st.integers(1, 2))
def test_spec_greedy_mtp_equals_plain_greedy(seed, b, n_items, gamma, adaptive, layers):
    w = random_world(seed, b=b, dec_layers=layers, session_len=n_items)
    ref = _plain_greedy(w, n_items)
    heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()
    spec = SpecConfig(gamma=gamma, gamma_min=1, gamma_max=max(gamma, 6), adaptive=adaptive)
    out = speculative_session(w.model, w.memory, w.constraint, n_items, proposer=MTPProposer(heads),
                              spec=spec, seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    items = _check_valid(w, out.codes, n_items)
    assert torch.equal(items, ref.items)
    np.testing.assert_allclose(out.logp.view(b, n_items, -1).sum(-1).numpy(), ref.scores.numpy(), atol=1e-4)
    # plain (no proposer) path of the same loop: one target forward per code
    plain = speculative_session(w.model, w.memory, w.constraint, n_items, seen=w.seen)
    assert torch.equal(plain.codes, out.codes) and plain.stats.target_forwards == n_items * w.constraint.depth


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 4), gamma=st.integers(1, 5))
def test_spec_greedy_draft_model_equals_plain(seed, b, gamma):
    w = random_world(seed, b=b)
    draft = random_world(seed + 1, b=b).model               # an unrelated small generator
    ref = _plain_greedy(w, 4)
    out = speculative_session(w.model, w.memory, w.constraint, 4, proposer=DraftModelProposer(draft),
                              spec=SpecConfig(gamma=gamma, gamma_max=6), seen=w.seen, hist=w.hist)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    _check_valid(w, out.codes, 4)


def test_draft_model_equal_to_target_accepts_everything():
    w = random_world(3, b=2)
    out = speculative_session(w.model, w.memory, w.constraint, 4, proposer=DraftModelProposer(w.model),
                              spec=SpecConfig(gamma=4, gamma_max=8), seen=w.seen, hist=w.hist)
    assert torch.equal(out.codes, _plain_greedy(w, 4).sids.reshape(2, -1))
    assert out.stats.acceptance_rate == 1.0
    assert out.stats.target_forwards < 4 * w.constraint.depth / 2


@CHEAP
@given(seed=st.integers(0, 10_000), noise=st.sampled_from([0.0, 0.3, 1.0, 5.0]), b=st.integers(1, 4),
       gamma=st.integers(1, 6))
def test_spec_greedy_bigram_all_accept_paths(seed, noise, b, gamma):
    """Perfect, slightly and badly wrong drafts: always exactly plain greedy; perfect drafts all accepted."""
    w, heads = bigram_world(seed, b=b, noise=noise)
    ref = _plain_greedy(w, 4)
    out = speculative_session(w.model, w.memory, w.constraint, 4, proposer=MTPProposer(heads),
                              spec=SpecConfig(gamma=gamma, gamma_max=8), seen=w.seen)
    assert torch.equal(out.codes, ref.sids.reshape(b, -1))
    _check_valid(w, out.codes, 4)
    if noise == 0.0:
        assert out.stats.acceptance_rate == 1.0


def test_mtp_parallel_is_valid_and_saves_forwards():
    w, heads = bigram_world(7, b=3, noise=1.0)
    out = speculative_session(w.model, w.memory, w.constraint, 4, proposer=MTPProposer(heads),
                              verifier=AcceptAllVerifier(), spec=SpecConfig(gamma=3, gamma_min=3, gamma_max=3,
                                                                            adaptive=False), seen=w.seen)
    _check_valid(w, out.codes, 4)
    assert not out.stats.lossless
    # 12 codes: BOS forward (1 code), then 4 codes per forward (3 head tokens + the target's)
    assert out.stats.target_forwards == 4


def test_kv_cache_rollback_matches_fresh_decode():
    """Decode a block, roll back, decode another: identical to decoding the final sequence from scratch."""
    w = random_world(11, b=2)
    m = w.model
    seq_a = torch.tensor([[0, 1, 2, 0, 1, 2, 1], [0, 2, 1, 1, 0, 0, 2]])
    seq_b = torch.tensor([[2, 2, 1], [1, 0, 0]])
    with torch.no_grad():
        cache = m.start_cache(w.memory)
        m.decode(seq_a[:, :3], None, cache, 0)
        m.decode(seq_a[:, 3:], None, cache, 3)          # 7 positions, then reject the last 4
        cache.truncate(3)
        out = m.decode(seq_b, None, cache, 3)
        fresh = m.decode(torch.cat([seq_a[:, :3], seq_b], 1), w.memory)
    torch.testing.assert_close(out.logits, fresh.logits[:, 3:], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.hidden, fresh.hidden[:, 3:], rtol=1e-9, atol=1e-9)
    assert cache.length == 6


def _session_distribution(w, n_items: int, temperature: float) -> dict[tuple, float]:
    """Exact probability of every session under plain constrained sampling (teacher-forced)."""
    D = w.constraint.depth
    con = w.constraint
    probs: dict[tuple, float] = {}

    def rec(prefix: list[int], state, lp: float):
        if len(prefix) == n_items * D:
            probs[tuple(prefix)] = float(np.exp(lp))
            return
        tokens = torch.tensor([[0] + prefix])
        with torch.no_grad():
            logits = w.model.decode(tokens, w.memory.index_select(torch.tensor([0])) if hasattr(w.memory, "index_select")
                                    else w.memory).logits[:, -1]
        logp = torch.log_softmax(con.logprobs(logits, state).double() / temperature, -1)[0]
        for c in torch.nonzero(torch.isfinite(logp)).flatten().tolist():
            nxt = con.advance(state, torch.tensor([c]))[0]
            rec(prefix + [c], nxt, lp + float(logp[c]))

    rec([], con.init(1, [w.seen[0]]), 0.0)
    return probs


@pytest.mark.parametrize("proposer_kind", ["mtp", "draft_model", "self_draft"])
def test_spec_sampling_matches_plain_distribution(proposer_kind):
    """Leviathan et al. rule: chi-square of 3000 speculative samples against the exact distribution."""
    w = random_world(5, level_sizes=(3, 2), n_items=5, b=1, session_len=2, n_seen=1, dtype=torch.float32)
    w.model.code_emb.weight.data.mul_(0.1)          # flatter target: many outcomes with real mass
    with torch.no_grad():
        w.memory = w.model.encode(w.hist)
    exact = _session_distribution(w, 2, temperature=1.0)
    assert abs(sum(exact.values()) - 1.0) < 1e-9
    n = 3000
    idx = torch.zeros(n, dtype=torch.long)
    memory = w.memory.index_select(idx)
    if proposer_kind == "mtp":
        heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).eval()
        proposer, hist = MTPProposer(heads), None
    else:  # an unrelated draft model (mostly rejects), or the target itself (q = p: accepts everything)
        draft = random_world(99, level_sizes=(3, 2), n_items=5, b=1, session_len=2, dtype=torch.float32).model
        proposer = DraftModelProposer(w.model if proposer_kind == "self_draft" else draft)
        hist = type(w.hist)(*(t.index_select(0, idx) for t in w.hist))
    gen = torch.Generator().manual_seed(1234)
    out = speculative_session(w.model, memory, w.constraint, 2, proposer=proposer,
                              verifier=SamplingVerifier(1.0, gen), spec=SpecConfig(gamma=3),
                              seen=w.seen_mask.expand(n, -1), hist=hist)
    if proposer_kind == "self_draft":   # every draft accepted: the bonus token comes from p at the end
        assert out.stats.acceptance_rate == 1.0
    else:                               # rows accepted and rejected (lock-step then commits the minimum)
        assert 0 < out.stats.row_accepted < out.stats.drafted
    p = _chi2_p(out.codes, exact)
    assert p > 1e-3, f"speculative samples do not follow the target distribution (p={p:.2e})"
    # the test has power: a sampler that keeps the draft's tokens unverified is rejected
    if proposer_kind == "mtp":
        q_only = speculative_session(w.model, memory, w.constraint, 2, proposer=proposer,
                                     verifier=AcceptAllVerifier(), spec=SpecConfig(gamma=3), seen=w.seen_mask.expand(n, -1))
        assert _chi2_p(q_only.codes, exact) < 1e-3


def _chi2_p(codes: torch.Tensor, exact: dict) -> float:
    keys = sorted(exact)
    counts = {k: 0 for k in keys}
    for row in codes.tolist():
        assert tuple(row) in counts, f"sampled a session outside the constrained support: {row}"
        counts[tuple(row)] += 1
    obs = np.array([counts[k] for k in keys], dtype=float)
    exp = np.array([exact[k] for k in keys]) * len(codes)
    big = exp >= 5                                   # pool rare outcomes into one bin
    obs, exp = np.append(obs[big], obs[~big].sum()), np.append(exp[big], exp[~big].sum())
    keep = exp > 0
    return float(chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue)


def test_plain_sampling_matches_distribution():
    w = random_world(8, level_sizes=(3, 2), n_items=5, b=1, session_len=2, n_seen=1, dtype=torch.float32)
    w.model.code_emb.weight.data.mul_(0.1)
    with torch.no_grad():
        w.memory = w.model.encode(w.hist)
    exact = _session_distribution(w, 2, temperature=0.7)
    n = 3000
    memory = w.memory.index_select(torch.zeros(n, dtype=torch.long))
    out = speculative_session(w.model, memory, w.constraint, 2,
                              verifier=SamplingVerifier(0.7, torch.Generator().manual_seed(3)), seen=w.seen_mask.expand(n, -1))
    assert _chi2_p(out.codes, exact) > 1e-3


def test_spec_config_validation_names_the_fix():
    with pytest.raises(ValueError, match="gamma_min"):
        SpecConfig(gamma=0)
    with pytest.raises(ValueError, match="temperature"):
        SpecConfig(temperature=0)
