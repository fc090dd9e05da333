"""The decoding switch: every mode behind one DecodeSettings value, lossless modes equal plain ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastdec_helpers import bigram_world, random_world, one_thread  # noqa: E402
from models.decoding.generate import generate
from models.decoding.settings import MODES, DecodeSettings  # noqa: E402
from models.generator.mtp import MTPConfig, MTPHeads  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _valid(w, res, k):
    b = res.items.shape[0]
    assert res.items.shape == (b, k) and res.sids.shape == (b, k, 3) and res.scores.shape == (b, k)
    assert torch.equal(w.constraint.lookup(res.sids), res.items)
    for i in range(b):
        row = res.items[i].tolist()
        assert min(row) >= 0 and len(set(row)) == k
        assert not set(row) & {int(x) for x in w.seen[i]}
    assert torch.isfinite(res.scores).all() and (res.scores <= 0).all()


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_every_mode_valid_and_lossless_modes_equal_plain(noise):
    w, heads = bigram_world(5, b=3, noise=noise)
    out = {}
    for mode in MODES:
        s = DecodeSettings(mode=mode, beam_width=3, seed=0, draft_len=3)
        out[mode] = generate(w.model, w.memory, w.constraint, s, seen=w.seen, mtp_heads=heads)
        _valid(w, out[mode], 4)
        assert out[mode].stats["mode"] == mode
        assert out[mode].stats["lossless"] == s.lossless
    for fast, plain in (("spec_greedy", "greedy"), ("spec_beam", "beam")):
        assert torch.equal(out[fast].sids, out[plain].sids), fast
        assert torch.equal(out[fast].items, out[plain].items), fast
        torch.testing.assert_close(out[fast].scores, out[plain].scores, atol=1e-5, rtol=0)
    if noise == 0.0:  # perfect drafts: far fewer target forwards than plain decoding
        assert out["spec_greedy"].stats["target_forwards"] < out["greedy"].stats["target_forwards"] / 2
        assert out["spec_beam"].stats["target_forwards"] < out["beam"].stats["target_forwards"] / 2
        assert out["spec_greedy"].stats["acceptance_rate"] == 1.0


def test_real_generator_history_input_and_draft_model_proposer():
    w = random_world(9, b=2)
    heads = MTPHeads(MTPConfig(w.model.cfg.level_sizes, w.model.cfg.d_model)).double().eval()
    draft = random_world(10, b=2).model
    plain = generate(w.model, w.hist, w.constraint, DecodeSettings("greedy"), seen=w.seen_mask)
    for s in (DecodeSettings("spec_greedy"), DecodeSettings("spec_greedy", proposer="draft_model")):
        res = generate(w.model, w.hist, w.constraint, s, seen=w.seen, mtp_heads=heads, draft_model=draft)
        assert torch.equal(res.sids, plain.sids)
    beam = generate(w.model, w.hist, w.constraint, DecodeSettings("beam", beam_width=4), seen=w.seen)
    sbeam = generate(w.model, w.hist, w.constraint, DecodeSettings("spec_beam", beam_width=4), seen=w.seen,
                     mtp_heads=heads)
    assert torch.equal(beam.sids, sbeam.sids)
    no_excl = generate(w.model, w.hist, w.constraint, DecodeSettings("spec_greedy", exclude_seen=False),
                       seen=w.seen, mtp_heads=heads)
    assert torch.equal(no_excl.sids, generate(w.model, w.hist, w.constraint, DecodeSettings("greedy")).sids)


def test_sampling_is_seeded_and_valid():
    w, heads = bigram_world(2, b=4, noise=0.5)
    a = generate(w.model, w.memory, w.constraint, DecodeSettings("spec_sample", seed=7), seen=w.seen, mtp_heads=heads)
    b = generate(w.model, w.memory, w.constraint, DecodeSettings("spec_sample", seed=7), seen=w.seen, mtp_heads=heads)
    assert torch.equal(a.sids, b.sids)
    _valid(w, a, 4)


def test_settings_validation_and_round_trip():
    s = DecodeSettings(mode="spec_beam", beam_width=8, draft_len=3)
    assert DecodeSettings.from_dict(s.to_dict()) == s
    assert s.lossless and not DecodeSettings(mode="mtp").lossless
    with pytest.raises(ValueError, match="greedy"):
        DecodeSettings(mode="fast")
    with pytest.raises(ValueError, match="proposer='mtp'"):
        DecodeSettings(mode="spec_beam", proposer="draft_model")
    with pytest.raises(ValueError, match="draft_min"):
        DecodeSettings(draft_len=0)
    with pytest.raises(ValueError, match="unknown decode settings"):
        DecodeSettings.from_dict({"mode": "greedy", "speed": 3})
    w, _ = bigram_world(1)
    with pytest.raises(ValueError, match="needs MTP heads"):
        generate(w.model, w.memory, w.constraint, DecodeSettings("spec_greedy"))


def test_decode_settings_reject_unknown_keys_with_the_known_ones():
    with pytest.raises(ValueError, match="beam_width"):
        DecodeSettings.from_dict({"mode": "beam", "beamwidth": 4})
