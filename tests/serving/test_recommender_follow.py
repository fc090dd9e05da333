"""The recommender's promoted-pointer follower on a real backend (live catalog, generators), no Ray: a new
version is loaded beside the running one and followed; refused versions are counted and the current one kept."""

from __future__ import annotations

import json

import pytest
import torch

from actors.model_registry import ModelRegistry
from ingest.contract import ItemEvent
from models.generator.checkpoint import GeneratorBundle
from models.generator.model import GenerativeRecommender, GeneratorConfig
from serving.backend import GeneratorBackend, load_model
from serving.live_state import HashSidAssigner, KafkaHistory, LiveCatalog
from serving.recommender_follow import PromotedFollower
from serving.requests import ModelSpec, RecRequest

LS = (4, 4, 3)


def _publish(reg, name, seed, tok="t1", level_sizes=LS, verdict=True):
    torch.manual_seed(seed)
    model = GenerativeRecommender(GeneratorConfig(level_sizes=level_sizes, d_model=16, heads=2, enc_layers=1,
                                                  dec_layers=1, max_history=10))
    reg.publish(name, GeneratorBundle(model, tokenizer_version=tok))
    if verdict is not None:
        reg.set_verdict(name, {"passed": verdict, "reason": "test"})


@pytest.fixture
def setup(tmp_path):
    reg = ModelRegistry(str(tmp_path / "reg"))
    _publish(reg, "p1", 1, verdict=None)
    _publish(reg, "good", 2)
    _publish(reg, "bad", 3, verdict=False)
    _publish(reg, "tok2", 4, tok="t2")
    _publish(reg, "wide", 5, level_sizes=(8, 4, 3))
    reg.promote("p1", require_verdict=False)
    cat = LiveCatalog(LS)
    evs = [ItemEvent(f"i{i}", 1) for i in range(20)]
    cat.upsert([e.item_id for e in evs], HashSidAssigner(LS[:-1])(evs))
    backend = GeneratorBackend(cat, KafkaHistory("127.0.0.1:1", max_len=50),
                               {"p1": load_model(ModelSpec("p1", registry=reg.uri), "cpu", LS)[0]})
    return reg, backend, PromotedFollower(reg.uri, backend, poll_s=0.1, followed="p1")


def _point(reg, version):
    with open(f"{reg._root}/promoted.json", "w") as f:
        json.dump({"version": version, "history": ["p1"]}, f)


def test_a_new_promoted_version_is_loaded_beside_and_followed(setup):
    reg, backend, f = setup
    assert f.poll_once() == "p1" and f.switches == 0
    reg.promote("good")
    assert f.poll_once() == "good" and set(backend.model_versions()) == {"p1", "good"}
    out = backend.recommend([RecRequest("u1", 3, "good")])[0]
    assert out.error is None and len(out.items) == 3
    reg.rollback()
    assert f.poll_once() == "p1" and f.switches == 2 and f.failures == 0
    st = f.status()
    assert st["version"] == "p1" and st["last_error"] is None


@pytest.mark.parametrize("target, why", [("bad", "failed its gate"), ("tok2", "tokenizer 't2'"),
                                         ("wide", "level_sizes"), ("nope", "not in the registry"),
                                         ("../p1", "never a path")])
def test_refused_versions_keep_the_current_one_and_are_counted(setup, target, why):
    reg, backend, f = setup
    _point(reg, target)
    assert f.poll_once() == "p1" and f.failures == 1 and why in f.last_error
    assert backend.model_versions() == ["p1"]
    assert f.poll_once() == "p1" and f.failures == 1        # not retried at every poll
    _point(reg, "good")
    assert f.poll_once() == "good"                         # the pointer moved on: followed at once


def test_for_recommender_follows_only_with_a_registry_and_a_poll(setup):
    from ingest.kafka_client import KafkaConfig
    from serving.recommender_config import RecommenderConfig

    reg, backend, _ = setup
    cfg = RecommenderConfig(KafkaConfig("127.0.0.1:1"), level_sizes=LS, registry=reg.uri, models=({"version": "p1"},))
    assert PromotedFollower.for_recommender(cfg, backend).followed == "p1"
    from dataclasses import replace

    assert PromotedFollower.for_recommender(replace(cfg, promoted_poll_s=0), backend) is None
    with pytest.raises(ValueError, match="promoted_poll_s"):
        replace(cfg, promoted_poll_s=-1)
