"""The genrec Serve application: typed builder arguments -> configs -> bound deployments.

``serve run infra/serve_config.yaml`` / ``serve deploy`` call :func:`app_builder` with the Serve
config's ``args`` (validated by Serve into :class:`AppArgs`); ``genrec serve`` calls it too. The
configs are the ``genrec.yaml`` sections (:mod:`infra.config`): the file, then ``GENREC_<SECTION>__<FIELD>``
environment variables, then the sections given in ``args``.
"""

from dataclasses import replace
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

#: No per-request access log lines from the replicas and the proxy (on 2 cores that is CPU taken from
#: decoding under overload); latency, status and errors are in ``/metrics``, warnings still logged.
QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}

#: The sections of genrec.yaml the app is built from.
APP_SECTIONS = ("kafka", "decode", "serving", "recommender")

Section = Field(default_factory=dict, description="fields of the genrec.yaml section of the same name; "
                                                 "they override the file and the environment")


class AppArgs(BaseModel):
    """The ``args:`` of the genrec application in a Serve config (unknown keys are errors).

    ``config``: the genrec.yaml to read (default: ``$GENREC_CONFIG``, ``./genrec.yaml``, the repository's).
    ``kafka`` / ``serving`` / ``recommender`` / ``decode``: overrides of those sections; their fields are
    checked by the sections' config classes (``KafkaConfig``, ``AppSettings``, ``RecommenderConfig``,
    ``DecodeSettings``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: Optional[str] = Field(None, description="genrec.yaml path")
    kafka: dict[str, Any] = Section
    serving: dict[str, Any] = Section
    recommender: dict[str, Any] = Section
    decode: dict[str, Any] = Section

    def overrides(self) -> dict[str, dict[str, Any]]:
        return {s: dict(getattr(self, s)) for s in APP_SECTIONS if getattr(self, s)}


def load_configs(args: AppArgs, environ: Optional[dict] = None):
    """``(AppSettings, RecommenderConfig)`` from genrec.yaml, the environment and ``args`` (errors name the key)."""
    from infra import config

    cfgs = config.load(config.resolve_repo_path(args.config) if args.config else None, environ,
                       required=APP_SECTIONS, overrides=args.overrides(), only=APP_SECTIONS)
    settings, rec = cfgs["serving"], cfgs["recommender"]
    settings = replace(settings, experiments=config.resolve_repo_path(settings.experiments))
    if rec.registry and "://" not in rec.registry:
        registry = config.resolve_repo_path(rec.registry)
        rec = replace(rec, registry=registry, models=tuple(replace(m, registry=registry) if m.registry else m
                                                           for m in rec.models))
    if not rec.models:
        rec = replace(rec, models=(promoted_spec(rec.registry),))
    return settings, rec


def promoted_spec(registry: str):
    """The registry's promoted version as a :class:`ModelSpec`; a clear error when there is none."""
    from actors.model_registry import ModelRegistry, RegistryError
    from serving.requests import ModelSpec

    version = ModelRegistry(registry).promoted()
    if version is None:
        raise RegistryError(f"the model registry {registry} has no promoted version: train one with "
                            f"`genrec train --registry {registry} --version v1`, then "
                            "`genrec models promote v1 --no-gate`, or name versions with --model")
    return ModelSpec(version, registry=registry)


def resolve_defaults(settings, rec):
    """The by-device defaults filled in for the running cluster: batch rows, admitted requests, device."""
    from serving.recommender_config import default_max_inflight, for_cluster

    rec = for_cluster(rec)
    if settings.max_inflight is None:
        settings = replace(settings, max_inflight=default_max_inflight(rec))
    return settings, rec


def build_app(settings, rec_cfg):
    """The bound Serve application: ingress -> recommender (in its replicas, or a deployment of its own)."""
    from serving.app import Ingress
    from serving.compat_serve import ONE_LOOP_ENV
    from serving.recommender_config import cluster_has_gpu
    from serving.recommender_deployment import recommender_deployment

    settings, rec_cfg = resolve_defaults(settings, rec_cfg)
    # Serve sheds before the ingress replica: beyond max_ongoing (the admitted /recommend plus room for the
    # other routes and fast 503s) and a short queue, its router answers 503 + Retry-After without a replica call.
    opts = dict(max_ongoing_requests=settings.max_inflight + settings.ingress_slack,
                max_queued_requests=settings.ingress_queue,
                backpressure_config={"status_code": 503, "retry_after_s": settings.shed_retry_after_s},
                logging_config=QUIET_LOGS)
    if settings.topology == "colocated":   # each ingress replica is also a recommender (its resources, GPU included)
        ingress = Ingress.options(num_replicas=settings.num_replicas, **opts, health_check_period_s=2,
                                  health_check_timeout_s=30, ray_actor_options={
                                      "num_cpus": rec_cfg.num_cpus,
                                      "num_gpus": 1.0 if cluster_has_gpu(rec_cfg.device) else 0.0,
                                      "runtime_env": {"env_vars": ONE_LOOP_ENV}})
        return ingress.bind(None, settings, rec_cfg)
    ingress = Ingress.options(num_replicas=settings.num_replicas, **opts,
                              ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": ONE_LOOP_ENV}})
    return ingress.bind(recommender_deployment(rec_cfg, QUIET_LOGS).bind(rec_cfg), settings)


def app_builder(args: AppArgs):
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path: serving.application:app_builder``).

    The annotation is what makes Serve validate the ``args`` dict into :class:`AppArgs` (no
    ``from __future__ import annotations`` in this module: Serve reads the annotation as a class).
    """
    return build_app(*load_configs(args))
