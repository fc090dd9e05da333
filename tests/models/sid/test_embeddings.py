"""Collaborative (PPMI-SVD) embeddings recover co-consumed groups; fusion weights cosine as documented."""

from __future__ import annotations

import numpy as np
import pytest

from models.sid.embeddings import CooccurrenceConfig, collaborative_embeddings, fuse


def test_items_consumed_together_end_up_close():
    rng = np.random.default_rng(0)
    groups = [np.arange(0, 20), np.arange(20, 40), np.arange(40, 60)]
    seqs = [rng.choice(groups[u % 3], size=15) for u in range(300)]
    emb, seen = collaborative_embeddings(seqs, 61, CooccurrenceConfig(dim=8, window=3))
    assert emb.shape == (61, 8) and seen[:60].all() and not seen[60]
    assert np.allclose(emb[60], 0)
    e = emb[:60] / np.linalg.norm(emb[:60], axis=1, keepdims=True)
    sim = e @ e.T
    label = np.repeat([0, 1, 2], 20)
    same = label[:, None] == label[None, :]
    np.fill_diagonal(same, False)
    diff = label[:, None] != label[None, :]
    assert sim[same].mean() > 0.5 > sim[diff].mean() + 0.3
    emb2, _ = collaborative_embeddings(seqs, 61, CooccurrenceConfig(dim=8, window=3))
    np.testing.assert_allclose(emb, emb2, atol=1e-6)       # deterministic


def test_fusion_mixes_cosines_and_keeps_single_parts():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(4, 5)).astype(np.float32)
    c = rng.normal(size=(4, 3)).astype(np.float32)
    c[3] = 0                                         # item 3 has no behaviour
    f = fuse(t, c, text_weight=0.7)
    assert f.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    cn = c[:3] / np.linalg.norm(c[:3], axis=1, keepdims=True)
    assert f[0] @ f[1] == pytest.approx(0.7 * tn[0] @ tn[1] + 0.3 * cn[0] @ cn[1], abs=1e-5)
    np.testing.assert_allclose(f[3, :5], tn[3], atol=1e-6)
    with pytest.raises(ValueError, match="text_weight"):
        fuse(t, c, text_weight=2.0)
