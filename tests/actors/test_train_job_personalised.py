"""The training job's generator is personalised: users of different tastes get different, fitting lists.

Regression: when the SIDs come from elsewhere (the live catalog in ``make demo``), the job
used to start the code embeddings at random, and in a short CPU training the generator
learnt only the popularity prior: every user got nearly the same items. A short training
on a small world must give top-10 lists that differ between users and follow their tastes
better than chance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.train_job import TrainJobConfig, fit_tokenizer, interactions_from_records, run_train_job
from ingest.synthetic import SyntheticWorld, WorldConfig
from models.evaluation.generator_ranker import GeneratorRanker
from models.evaluation.personalisation import inter_user_diversity
from models.generator.training import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world_data():
    world = SyntheticWorld(WorldConfig.small(seed=0))
    ds = world.dataset()
    data = interactions_from_records("synthetic", ds.user_events, ds.item_events)
    # "content" embeddings the SIDs are fitted on, as the catalog's text embeddings are: topic mixtures
    content = np.stack([world.item_topics(str(i)) for i in data.split.item_ids])
    content = (content + 0.05 * np.random.default_rng(0).standard_normal(content.shape)).astype(np.float32)
    tok, sids = fit_tokenizer(content, levels=2, codebook_size=16)
    return world, data, content, tok, sids


@pytest.mark.parametrize("given_emb", [False, True], ids=["job-computes-embeddings", "catalog-embeddings"])
def test_generator_with_given_sids_is_personalised(world_data, given_emb, tmp_path):
    world, data, content, tok, sids = world_data
    cfg = TrainJobConfig(
        data="synthetic", out=str(tmp_path / "gen.pt"), embeddings="collab", collab_dim=32,
        generator=dict(d_model=32, heads=2, enc_layers=1, dec_layers=1, dropout=0.1, max_history=20,
                       session_len=2),
        train=TrainConfig(epochs=4, batch_size=64, lr=3e-3, patience=0, eval_every=100, val_max_users=50,
                          val_beam=10, progress=False),
        eval_beam=10, eval_max_users=50)
    res = run_train_job(cfg, data=data, tokenizer=tok, item_sids=sids,
                        item_emb=content if given_emb else None, say=lambda _: None)
    cases = data.split.test().subset(np.arange(200))
    top = GeneratorRanker(res.model, res.item_sids, beam_width=10).rank(cases.histories, 10).numpy()  # [200, 10]
    assert (top >= 0).all()

    # different users, different lists (identical lists: diversity 0)
    diversity = inter_user_diversity(top, 10, data.n_items)
    assert diversity > 0.5, f"top-10 lists are nearly the same for every user (diversity@10 {diversity:.3f})"

    # and they follow each user's true tastes: items of the user's two favourite topics, vs. the catalog's share
    primary = world.item_primary[[world.item_index(str(i)) for i in data.split.item_ids]]
    share, chance = [], []
    for u, row in zip(cases.users, top):
        fav = np.argsort(-world.preference(str(data.split.user_ids[u])))[:2]
        share.append(np.isin(primary[row], fav).mean())
        chance.append(np.isin(primary, fav).mean())
    assert np.mean(share) > 1.5 * np.mean(chance), (
        f"top-10 items are from the user's favourite topics {np.mean(share):.2f} of the time, "
        f"chance {np.mean(chance):.2f}")


def test_item_emb_must_have_one_row_per_item(world_data, tmp_path):
    _, data, content, tok, sids = world_data
    with pytest.raises(ValueError, match=r"\[n_items=\d+, E\]"):
        run_train_job(TrainJobConfig(out=str(tmp_path / "gen.pt")), data=data, tokenizer=tok, item_sids=sids,
                      item_emb=content[:-1], say=lambda _: None)
