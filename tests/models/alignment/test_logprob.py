"""Session log-probabilities by teacher forcing agree with token-by-token decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.alignment.logprob import session_logprob, token_kl
from models.generator.model import BOS, GenerativeRecommender, GeneratorConfig, HistoryBatch

torch.set_num_threads(1)


def _model(seed: int = 0) -> GenerativeRecommender:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(level_sizes=(5, 7, 3), d_model=16, heads=2, enc_layers=1, dec_layers=2, max_history=8,
                          session_len=3, dropout=0.0)
    return GenerativeRecommender(cfg).eval()


def _batch(b: int = 4, s: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sids = torch.stack([torch.randint(0, n, (b, s), generator=g) for n in (5, 7, 3)], -1)   # [B, S, D]
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, :3] = False                                                                     # left padding
    hist = HistoryBatch(sids, torch.randint(1, 4, (b, s), generator=g), torch.randint(1, 4, (b, s), generator=g), mask)
    sess = torch.stack([torch.randint(0, n, (b, 3), generator=g) for n in (5, 7, 3)], -1)   # [B, K, D]
    return hist, sess


def _reference(model: GenerativeRecommender, hist: HistoryBatch, sess: torch.Tensor) -> torch.Tensor:
    """Obviously correct: decode one code at a time with the KV cache, summing log-softmax of the target."""
    b, k, d = sess.shape
    flat = sess.reshape(b, k * d)
    mem = model.encode(hist)
    cache, total = None, torch.zeros(b)
    token = torch.full((b, 1), BOS, dtype=torch.long)
    for p in range(k * d):
        out = model.decode(token, mem if cache is None else None, cache, p)
        cache = out.cache
        total += F.log_softmax(out.logits[:, -1].float(), -1).gather(1, flat[:, p:p + 1])[:, 0]
        token = flat[:, p:p + 1]
    return total


@torch.no_grad()
def test_session_logprob_equals_token_by_token_decoding():
    model = _model()
    hist, sess = _batch()
    got = session_logprob(model, hist, sess)
    want = _reference(model, hist, sess)
    assert got.shape == (4,)
    assert torch.allclose(got, want, atol=1e-4), (got, want)
    assert (got < 0).all()


@torch.no_grad()
def test_masked_trailing_items_contribute_nothing():
    model = _model()
    hist, sess = _batch()
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[1, 2] = False
    mask[2, 1:] = False
    got = session_logprob(model, hist, sess, mask)
    full = session_logprob(model, hist, sess)
    assert torch.allclose(got[[0, 3]], full[[0, 3]])
    # row 1: the first two items only = the reference of a 2-item session ... computed on the same prefix
    two = _reference(model, HistoryBatch(*(t[1:2] for t in hist)), sess[1:2, :2])
    assert torch.allclose(got[1:2], two, atol=1e-4)
    assert got[2] > full[2]                       # fewer items scored: a larger (less negative) log-prob


def test_session_logprob_is_differentiable_and_checks_shapes():
    model = _model().train(False)
    hist, sess = _batch()
    session_logprob(model, hist, sess).sum().backward()
    assert model.code_emb.weight.grad is not None and model.code_emb.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\[B, K, D\]"):
        session_logprob(model, hist, sess[:, 0])
    with pytest.raises(ValueError, match="mask"):
        session_logprob(model, hist, sess, torch.ones(4, 2, dtype=torch.bool))


@torch.no_grad()
def test_token_kl_is_zero_for_the_same_model_and_matches_a_direct_kl():
    a, b = _model(0), _model(1)
    hist, sess = _batch()
    mask = torch.ones(4, 3, dtype=torch.bool)
    _, la = session_logprob(a, hist, sess, mask, return_logits=True)
    _, lb = session_logprob(b, hist, sess, mask, return_logits=True)
    assert torch.allclose(token_kl(la, la, mask, 3), torch.zeros(4), atol=1e-6)
    kl = token_kl(la, lb, mask, 3)
    assert (kl > 0).all()
    # direct: KL of each position over its level's codes only (absent codes carry no mass)
    sizes = (5, 7, 3)
    want = torch.zeros(4)
    for p in range(9):
        n = sizes[p % 3]
        pa = torch.distributions.Categorical(logits=la[:, p, :n])
        pb = torch.distributions.Categorical(logits=lb[:, p, :n])
        want += torch.distributions.kl_divergence(pa, pb)
    assert torch.allclose(kl, want, atol=1e-4)
    mask[:, 2] = False                            # the last item's 3 positions drop out
    assert (token_kl(la, lb, mask, 3) < kl).all()
