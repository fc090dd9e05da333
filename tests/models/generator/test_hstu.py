"""HSTU encoder option: shapes, causality, padding invariance, the pointwise attention against a loop
reference, the config error, and a safetensors round trip."""

from __future__ import annotations

import math

import pytest
import torch

from models.generator.checkpoint import GeneratorBundle, decode, encode
from models.generator.hstu import HSTULayer, RAB_TIME_BUCKETS, relative_buckets
from models.generator.model import GenerativeRecommender, GeneratorConfig, HistoryBatch
from fastdec_helpers import random_history

torch.set_num_threads(1)

LEVELS = (6, 5, 3)


def _cfg(**kw) -> GeneratorConfig:
    base = dict(level_sizes=LEVELS, d_model=32, heads=2, enc_layers=2, dec_layers=1, dropout=0.0,
                max_history=8, session_len=2, encoder="hstu")
    base.update(kw)
    return GeneratorConfig(**base)


def _hist(b: int, s: int, seed: int = 0) -> HistoryBatch:
    return random_history(LEVELS, b, s, seed)


def _model(**kw) -> GenerativeRecommender:
    torch.manual_seed(0)
    m = GenerativeRecommender(_cfg(**kw)).eval()
    with torch.no_grad():  # the rab tables start at zero: make them matter in the tests
        for layer in m.enc_layers:
            layer.rab_pos.weight.normal_(std=0.5)
            layer.rab_time.weight.normal_(std=0.5)
    return m


def test_hstu_layers_are_used_and_shapes_hold():
    m = _model()
    assert all(isinstance(layer, HSTULayer) for layer in m.enc_layers)
    h = _hist(3, 6)
    mem = m.encode(h)
    assert mem.states.shape == (3, 7, 32) and mem.mask.shape == (3, 7) and bool(mem.mask.all())
    assert torch.isfinite(mem.states).all()
    tgt = torch.stack([torch.randint(0, k, (3, 2)) for k in LEVELS], -1)
    assert m(h, tgt).logits.shape == (3, 2 * len(LEVELS), max(LEVELS))


def test_causal_a_later_event_does_not_change_earlier_states():
    m = _model()
    h = _hist(2, 6)
    base = m.encode(h).states
    sids, et, tb = h.sids.clone(), h.event_type.clone(), h.time_bucket.clone()
    sids[:, 4] = (sids[:, 4] + 1) % torch.tensor(LEVELS)
    et[:, 4] = (et[:, 4] % 11) + 1
    tb[:, 4] = (tb[:, 4] % 14) + 1
    got = m.encode(HistoryBatch(sids, et, tb, h.mask)).states
    # user token + events 0..3 unchanged (state index = event index + 1), event 4 changed
    assert torch.allclose(got[:, :5], base[:, :5], atol=1e-6)
    assert not torch.allclose(got[:, 5], base[:, 5], atol=1e-4)


def test_left_and_right_padding_give_the_same_real_states():
    m = _model()
    h = _hist(2, 5)
    pad = 3
    z3 = lambda t: torch.zeros(t.shape[0], pad, *t.shape[2:], dtype=t.dtype)  # noqa: E731
    left = HistoryBatch(*(torch.cat([z3(t), t], 1) for t in h))
    right = HistoryBatch(*(torch.cat([t, z3(t)], 1) for t in h))
    s0, sl, sr = m.encode(h).states, m.encode(left).states, m.encode(right).states
    assert torch.allclose(sl[:, 0], s0[:, 0], atol=1e-5) and torch.allclose(sr[:, 0], s0[:, 0], atol=1e-5)
    assert torch.allclose(sl[:, 1 + pad:], s0[:, 1:], atol=1e-5)
    assert torch.allclose(sr[:, 1:6], s0[:, 1:], atol=1e-5)


def test_time_gaps_change_states_through_the_bias():
    """The relative-time bias is wired in: a different gap between two events changes the later state."""
    m = _model()
    h = _hist(1, 4)
    tb = h.time_bucket.clone()
    tb[0, 3] = 2 if int(tb[0, 3]) > 8 else 15
    # the time embedding of the input feature also sees the bucket: zero it so only the bias can react
    with torch.no_grad():
        m.time_emb.weight.zero_()
    a = m.encode(h).states
    b = m.encode(HistoryBatch(h.sids, h.event_type, tb, h.mask)).states
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4], b[:, 4], atol=1e-4)


