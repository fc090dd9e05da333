"""The split topology's recommender deployment: a Serve replica around a recommender process.

Each replica runs the same recommender process as a colocated ingress (:mod:`serving.decode_process`:
continuous batching, a GIL of its own), so both topologies batch and decode the same way; the
deployment adds only Serve's queue bound (overload becomes a fast ``BackPressureError``, 503 at the
ingress) and a health check that fails when the process died, so that Serve replaces the replica.
"""

from __future__ import annotations

from ray import serve

from serving.requests import RecRequest, RecResult
from serving.recommender_config import RecommenderConfig, cluster_has_gpu


@serve.deployment(name="Recommender")
class RecommenderDeployment:
    """One recommender replica, called by the ingress through a deployment handle."""

    def __init__(self, cfg: RecommenderConfig):
        from serving.decode_process import RecommenderProcess

        self.proc = RecommenderProcess(cfg)

    def check_health(self) -> None:
        if not self.proc.alive:
            raise RuntimeError("the recommender process of this replica died; Serve replaces the replica")

    async def recommend(self, req: RecRequest) -> RecResult:
        return await self.proc.recommend(req)

    async def status(self) -> dict:
        return await self.proc.status()

    async def is_recommendable(self, item_id: str) -> bool:
        return await self.proc.is_recommendable(item_id)

    async def item_state(self, item_id: str) -> tuple:
        return await self.proc.item_state(item_id)

    async def model_versions(self) -> list[str]:
        return await self.proc.model_versions()

    async def load_model(self, version: str) -> list[str]:
        return await self.proc.load_model(version)

    async def pid(self) -> int:
        return await self.proc.pid()


def recommender_deployment(cfg: RecommenderConfig, logging_config: dict | None = None):
    """The deployment with its options from the config (a GPU when the cluster has one and ``device`` allows)."""
    from serving.compat_serve import ONE_LOOP_ENV

    actor = {"num_cpus": cfg.num_cpus, "num_gpus": 1.0 if cluster_has_gpu(cfg.device) else 0.0,
             "runtime_env": {"env_vars": ONE_LOOP_ENV}}
    return RecommenderDeployment.options(
        num_replicas=cfg.num_replicas, max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests, ray_actor_options=actor,
        health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=2,
        **({"logging_config": logging_config} if logging_config else {}))
