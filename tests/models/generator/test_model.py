"""Generator model: shapes, padding invariance, cached-vs-full decoder equality, truncation, MoE."""

from __future__ import annotations

import pytest
import torch

from models.generator.model import GenerativeRecommender, GeneratorConfig, HistoryBatch
from models.generator.kv_cache import KVCache
from fastdec_helpers import random_history

torch.set_num_threads(1)  # 2 shared cores: one thread each is much faster than oversubscription

LEVELS = (6, 5, 3)


def _cfg(**kw) -> GeneratorConfig:
    base = dict(level_sizes=LEVELS, d_model=32, heads=2, enc_layers=2, dec_layers=2, dropout=0.0,
                max_history=8, session_len=3)
    base.update(kw)
    return GeneratorConfig(**base)


def _hist(b: int, s: int, seed: int = 0) -> HistoryBatch:
    return random_history(LEVELS, b, s, seed)


def _targets(b: int, k: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, n, (b, k), generator=g) for n in LEVELS], -1)


@pytest.fixture(scope="module")
def model() -> GenerativeRecommender:
    torch.manual_seed(0)
    return GenerativeRecommender(_cfg()).eval()


def test_shapes_and_invalid_codes_masked(model):
    h, t = _hist(4, 6), _targets(4, 3)
    out = model(h, t)
    D = len(LEVELS)
    assert out.logits.shape == (4, 3 * D, max(LEVELS))
    assert out.hidden.shape == (4, 3 * D, 32)
    mem = model.encode(h)
    assert mem.states.shape == (4, 1 + 6, 32) and mem.mask.shape == (4, 7)
    # position p predicts level p % D: codes >= level_sizes[level] are -inf, the others finite
    for p in range(3 * D):
        k = LEVELS[p % D]
        assert torch.isfinite(out.logits[:, p, :k]).all()
        assert torch.isinf(out.logits[:, p, k:]).all()
    assert out.cache.length == 3 * D


def test_padding_does_not_change_outputs(model):
    h = _hist(2, 5)
    t = _targets(2, 2)
    base = model(h, t).logits
    # left-pad with 3 garbage events that are masked out
    pad = _hist(2, 3, seed=7)
    padded = HistoryBatch(torch.cat([pad.sids, h.sids], 1), torch.cat([pad.event_type, h.event_type], 1),
                          torch.cat([pad.time_bucket, h.time_bucket], 1),
                          torch.cat([torch.zeros(2, 3, dtype=torch.bool), h.mask], 1))
    out = model(padded, t).logits
    fin = torch.isfinite(base)
    assert torch.allclose(out[fin], base[fin], atol=1e-5)
    # ...and the padded values really are ignored: garbage in other padding gives the same result
    pad2 = _hist(2, 3, seed=99)
    padded2 = padded._replace(sids=torch.cat([pad2.sids, h.sids], 1))
    assert torch.allclose(model(padded2, t).logits[fin], base[fin], atol=1e-5)
    # right padding (padding after the events) is equivalent too
    right = HistoryBatch(torch.cat([h.sids, pad.sids], 1), torch.cat([h.event_type, pad.event_type], 1),
                         torch.cat([h.time_bucket, pad.time_bucket], 1),
                         torch.cat([h.mask, torch.zeros(2, 3, dtype=torch.bool)], 1))
    assert torch.allclose(model(right, t).logits[fin], base[fin], atol=1e-5)


def test_history_changes_output(model):
    """Sanity: the test above could fail — a different real history gives different logits."""
    t = _targets(2, 2)
    a = model(_hist(2, 5, seed=0), t).logits
    b = model(_hist(2, 5, seed=3), t).logits
    fin = torch.isfinite(a)
    assert not torch.allclose(a[fin], b[fin], atol=1e-4)


def test_cached_decoding_equals_full_forward(model):
    h, t = _hist(3, 6), _targets(3, 3)
    full = model(h, t)
    mem = model.encode(h)
    flat = t.reshape(3, -1)
    tokens = torch.cat([torch.zeros(3, 1, dtype=torch.long), flat[:, :-1]], 1)
    cache, logits, hidden = None, [], []
    for p in range(tokens.shape[1]):
        out = model.decode(tokens[:, p:p + 1], mem, cache, p)
        cache = out.cache
        logits.append(out.logits)
        hidden.append(out.hidden)
    inc, hid = torch.cat(logits, 1), torch.cat(hidden, 1)
    fin = torch.isfinite(full.logits)
    assert torch.equal(torch.isfinite(inc), fin)
    assert torch.allclose(inc[fin], full.logits[fin], atol=1e-5)
    assert torch.allclose(hid, full.hidden, atol=1e-5)
    # chunked: 2 tokens, then the rest in one block (speculative verification pattern)
    o1 = model.decode(tokens[:, :2], mem, None, 0)
    o2 = model.decode(tokens[:, 2:], None, o1.cache, 2)
    assert torch.allclose(o2.logits[torch.isfinite(o2.logits)], full.logits[:, 2:][fin[:, 2:]], atol=1e-5)