def _loop_reference(layer: HSTULayer, x: torch.Tensor, valid: list[bool], tbucket: list[int]) -> torch.Tensor:
    """One HSTU layer on one sequence [user token, events], written out per query row and key."""
    d, H, dh = layer.d, layer.h, layer.dh
    T = x.shape[0]
    proj = torch.nn.functional.silu(layer.f1(layer.norm_in(x)))          # [T, 4d]
    u, v, q, k = proj[:, :d], proj[:, d:2 * d], proj[:, 2 * d:3 * d], proj[:, 3 * d:]
    # per-event times and real-event counts, by hand (user token at index 0)
    times, counts, t_acc, c_acc = [0.0], [0], 0.0, 0
    for ok, b in zip(valid, tbucket):
        if ok:
            c_acc += 1
            if b >= 2:
                t_acc += 2.0 ** (b - 1.5) - 1.0
        times.append(t_acc)
        counts.append(c_acc)
    real = [True] + valid
    n = 1 + (layer.rab_pos.num_embeddings - 2)
    out = torch.zeros(T, d)
    for i in range(T):
        for h in range(H):
            acc = torch.zeros(dh)
            for j in range(i + 1):
                if not real[j]:
                    continue
                if i == 0 or j == 0:
                    pb, tb = layer.rab_pos.num_embeddings - 1, 0
                else:
                    pb = min(counts[i] - counts[j], n - 1)
                    tb = min(1 + math.floor(math.log2(1.0 + max(times[i] - times[j], 0.0))), RAB_TIME_BUCKETS - 1)
                qi, kj = q[i, h * dh:(h + 1) * dh], k[j, h * dh:(h + 1) * dh]
                s = (float(qi @ kj) / math.sqrt(dh) + float(layer.rab_pos.weight[pb, h])
                     + float(layer.rab_time.weight[tb, h]))
                w = s / (1.0 + math.exp(-s)) / n
                acc = acc + w * v[j, h * dh:(h + 1) * dh]
            out[i, h * dh:(h + 1) * dh] = acc
    return x + layer.f2(layer.norm_av(out) * u)


def test_pointwise_attention_matches_a_loop_reference():
    torch.manual_seed(3)
    layer = HSTULayer(8, 2, max_history=6, dropout=0.0).eval()
    with torch.no_grad():
        layer.rab_pos.weight.normal_(std=1.0)
        layer.rab_time.weight.normal_(std=1.0)
    valid = [False, True, True, False, True]          # padding in the middle too
    tbucket = [0, 1, 7, 0, 12]
    x = torch.randn(1, 6, 8)
    mask = torch.tensor([valid])
    full = torch.cat([torch.ones(1, 1, dtype=torch.bool), mask], 1)
    attn_mask = torch.ones(6, 6, dtype=torch.bool).tril()[None, None] & full[:, None, None, :]
    with torch.no_grad():
        got = layer(x, attn_mask, *relative_buckets(mask, torch.tensor([tbucket]), 6))[0]
        ref = _loop_reference(layer, x[0], valid, tbucket)
    real = [0, 2, 3, 5]
    assert torch.allclose(got[real], ref[real], atol=1e-5)


def test_unknown_encoder_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"encoder='hstuu'.*transformer.*hstu"):
        _cfg(encoder="hstuu")
    assert _cfg(encoder="transformer").encoder == "transformer"
    assert GeneratorConfig(level_sizes=LEVELS).encoder == "transformer"


def test_save_load_round_trip_with_hstu():
    m = _model()
    got = decode(*encode(GeneratorBundle(m)))
    assert got.model.cfg.encoder == "hstu"
    assert all(isinstance(layer, HSTULayer) for layer in got.model.enc_layers)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), got.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    h = _hist(2, 5)
    assert torch.equal(m.encode(h).states, got.model.encode(h).states)


def test_a_default_config_without_the_encoder_key_still_loads():
    """Configs written before the field existed load as the transformer encoder."""
    cfg = GeneratorConfig(level_sizes=LEVELS, d_model=16, max_history=6)
    d = cfg.to_dict()
    d.pop("encoder")
    assert GeneratorConfig.from_dict(d) == cfg
