"""The every-position head: one encoder pass gives a next-item target per history position."""

import numpy as np
import pytest
import torch

from models.generator.model import GeneratorConfig, GenerativeRecommender, HistoryBatch
from models.generator.training import TrainConfig, fit_generator, session_ntp_loss

SIZES = (5, 4, 3)


def _window(b: int, s: int, seed: int = 0) -> HistoryBatch:
    g = torch.Generator().manual_seed(seed)
    sids = torch.stack([torch.randint(0, k, (b, s), generator=g) for k in SIZES], -1)
    return HistoryBatch(sids, torch.full((b, s), 2), torch.full((b, s), 3), torch.ones(b, s, dtype=torch.bool))


def test_position_logits_shape_and_causality():
    torch.manual_seed(0)
    m = GenerativeRecommender(GeneratorConfig(level_sizes=SIZES, d_model=16, heads=2, max_history=8,
                                              session_len=2, position_head=True)).eval()
    win = _window(2, 8)
    row, alen = torch.tensor([0, 0, 1]), torch.tensor([0, 3, 8])
    tgt = torch.stack([torch.randint(0, k, (3, 2)) for k in SIZES], -1)      # [N, K, D]
    out = m.forward_anchors(win, row, alen, tgt)
    assert out.position_logits.shape == (3, len(SIZES), max(SIZES))
    assert torch.isinf(out.position_logits[:, 2, 3:]).all()                   # level 2 has 3 codes
    # the prediction after 3 events does not see event 4 onwards
    win2 = HistoryBatch(win.sids.clone(), win.event_type, win.time_bucket, win.mask)
    win2.sids[0, 3:] = (win2.sids[0, 3:] + 1) % torch.tensor(SIZES)
    out2 = m.forward_anchors(win2, row, alen, tgt)
    torch.testing.assert_close(out.position_logits[:2], out2.position_logits[:2])


def test_position_loss_is_added_and_head_is_optional():
    torch.manual_seed(0)
    m = GenerativeRecommender(GeneratorConfig(level_sizes=SIZES, d_model=16, heads=2, max_history=8,
                                              session_len=2, position_head=True))
    win = _window(2, 8)
    tgt = torch.stack([torch.randint(0, k, (4, 2)) for k in SIZES], -1)
    out = m.forward_anchors(win, torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 5, 8]), tgt)
    mask = torch.ones(4, 2, dtype=torch.bool)
    plain, ce = session_ntp_loss(out, tgt, mask, 0.3, 0.0, 0.0)
    both, ce2 = session_ntp_loss(out, tgt, mask, 0.3, 0.0, 1.0)
    assert float(both.detach()) > float(plain.detach()) and torch.equal(ce, ce2)
    with pytest.raises(ValueError, match="position_head=True"):
        GenerativeRecommender(GeneratorConfig(level_sizes=SIZES)).position_logits(torch.zeros(1, 64), tgt[:1, 0])
    with pytest.raises(ValueError, match="position_loss_weight"):
        TrainConfig(position_loss_weight=-1)


def test_training_with_position_head_counts_targets():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 20, size=int(rng.integers(3, 9))) for _ in range(30)]
    sids = np.stack([np.arange(20) % 5, (np.arange(20) // 5) % 4, np.arange(20) // 10 % 3], 1)
    gcfg = GeneratorConfig(level_sizes=SIZES, d_model=16, heads=2, max_history=8, session_len=2, position_head=True)
    model, rep = fit_generator(seqs, sids, gcfg, TrainConfig(epochs=2, batch_size=32, val_metric="loss", progress=False))
    assert rep.train_targets > 0 and len(rep.train_loss) == 2 and rep.train_cpu_s > 0


def test_decode_idx_decodes_a_subset_and_heads_see_all():
    torch.manual_seed(0)
    m = GenerativeRecommender(GeneratorConfig(level_sizes=SIZES, d_model=16, heads=2, max_history=8,
                                              session_len=2, position_head=True)).eval()
    win = _window(2, 8)
    row, alen = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 2, 5, 8])
    tgt = torch.stack([torch.randint(0, k, (4, 2)) for k in SIZES], -1)
    full = m.forward_anchors(win, row, alen, tgt)
    sub = m.forward_anchors(win, row, alen, tgt, decode_idx=torch.tensor([1, 3]))
    assert sub.logits.shape[0] == 2 and sub.position_logits.shape[0] == 4
    torch.testing.assert_close(sub.logits, full.logits[[1, 3]])
    torch.testing.assert_close(sub.position_logits, full.position_logits)


def test_decoder_frac_trains_and_is_validated():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 20, size=int(rng.integers(3, 9))) for _ in range(30)]
    sids = np.stack([np.arange(20) % 5, (np.arange(20) // 5) % 4, np.arange(20) // 10 % 3], 1)
    gcfg = GeneratorConfig(level_sizes=SIZES, d_model=16, heads=2, max_history=8, session_len=2, position_head=True)
    full = fit_generator(seqs, sids, gcfg, TrainConfig(epochs=1, batch_size=32, val_metric="loss", progress=False))[1]
    part = fit_generator(seqs, sids, gcfg, TrainConfig(epochs=1, batch_size=32, val_metric="loss", progress=False,
                                                       decoder_frac=0.25))[1]
    assert part.train_targets == full.train_targets > 0   # the position head still learns from every example
    with pytest.raises(ValueError, match="decoder_frac"):
        TrainConfig(decoder_frac=0.0)