def test_cache_truncate_and_index_select(model):
    h, t = _hist(3, 4), _targets(3, 2)
    mem = model.encode(h)
    flat = t.reshape(3, -1)
    tokens = torch.cat([torch.zeros(3, 1, dtype=torch.long), flat[:, :-1]], 1)
    out = model.decode(tokens[:, :4], mem)
    cache: KVCache = out.cache
    assert cache.length == 4
    cache.truncate(2)
    assert cache.length == 2
    redo = model.decode(tokens[:, 2:4], None, cache, 2)
    assert torch.allclose(redo.logits, out.logits[:, 2:4], atol=1e-5)
    # reorder rows: row j of the new cache continues row idx[j]
    idx = torch.tensor([2, 0, 0, 1])
    sel = redo.cache.index_select(idx)
    assert sel.batch_size == 4 and sel.length == 4
    nxt = model.decode(tokens[idx, 4:5], None, sel, 4)
    ref = model.decode(tokens[:, 4:5], None, redo.cache, 4)
    assert torch.allclose(nxt.logits[torch.isfinite(nxt.logits)],
                          ref.logits[idx][torch.isfinite(ref.logits[idx])], atol=1e-5)
    with pytest.raises(ValueError, match="cache holds"):
        model.decode(tokens[:, :1], None, sel, 0)
    with pytest.raises(ValueError, match="truncate"):
        sel.truncate(9)


def test_long_history_keeps_most_recent(model):
    """A history longer than max_history equals its last max_history events."""
    H = model.cfg.max_history
    long = _hist(2, H + 5, seed=4)
    t = _targets(2, 1)
    recent = HistoryBatch(*(x[:, -H:] for x in long))
    a, b = model(long, t).logits, model(recent, t).logits
    fin = torch.isfinite(a)
    assert torch.allclose(a[fin], b[fin], atol=1e-5)
    # with left padding inside the long batch, still the most recent real events are kept
    mask = long.mask.clone()
    mask[0, :3] = False
    longp = long._replace(mask=mask)
    assert torch.allclose(model(longp, t).logits[fin], b[fin], atol=1e-5)


def test_empty_history_is_finite(model):
    h = _hist(2, 4)
    empty = h._replace(mask=torch.zeros(2, 4, dtype=torch.bool))
    out = model(empty, _targets(2, 1))
    fin = torch.isfinite(out.logits)
    assert fin.any() and not torch.isnan(out.logits).any()
    # both rows see nothing, so they get the same prediction
    assert torch.allclose(out.logits[0, 0][fin[0, 0]], out.logits[1, 0][fin[1, 0]], atol=1e-5)


@pytest.mark.parametrize("experts", [0, 4])
def test_dense_and_moe_train_and_report_aux(experts):
    torch.manual_seed(0)
    m = GenerativeRecommender(_cfg(moe_experts=experts, moe_top_k=2))
    h, t = _hist(8, 5), _targets(8, 2)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = m(h, t)
        ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), t.reshape(-1))
        loss = ce + 0.01 * out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(ce.detach()))
    assert losses[-1] < losses[0] * 0.7
    if experts:
        assert out.aux_loss.requires_grad and float(out.aux_loss.detach()) > 0.5   # Switch balance loss ~1 when balanced
        assert m.dec_layers[0].ff.router.weight.grad is not None
    else:
        assert float(out.aux_loss) == 0.0


@pytest.mark.parametrize("bad,match", [
    (dict(level_sizes=()), "level_sizes"),
    (dict(d_model=30, heads=4), "divisible"),
    (dict(moe_experts=1), "moe_experts"),
    (dict(dropout=1.5), "dropout"),
])
def test_config_errors_name_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**bad)


def test_config_roundtrip():
    c = _cfg(moe_experts=4)
    assert GeneratorConfig.from_dict(c.to_dict()) == c


def test_grouped_cross_cache_equals_materialised(model):
    """Beam expansion shares the memory K/V (group > 1) and gives the same logits as copies."""
    h = _hist(3, 5)
    mem = model.encode(h)
    base = model.start_cache(mem)
    rows = torch.arange(3).repeat_interleave(4)                    # 3 requests x 4 beams
    grouped = base.index_select(rows)
    assert grouped.group == 4 and grouped.cross_k[0].shape[0] == 3 and grouped.batch_size == 12
    flat = grouped.ungrouped()
    assert flat.group == 1 and flat.cross_k[0].shape[0] == 12
    tok = torch.randint(0, 5, (12, 1))
    a = model.decode(tok, None, grouped, 0)
    b = model.decode(tok, None, flat, 0)
    assert torch.allclose(a.logits[torch.isfinite(a.logits)], b.logits[torch.isfinite(b.logits)], atol=1e-5)
    # reordering beams within their request keeps sharing; mixing requests materialises
    within = torch.tensor([1, 1, 0, 3, 4, 4, 5, 7, 11, 8, 8, 9])
    assert a.cache.index_select(within).group == 4
    across = torch.tensor([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
    mixed = a.cache.index_select(across)
    assert mixed.group == 1 and mixed.cross_k[0].shape[0] == 12
    c = model.decode(tok[across], None, mixed, 1)
    d = model.decode(tok, None, b.cache, 1)
    fin = torch.isfinite(c.logits)
    assert torch.allclose(c.logits[fin], d.logits[across][fin], atol=1e-5)
