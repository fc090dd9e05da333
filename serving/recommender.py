"""The recommender: a backend (model versions, live catalog, history source) and what callers may ask of it.

:class:`Recommender` lives in the recommender process (:mod:`serving.decode_process`), which batches
its ``recommend`` calls; every other method runs there between two decode steps. The ``served``
record is written by the ingress after the recommender answered and before the HTTP response
(:mod:`serving.recommend_path`), so a recommender that dies mid-request leaves neither.
"""

from __future__ import annotations

import os
import time

from serving.requests import ModelSpec
from serving.recommender_config import RecommenderConfig
from serving.startup import StartupLog


def build_backend(cfg: RecommenderConfig, startup: StartupLog | None = None):
    """The :class:`serving.backend.GeneratorBackend` of a config, feeds started and caught up.

    Raises when a feed does not catch up within ``cfg.start_timeout_s`` (with the feed's last error):
    a recommender that cannot read its topics must not report ready.
    """
    import numpy as np
    import torch

    from serving.backend import GeneratorBackend, load_bundle, pick_device
    from serving.live_state import DeltaFeed, HashSidAssigner, ItemFeed, KafkaHistory, LiveCatalog, ShardHistory

    startup = startup or StartupLog()

    torch.set_num_threads(cfg.torch_threads)
    device = pick_device(cfg.device)
    # the models first: without a configured level_sizes the catalog takes the first version's, and its items
    with startup.stage(f"recommender: models {', '.join(m.version for m in cfg.models)} on {device}"):
        first = load_bundle(cfg.models[0], device, cfg.level_sizes)
        level_sizes = cfg.level_sizes or first.level_sizes
        bundles = {cfg.models[0].version: first,
                   **{m.version: load_bundle(m, device, level_sizes) for m in cfg.models[1:]}}
        models = {v: b.model for v, b in bundles.items()}
        heads = {v: b.mtp_heads for v, b in bundles.items()}
    catalog = LiveCatalog(level_sizes)
    seed = cfg.seed_catalog
    if seed is None and not cfg.indexer_actor and first.item_ids:
        seed = (list(first.item_ids), first.item_sids)   # the catalog the first version was trained with
    if seed is not None:
        ids, sids = seed
        catalog.add_with_sids(list(ids), np.asarray(sids))
    feeds = []
    if cfg.indexer_actor:
        import ray

        delta_feed = DeltaFeed(ray.get_actor(cfg.indexer_actor, namespace=cfg.indexer_namespace), catalog).start()
        if not delta_feed.wait_caught_up(60):
            delta_feed.stop()
            raise RuntimeError(f"could not follow item indexer {cfg.indexer_actor!r}: {delta_feed.last_error}")
        feeds.append(delta_feed)
    elif cfg.item_feed:
        assigner = cfg.sid_assigner or HashSidAssigner(level_sizes[:-1])
        feeds.append(ItemFeed(cfg.kafka, catalog, assigner).start())
    if cfg.history == "shards":
        history = ShardHistory(cfg.shard_names, cfg.num_partitions, cfg.shard_namespace, cfg.max_history,
                               cfg.history_timeout_s)
    else:
        history = KafkaHistory(cfg.kafka, cfg.max_history).start()
        feeds.append(history)
    with startup.stage("recommender: catalog and history feeds caught up"):
        deadline = time.monotonic() + cfg.start_timeout_s
        for f in feeds:
            if not f.wait_caught_up(max(0.0, deadline - time.monotonic())):
                for g in feeds:
                    g.stop()
                raise RuntimeError(f"{type(f).__name__} did not catch up with Kafka ({cfg.kafka.bootstrap}) in "
                                   f"{cfg.start_timeout_s:.0f} s; last error: {f.last_error}")
    backend = GeneratorBackend(catalog, history, models, cfg.max_history, device, mtp_heads=heads)
    backend.feeds = feeds
    return backend


class Recommender:
    """A backend plus the calls the ingress makes: status, catalog lookups, model versions, model loading.

    ``recommend`` is not here: the recommender process batches requests itself (:mod:`serving.decode_process`).
    """

    def __init__(self, cfg: RecommenderConfig, startup: StartupLog | None = None):
        self.cfg = cfg
        self.backend = build_backend(cfg, startup)
        from serving.recommender_follow import PromotedFollower

        self.follower = PromotedFollower.for_recommender(cfg, self.backend)   # None: no registry to follow
        if self.follower is not None:
            self.follower.start()
        self.batches = 0
        self.batched_requests = 0
        self.started = time.time()
        from serving.loop_lag import tune_replica_process

        tune_replica_process()  # model + catalog frozen out of full GCs; 1 ms GIL switches (serving.loop_lag)

    def status(self) -> dict:
        st = self.backend.status()
        st.update({"pid": os.getpid(), "batches": self.batches, "batched_requests": self.batched_requests,
                   "uptime_s": round(time.time() - self.started, 1),
                   "feeds": [{"type": type(f).__name__, "lag": getattr(f, "lag", 0),
                              "applied": getattr(f, "applied", 0), "last_error": getattr(f, "last_error", None)}
                             for f in getattr(self.backend, "feeds", [])]})
        st["registry"] = self.cfg.registry
        st["promoted"] = self.follower.status() if self.follower is not None else None
        return st

    def is_recommendable(self, item_id: str) -> bool:
        return self.backend.is_recommendable(item_id)

    def item_state(self, item_id: str) -> tuple:
        return self.backend.item_state(item_id)

    def model_versions(self) -> list[str]:
        return self.backend.model_versions()

    def load_model(self, version: str) -> list[str]:
        """Load one more version of the configured model registry beside the running ones (admin); a version
        whose gate verdict failed is refused."""
        from actors.model_registry import RegistryError
        from serving.backend import load_model

        if not self.cfg.registry:
            raise RegistryError("this recommender has no model registry (recommender.registry); models load "
                                "only from a registry, by version name")
        from actors.model_registry import ModelRegistry

        refused = ModelRegistry(self.cfg.registry).refused_by_gate(version)
        if refused:
            raise RegistryError(f"{refused}: it is not loaded and never receives traffic")
        spec = ModelSpec(version, registry=self.cfg.registry)
        self.backend.add_model(spec.version, *load_model(spec, self.backend.device, self.backend.catalog.level_sizes))
        return self.backend.model_versions()

    def pid(self) -> int:
        return os.getpid()
