"""The gate job on a tiny synthetic world: a trained parent, an unchanged candidate that passes, a randomly
initialised candidate that fails (and that ``promote`` then refuses), and the verdicts in the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.gate_job import GateJobConfig, choose_parent, run_gate_job
from actors.model_registry import ModelRegistry, RegistryError
from models.evaluation.gate import GateConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world_and_data():
    from actors.train_job import interactions_from_records
    from ingest.synthetic import SyntheticWorld, WorldConfig

    world = SyntheticWorld(WorldConfig.small(seed=3, n_users=160, n_items=240, n_topics=6, sessions_per_user=4.0))
    ds = world.dataset()
    return world, interactions_from_records(ds.name, ds.user_events, ds.item_events)


@pytest.fixture(scope="module")
def registry(world_and_data, tmp_path_factory):
    """``parent`` (trained a few epochs), ``same`` (the parent's weights again), ``random`` (untrained)."""
    from actors.train_job import fit_tokenizer, item_embeddings
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender, GeneratorConfig
    from models.generator.training import TrainConfig, fit_generator
    from models.sid.tokenizer import tokenizer_to_bytes

    _, data = world_and_data
    emb = item_embeddings(data, "collab", collab_dim=16, seed=0)
    tok, sids = fit_tokenizer(emb, "rq_kmeans", 2, 8, 0)
    gcfg = GeneratorConfig(level_sizes=tuple(int(x) for x in tok.sid_level_sizes), d_model=32, heads=2,
                           enc_layers=1, dec_layers=1, session_len=2, max_history=20)
    tv = data.split.train_valid()
    model, _ = fit_generator(tv.items, sids, gcfg, TrainConfig(epochs=4, batch_size=64, lr=5e-3, progress=False,
                                                               patience=0, val_max_users=50),
                             types=tv.types, ts=tv.ts, validate=True, item_emb=emb)
    model.eval()
    torch.manual_seed(11)
    untrained = GenerativeRecommender(gcfg).eval()
    ids = tuple(str(i) for i in data.split.item_ids)
    tb = tokenizer_to_bytes(tok)
    reg = ModelRegistry(str(tmp_path_factory.mktemp("gate") / "registry"))
    reg.publish("parent", GeneratorBundle(model, None, ids, sids, tok.version, tb))
    reg.publish("same", GeneratorBundle(model, None, ids, sids, tok.version, tb), parent="parent")
    reg.publish("random", GeneratorBundle(untrained, None, ids, sids, tok.version, tb), parent="parent")
    reg.promote("parent", require_verdict=False)
    return reg


CFG = GateJobConfig(max_users=120, canary_users=120, session_len=4, n=10, beam=10)


def test_a_randomly_initialised_candidate_fails_and_cannot_be_promoted(registry, world_and_data):
    world, data = world_and_data
    res = run_gate_job(registry, "random", cfg=CFG, data=data, world=world)
    assert res.parent == "parent" and not res.verdict.passed
    failed = {c.name for c in res.verdict.checks if not c.passed}
    assert "ndcg" in failed, res.verdict.reason
    assert res.parent_metrics["ndcg@10"] > res.candidate_metrics["ndcg@10"]
    assert res.candidate_metrics["validity"] == 1.0          # the trie: even an untrained model emits real items
    stored = registry.info("random").verdict
    assert stored["passed"] is False and stored["parent"] == "parent" and "ndcg failed" in stored["reason"]
    assert {m["name"] for m in stored["canary"]["metrics"]} >= {"mean_reward", "skip_rate"}
    with pytest.raises(RegistryError, match="failed its gate"):
        registry.promote("random")
    assert registry.promoted() == "parent"


def test_an_unchanged_candidate_passes_and_can_be_promoted(registry, world_and_data):
    world, data = world_and_data
    res = run_gate_job(registry, "same", cfg=CFG, data=data, world=world)
    assert res.verdict.passed, res.verdict.reason
    assert res.candidate_metrics["ndcg@10"] == pytest.approx(res.parent_metrics["ndcg@10"])
    canary = {m["name"]: m for m in res.canary["metrics"]}
    assert canary["mean_reward"]["diff"] == pytest.approx(0.0)   # same sessions, same request ids, same draws
    assert canary["mean_reward"]["n_users"] == min(120, len(world_and_data[1].split.test()))
    assert registry.info("same").verdict["passed"] is True
    assert registry.promote("same") == "parent" and registry.promoted() == "same"
    assert registry.rollback() == "parent"


def test_without_a_world_the_canary_is_required_or_waived(registry, world_and_data):
    _, data = world_and_data
    res = run_gate_job(registry, "same", cfg=CFG, data=data, world=None, write=False)
    assert not res.verdict.passed and "canary failed" in res.verdict.reason
    waived = GateJobConfig(**{**CFG.__dict__, "gate": GateConfig(require_canary=False)})
    assert run_gate_job(registry, "same", cfg=waived, data=data, world=None, write=False).verdict.passed


def test_parent_choice_and_bad_requests_are_clear(registry):
    assert choose_parent(registry, "random") == "parent"
    with pytest.raises(RegistryError, match="no parent to be judged against"):
        choose_parent(registry, "parent")
    with pytest.raises(RegistryError, match="'nope' is not in the registry"):
        choose_parent(registry, "same", "nope")
    with pytest.raises(ValueError, match="world"):
        GateJobConfig(world="mars")
    assert GateJobConfig(data="synthetic-small").world_kind() == "small"
    assert GateJobConfig(archive="/x").world_kind() == "none"
