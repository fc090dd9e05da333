"""Rollout on the ingress side: the default model version follows the registry, candidates enter arms.

* :class:`FollowingExperiments` — what the ingress resolves users with: the live experiments
  (:class:`serving.experiments.config.ExperimentRegistry`) whose *default* model version is the model
  registry's promoted version once this replica's recommender has loaded it
  (:mod:`serving.recommender_follow`). Arms that name a model version keep it; without a followed version
  (no registry, no promote yet, following off) the experiments' own default applies.
* :func:`registered` / :func:`check_promotable` — what the admin promote asks of a registry version
  (:class:`Refused` carries the HTTP status and the fix).
* :func:`arm_with_model` / :func:`assign_arm_model` — put a version into an experiment arm (the config in
  memory, or the experiments YAML file), only when its gate verdict passed
  (:meth:`actors.model_registry.ModelRegistry.require_passing`): a candidate that failed never takes traffic.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

from serving.experiments.config import ExperimentsConfig, Resolution, resolve


def promoted_at_start(rec_cfg) -> str | None:
    """Colocated ingress: the registry's promoted version when its recommender loaded it at start (the
    recommender's follower starts from the same rule), so that the first request already gets it."""
    if rec_cfg is None or not rec_cfg.registry or not rec_cfg.promoted_poll_s:
        return None
    try:
        from actors.model_registry import ModelRegistry

        current = ModelRegistry(rec_cfg.registry).promoted()
    except Exception:  # noqa: BLE001 - the ingress's follow loop reads it from the recommender later
        return None
    return current if current in {m.version for m in rec_cfg.models if m.registry} else None


class Refused(Exception):
    """A rollout request refused: ``status`` (HTTP) and ``detail`` (what to do)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def registered(mreg, version: str) -> bool:
    """Whether ``version`` is in the model registry ``mreg``; :class:`Refused` (400) for a name or folder the
    registry refuses outright (a path, a folder outside the registry)."""
    from actors.model_registry import RegistryError

    try:
        mreg.info(version)
        return True
    except RegistryError as e:
        if "is not in the registry" in str(e):
            return False
        raise Refused(400, f"model version {version!r} refused, serving keeps its version: {e}") from None


def check_promotable(mreg, version: str, followed: str | None) -> None:
    """:class:`Refused` (409) unless ``version`` passed its gate and shares the tokenizer of the version the
    replicas follow (``followed``; the catalog's SIDs are that tokenizer's)."""
    from actors.model_registry import RegistryError

    try:
        info = mreg.require_passing(version)
    except RegistryError as e:
        raise Refused(409, f"not promoted: {e}") from None
    if followed is None or followed == version:
        return
    try:
        old = mreg.info(followed).tokenizer_version
    except RegistryError:   # the followed version is not a registry version (an untrained test model)
        return
    new = info.tokenizer_version
    if old and new and old != new:
        raise Refused(409, f"not promoted: model version {version!r} was trained with tokenizer {new!r}, the "
                           f"served {followed!r} with {old!r}; the catalog's SIDs are the served tokenizer's, "
                           "retrain on it")


class FollowingExperiments:
    """``resolve(user_id)`` with the experiments' layers and the followed registry version as the default."""

    def __init__(self, experiments):
        self.experiments = experiments          # serving.experiments.config.ExperimentRegistry
        self.promoted: str | None = None        # set by the ingress from its recommender's status
        self._lock = threading.Lock()
        self._cache: tuple[tuple, ExperimentsConfig] | None = None

    @property
    def version(self) -> int:
        return self.experiments.version

    @property
    def config(self) -> ExperimentsConfig:
        """The experiments' config with the followed version as its default (cached per change)."""
        base, promoted = self.experiments.config, self.promoted
        if promoted is None or promoted == base.default_model_version:
            return base
        key = (id(base), promoted)
        hit = self._cache
        if hit is not None and hit[0] == key:
            return hit[1]
        cfg = ExperimentsConfig(base.layers, promoted, base.default_decode)
        with self._lock:
            self._cache = (key, cfg)
        return cfg

    def resolve(self, user_id: str) -> Resolution:
        return resolve(self.config, user_id)


