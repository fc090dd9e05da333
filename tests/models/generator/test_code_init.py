"""models.generator.code_init: code tables whose per-item sums reproduce the item embeddings."""

import numpy as np
import pytest
import torch

from models.generator.code_init import code_embeddings_from_items


def _world(rng, n_items=400, sizes=(16, 16, 8), e=24):
    sids = np.stack([rng.integers(0, k, n_items) for k in sizes], 1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    true = rng.normal(size=(sum(sizes), e))
    return true[sids + offsets].sum(1), sids, offsets


def test_item_similarities_are_reproduced_exactly_when_embeddings_are_sums_of_codes():
    emb, sids, off = _world(np.random.default_rng(0))
    table = code_embeddings_from_items(emb, sids, (16, 16, 8), d_model=32, target_std=0.05)
    assert table.shape == (40, 32) and table.dtype == np.float32
    assert abs(table.std() - 0.05) < 1e-3
    rec = table[sids + off].sum(1)
    z = emb - emb.mean(0)
    # up to rotation and scale (PCA / padding), the item Gram matrix is the same
    assert np.corrcoef((rec @ rec.T).ravel(), (z @ z.T).ravel())[0, 1] > 0.999


def test_random_codes_cannot_explain_unrelated_embeddings():
    rng = np.random.default_rng(1)
    emb, sids, off = _world(rng)
    other = rng.normal(size=emb.shape)           # embeddings unrelated to the codes
    table = code_embeddings_from_items(other, sids, (16, 16, 8), d_model=16)
    rec = table[sids + off].sum(1)
    z = other - other.mean(0)
    assert np.corrcoef((rec @ rec.T).ravel(), (z @ z.T).ravel())[0, 1] < 0.8


def test_bad_input_is_named():
    emb, sids, _ = _world(np.random.default_rng(2))
    with pytest.raises(ValueError, match="level_sizes"):
        code_embeddings_from_items(emb, sids, (4, 4, 4), d_model=8)
    with pytest.raises(ValueError, match="same I"):
        code_embeddings_from_items(emb[:10], sids, (16, 16, 8), d_model=8)
    with pytest.raises(ValueError, match="non-zero"):
        code_embeddings_from_items(np.zeros_like(emb), sids, (16, 16, 8), d_model=8)


def test_fit_generator_starts_from_the_fitted_table():
    from models.generator.model import GeneratorConfig
    from models.generator.training import TrainConfig, fit_generator

    rng = np.random.default_rng(3)
    emb, sids, off = _world(rng, n_items=60, sizes=(8, 8, 4), e=16)
    seqs = [rng.integers(0, 60, 12) for _ in range(30)]
    gcfg = GeneratorConfig(level_sizes=(8, 8, 4), d_model=16, heads=2, enc_layers=1, dec_layers=1)
    table = code_embeddings_from_items(emb, sids, (8, 8, 4), 16)
    model, _ = fit_generator(seqs, sids, gcfg, TrainConfig(epochs=1, max_steps=1, lr=1e-9, progress=False),
                             validate=False, item_emb=emb)
    # one step at a negligible learning rate: the table is still the fitted one
    assert torch.allclose(model.code_emb.weight, torch.from_numpy(table), atol=1e-4)
