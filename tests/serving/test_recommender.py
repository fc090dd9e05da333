"""The recommender's backend built from a registry version on a real broker: without a configured
``level_sizes`` the catalog takes the served version's own levels and items, so ``genrec train`` →
``genrec models promote`` → ``genrec serve`` works with no catalog setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.model_registry import ModelRegistry, RegistryError
from ingest.kafka_client import KafkaConfig
from ingest.topics import ensure_topics
from models.generator.checkpoint import GeneratorBundle
from models.generator.model import GenerativeRecommender, GeneratorConfig
from serving.recommender import build_backend
from serving.recommender_config import SEEDED_LEVEL_SIZES, RecommenderConfig
from serving.requests import RecRequest

LS = (4, 4, 3)      # not the seeded default: a catalog built from the config alone would refuse the version


@pytest.fixture
def setup(broker, topic_name, tmp_path):
    kafka = KafkaConfig(bootstrap=broker, namespace=f"{topic_name}.")
    ensure_topics(kafka)
    reg = ModelRegistry(str(tmp_path / "reg"))
    torch.manual_seed(0)
    model = GenerativeRecommender(GeneratorConfig(level_sizes=LS, d_model=16, heads=2, enc_layers=1, dec_layers=1,
                                                  max_history=10))
    ids = tuple(f"i{n}" for n in range(30))
    sids = np.stack(np.unravel_index(np.arange(30) * 1, LS), axis=1).astype(np.int64)   # 30 distinct SIDs
    reg.publish("v1", GeneratorBundle(model, item_ids=ids, item_sids=sids))
    reg.publish("bare", GeneratorBundle(model))
    return kafka, reg, ids, sids


def _cfg(kafka, reg, version, **kw):
    return RecommenderConfig(kafka=kafka, registry=reg.uri, models=({"version": version},), **kw)


def test_the_catalog_takes_the_served_versions_levels_and_items(setup):
    kafka, reg, ids, sids = setup
    backend = build_backend(_cfg(kafka, reg, "v1"))
    try:
        assert backend.catalog.level_sizes == LS and len(backend.catalog) == len(ids)
        for i, s in zip(ids, sids):
            assert backend.catalog.sid_of(i).tolist() == s.tolist()
        out = backend.recommend([RecRequest("u1", 5, "v1")])[0]
        assert out.error is None and len(out.items) == 5 and set(out.items) <= set(ids)
    finally:
        for f in backend.feeds:
            f.stop()


def test_a_version_without_a_catalog_starts_empty_and_a_configured_mismatch_is_refused(setup):
    kafka, reg, _, _ = setup
    backend = build_backend(_cfg(kafka, reg, "bare"))
    try:
        assert backend.catalog.level_sizes == LS and len(backend.catalog) == 0
    finally:
        for f in backend.feeds:
            f.stop()
    with pytest.raises(RegistryError, match="level_sizes"):
        build_backend(_cfg(kafka, reg, "v1", level_sizes=SEEDED_LEVEL_SIZES))