def _plain(config: ExperimentsConfig) -> dict:
    """The YAML mapping of ``config`` (what :meth:`ExperimentsConfig.from_dict` reads back)."""
    d = config.describe()
    for layer in d["layers"]:
        for e in layer["experiments"]:
            e.pop("weights", None)
            for a in e["arms"]:
                if a.get("model_version") is None:
                    a.pop("model_version")
                if not a.get("decode"):
                    a.pop("decode", None)
    return d


def config_yaml(config: ExperimentsConfig) -> str:
    """``config`` as experiments YAML (salts included, so every user keeps their arm)."""
    import yaml

    return yaml.safe_dump(_plain(config), sort_keys=False)


def check_arms(config: ExperimentsConfig, mreg) -> None:
    """ValueError when an arm (or the default) names a registry version whose gate verdict failed."""
    from actors.model_registry import RegistryError

    named = [("default", config.default_model_version)] + [
        (f"arm {e.name}/{a.name}", a.model_version) for e in config.experiments() for a in e.arms if a.model_version]
    for where, version in named:
        try:
            refused = mreg.refused_by_gate(version)
        except RegistryError:   # not a registry version (or not a valid name): the recommender decides
            continue
        if refused:
            raise ValueError(f"{where} names {refused}; it never receives traffic")


def arm_with_model(config: ExperimentsConfig, experiment: str, arm: str, model_version: str) -> ExperimentsConfig:
    """``config`` with arm ``arm`` of ``experiment`` serving ``model_version`` (salts and weights unchanged);
    KeyError naming the known experiments or arms otherwise."""
    layers = []
    found = False
    for layer in config.layers:
        exps = []
        for e in layer.experiments:
            if e.name == experiment:
                names = [a.name for a in e.arms]
                if arm not in names:
                    raise KeyError(f"experiment {experiment!r} has no arm {arm!r}; arms: {names}")
                e = replace(e, arms=tuple(replace(a, model_version=model_version) if a.name == arm else a
                                          for a in e.arms))
                found = True
            exps.append(e)
        layers.append(replace(layer, experiments=tuple(exps)))
    if not found:
        raise KeyError(f"no experiment {experiment!r}; known: {[e.name for e in config.experiments()]}")
    return ExperimentsConfig(tuple(layers), config.default_model_version, config.default_decode)


def assign_arm_model(path: str | os.PathLike, experiment: str, arm: str, model_version: str,
                     registry) -> ExperimentsConfig:
    """Rewrite the experiments YAML at ``path`` so that ``arm`` of ``experiment`` serves ``model_version`` of
    ``registry`` (an :class:`actors.model_registry.ModelRegistry`), after checking that its gate verdict passed.

    Atomic (temp file, fsync, rename); replicas pick it up with ``POST /v1/admin/experiments/reload``. Comments
    in the file are not kept."""
    registry.require_passing(model_version)
    path = Path(path)
    new = arm_with_model(ExperimentsConfig.from_yaml(path), experiment, arm, model_version)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(config_yaml(new))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return new


def decide_and_promote(experiment, arm: str, version: str, records, registry=None, rule=None):
    """The report of ``experiment`` from ``records`` (:func:`serving.experiments.report.report_from_records`),
    :func:`serving.experiments.promotion.decide_promotion` for ``arm``, and on a win ``registry.promote(version)``
    unless it already is the promoted version (``registry`` None: a dry run). Returns ``(decision, the version
    made default or None, why the registry refused it or None)``: a version without a passing gate verdict is
    refused there, never forced."""
    from actors.model_registry import RegistryError
    from serving.experiments.promotion import PromotionRule, decide_promotion
    from serving.experiments.report import report_from_records

    decision = decide_promotion(report_from_records(experiment, records), arm, rule or PromotionRule())
    if not decision.promote or registry is None or registry.promoted() == version:
        return decision, None, None
    try:
        registry.promote(version)
    except RegistryError as e:
        return decision, None, f"the registry refused {version}: {e}"
    return decision, version, None
