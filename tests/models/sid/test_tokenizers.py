"""RQ-KMeans and RQ-VAE: fit/encode/decode round trips, save/load with versions, default sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.sid.rq_kmeans import RQKMeans, RQKMeansConfig
from models.sid.rq_vae import RQVAE, RQVAEConfig
from models.sid.tokenizer import auto_codebook_size, report, tokenizer_from_bytes, tokenizer_to_bytes


def _clustered(n=800, dim=48, n_clusters=24, seed=0):
    """Hierarchical structure like real content: topics, sub-topics inside them, a little noise."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    subs = 0.6 * rng.normal(size=(n_clusters, 32, dim))
    labels = rng.integers(0, n_clusters, n)
    sub = rng.integers(0, 32, n)
    x = centers[labels] + subs[labels, sub] + 0.2 * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


def test_auto_codebook_size_follows_sqrt_n_within_bounds():
    assert auto_codebook_size(100) == 16
    assert auto_codebook_size(1682) == 64
    assert auto_codebook_size(3000) == 64
    assert auto_codebook_size(10_000) == 128
    assert auto_codebook_size(1_000_000) == 256
    with pytest.raises(ValueError, match="at least one item"):
        auto_codebook_size(0)


@pytest.mark.parametrize("make", [
    lambda: RQKMeans(RQKMeansConfig(codebook_size=16, n_iter=10)),
    lambda: RQVAE(RQVAEConfig(codebook_size=16, epochs=25, hidden=(64,), latent_dim=16)),
], ids=["rq_kmeans", "rq_vae"])
def test_tokenizer_fit_encode_decode_save_load(make):
    torch.set_num_threads(1)
    x, labels = _clustered()
    tok = make().fit(x)
    codes = tok.encode(x)
    assert codes.shape == (len(x), 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16
    assert tok.sid_level_sizes == (16, 16, 16, tok.dedup_size) and tok.dedup_size >= 16
    rep = report(tok, x)
    # meaningful codes: well used, mostly distinct, reconstruction far better than chance
    assert rep.utilization[0] >= 0.75
    # 768 sub-topics but only 16 codes a level: many collide, yet far from all in one cell
    assert rep.collision_rate < 0.75 and rep.unique_sid_fraction == 1.0
    assert rep.max_dedup <= tok.dedup_size
    assert rep.recon_cosine > 0.5          # unrelated vectors in 48-d: ~0
    # items of one latent cluster share their first code far more often than random pairs do
    same = labels[:, None] == labels[None, :]
    c0 = codes[:, 0][:, None] == codes[:, 0][None, :]
    assert c0[same].mean() > 3 * c0[~same].mean()
    # candidates: first row is the greedy code, last level varies
    cand = tok.encode_candidates(x[:5], 4)
    assert cand.shape == (5, 4, 3) and (cand[:, 0] == codes[:5]).all()
    assert all(len(set(cand[i, :, 2].tolist())) == 4 for i in range(5))
    # save/load: same version, same codes
    blob = tokenizer_to_bytes(tok)
    tok2 = tokenizer_from_bytes(blob)
    assert type(tok2) is type(tok) and tok2.version == tok.version and tok2.dedup_size == tok.dedup_size
    assert (tok2.encode(x) == codes).all()
    np.testing.assert_allclose(tok2.decode(codes), tok.decode(codes), atol=1e-5)


def test_bad_inputs_are_named():
    x, _ = _clustered(n=100, dim=8)
    with pytest.raises(ValueError, match="cannot fit a codebook of 256"):
        RQKMeans(RQKMeansConfig(codebook_size=256)).fit(x)
    tok = RQKMeans(RQKMeansConfig(codebook_size=8, n_iter=5)).fit(x)
    with pytest.raises(ValueError, match="dimension 9 != the tokenizer's 8"):
        tok.encode(np.zeros((2, 9), dtype=np.float32))
    bad = x[:3].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(bad)
    with pytest.raises(ValueError, match="levels=0"):
        RQKMeansConfig(levels=0)
    with pytest.raises(ValueError, match="beta"):
        RQVAEConfig(beta=-1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        RQVAE().encode(x)
    state = tok.state_dict()
    state["codebooks"] = state["codebooks"] + 1.0
    with pytest.raises(ValueError, match="do not match their version"):
        RQKMeans.from_state(state)


def test_rqvae_dead_code_restart_keeps_codes_in_use():
    torch.set_num_threads(1)
    x, _ = _clustered(n=600, dim=32, n_clusters=6, seed=3)
    tok = RQVAE(RQVAEConfig(codebook_size=32, epochs=20, hidden=(64,), latent_dim=8)).fit(x)
    assert sum(h["restarted"] for h in tok.history) > 0      # some codes did die and were restarted
    assert tok.history[-1]["recon"] < tok.history[0]["recon"]


def test_rqkmeans_spreads_unstructured_items_like_uniform_hashing():
    """On isotropic data the 3-level codes should be about as spread as uniform random cells."""
    x = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
    tok = RQKMeans(RQKMeansConfig(codebook_size=16, n_iter=10)).fit(x)
    rep = report(tok, x)
    cells = 16 ** 3
    expected_distinct = cells * (1 - np.exp(-2000 / cells))
    expected_collision = 1 - expected_distinct / 2000
    assert rep.collision_rate < 1.5 * expected_collision
    # each residual level removes error: three levels reconstruct better than the first alone
    one = tok.codebooks[0][tok.encode(x)[:, 0]]
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert rep.recon_mse < np.mean(np.sum((one - xn) ** 2, axis=1))


def _templated(n=1200, dim=48, seed=0):
    """Content like MovieLens titles+genres: a few templates, every item a near-copy of one of them."""
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(8, dim))
    return (templates[rng.integers(0, 8, n)] + 0.2 * rng.normal(size=(n, dim))).astype(np.float32)


def test_balanced_rqkmeans_cuts_collisions_without_losing_reconstruction():
    x = _templated()
    plain = report(t := RQKMeans(RQKMeansConfig(codebook_size=16, balanced=False)).fit(x), x)
    bal = report(RQKMeans(RQKMeansConfig(codebook_size=16, balanced=True)).fit(x), x)
    assert t.config.balanced is False
    assert bal.collision_rate < 0.7 * plain.collision_rate
    assert bal.recon_mse <= 1.05 * plain.recon_mse
    assert min(bal.utilization) >= 0.9


def test_capacity_assign_respects_capacity_and_prefers_near_codes():
    from models.sid.rq_kmeans import capacity_assign

    rng = np.random.default_rng(1)
    d = rng.random((103, 10)).astype(np.float32)
    a = capacity_assign(d, 11)
    assert a.shape == (103,) and a.min() >= 0 and np.bincount(a, minlength=10).max() <= 11
    # with room for everyone, everyone gets the nearest code
    np.testing.assert_array_equal(capacity_assign(d, 103), d.argmin(axis=1))
    # two points want code 0, capacity 1: the nearer one wins it
    two = np.array([[0.1, 5.0], [0.2, 0.3]], dtype=np.float32)
    np.testing.assert_array_equal(capacity_assign(two, 1), [0, 1])
    with pytest.raises(ValueError, match="capacity"):
        capacity_assign(d, 5)
