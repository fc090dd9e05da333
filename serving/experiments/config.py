"""Online A/B experiments: YAML-defined layers, deterministic bucketing, live reload.

The model is Google's *overlapping experiment infrastructure* (Tang et al.,
"Overlapping Experiment Infrastructure: More, Better, Faster Experimentation",
KDD 2010):

* A **layer** splits all users into ``BUCKETS`` buckets with its own salt.
  Experiments in one layer own disjoint bucket ranges, so they are **mutually
  exclusive**; a user falls into at most one experiment per layer.
* Different layers hash with different salts, so their splits are
  independent — experiments in different layers are **orthogonal** and a user
  takes part in one experiment of every layer at once.
* Inside an experiment a second hash (the experiment's salt) picks an **arm**
  by its traffic weight. Both hashes are pure functions of ``(salt, user_id)``:
  the same user always lands in the same arm, on every replica, after every
  restart, and a reload that does not change the salts keeps every user where
  they were.

An arm sets the **model version** and/or the **decode settings**; the layers
are applied in order and a later layer overrides only what its arm sets. The
result (:class:`Resolution`) names every ``(experiment, arm)`` the user is in;
the ``served`` record stores them ``;``-joined in its ``experiment`` and
``arm`` fields (aligned), which is what :mod:`serving.experiments.report` splits again.

**Guardrails** are named per experiment (e.g. ``ctr`` must not drop by more
than 5 % relative to control); the report evaluates them, one-sided and
uncorrected. **Analysis** settings (``analysis:``) pick the primary and
secondary metrics, the multiple-comparison correction, α, CUPED and whether the
report shows always-valid (sequential) intervals; see :class:`Analysis`.

The YAML looks like::

    default: {model_version: v1, decode: {mode: beam, beam_width: 4}}
    layers:
      - name: decoding
        salt: layer-decoding-1
        experiments:
          - name: spec-vs-beam
            traffic: 1.0            # share of the layer's buckets
            control: beam
            guardrails: [{metric: ctr, max_relative_drop: 0.05}, {metric: dislike_rate}]
            analysis: {primary: [ctr], secondary: [mean_reward], correction: holm,
                       alpha: 0.05, sequential: true, planned_users: 20000,
                       pre_period_s: 1209600, new_item_age_s: 86400}
            arms:
              - {name: beam, weight: 1, decode: {mode: beam, beam_width: 4}}
              - {name: spec, weight: 1, decode: {mode: spec_beam, beam_width: 4}}
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from models.decoding.settings import MODES, DecodeSettings

#: Buckets per layer; experiment traffic shares are rounded to whole buckets.
BUCKETS = 10_000


#: Per-user ratio metrics the report tests (serving.experiments.metrics defines them).
TEST_METRICS = ("ctr", "mean_reward", "watch_ms", "feedback_rate", "dislike_rate", "skip_rate",
                "new_item_share")

#: Metrics a guardrail may watch: the test metrics plus arm-level ones (latency, catalog coverage).
GUARDRAIL_METRICS = TEST_METRICS + ("p99_latency_ms", "catalog_coverage")

#: Multiple-comparison corrections ``analysis.correction`` may name.
CORRECTIONS = ("holm", "bh", "none")

#: Defaults of ``analysis.pre_period_s`` (CUPED's pre-exposure window: two weeks) and
#: ``analysis.new_item_age_s`` (an item is new for a day after its first item-events record).
PRE_PERIOD_S = 14 * 86_400
NEW_ITEM_AGE_S = 86_400
#: Upper bound of both windows (a year).
MAX_WINDOW_S = 366 * 86_400


def bucket_of(salt: str, user_id: str, buckets: int = BUCKETS) -> int:
    """Deterministic bucket in ``[0, buckets)`` of ``user_id`` under ``salt``.

    blake2b of ``salt \\x1f user_id``: uniform, stable across processes and
    Python versions (unlike ``hash()``), and fast enough for 100k users/s.
    """
    h = hashlib.blake2b(f"{salt}\x1f{user_id}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") % buckets


def _check_decode(where: str, decode: Any) -> dict:
    if decode is None:
        return {}
    if not isinstance(decode, dict):
        raise ValueError(f"{where}.decode={decode!r} must be a mapping like {{mode: beam, beam_width: 4}}")
    mode = decode.get("mode")
    if mode is not None and mode not in MODES:
        raise ValueError(f"{where}.decode.mode={mode!r} is not a decode mode; use one of {MODES}")
    unknown = sorted(set(decode) - set(DecodeSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{where}.decode: unknown keys {unknown}; use some of {sorted(DecodeSettings.__dataclass_fields__)}")
    for k, v in decode.items():
        if not isinstance(k, str) or not (v is None or isinstance(v, (str, int, float, bool))):
            raise ValueError(f"{where}.decode[{k!r}]={v!r}: keys must be strings and values scalars")
    return dict(decode)


@dataclass(frozen=True)
class Guardrail:
    """A bound an arm must keep relative to control, checked by the A/B report.

    ``max_relative_drop=0.05`` on ``ctr``: the arm fails when its CTR is more
    than 5 % below control's *and* a one-sided user-level test says the drop is
    significant at ``alpha`` (not corrected for multiplicity: a guardrail errs
    on the side of alarming). For metrics where higher is worse
    (``dislike_rate``, ``skip_rate``, ``p99_latency_ms``) the "drop" is a rise.
    """

    metric: str
    max_relative_drop: float = 0.05
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.metric not in GUARDRAIL_METRICS:
            raise ValueError(f"Guardrail.metric={self.metric!r}; use one of {GUARDRAIL_METRICS}")
        if not 0 <= self.max_relative_drop <= 1:
            raise ValueError(f"Guardrail.max_relative_drop={self.max_relative_drop} must be in [0, 1]")
        if not 0 < self.alpha < 1:
            raise ValueError(f"Guardrail.alpha={self.alpha} must be in (0, 1)")


@dataclass(frozen=True)
class Analysis:
    """How the report tests an experiment (the ``analysis:`` mapping of the YAML).

    * ``primary`` / ``secondary`` — metrics tested against control and
      corrected together (arms × these metrics) by ``correction``: ``holm``
      (Holm–Bonferroni, family-wise error) or ``bh`` (Benjamini–Hochberg, false
      discovery rate) or ``none``.
    * ``alpha`` — two-sided level of every interval and test.
    * ``sequential`` — also report always-valid confidence sequences (normal
      mixture, Howard et al. 2021), valid however often the report is looked
      at; ``planned_users`` tunes the mixture to be tightest at that many users.
    * ``cuped`` — adjust with each user's pre-exposure value of the same metric
      (Deng et al., WSDM 2013): the report reads the rewards served in the
      ``pre_period_s`` seconds before the experiment's first exposure.
    * ``new_item_age_s`` — an item is *new* in a session served at most this
      many seconds after the item's first ``item-events`` record (the
      new-item-share guardrail, cold start).
    """

    primary: tuple[str, ...] = ("ctr",)
    secondary: tuple[str, ...] = ("mean_reward", "watch_ms")
    correction: str = "holm"
    alpha: float = 0.05
    sequential: bool = False
    planned_users: int = 10_000
    cuped: bool = True
    pre_period_s: float = PRE_PERIOD_S
    new_item_age_s: float = NEW_ITEM_AGE_S

    def __post_init__(self) -> None:
        for name in ("primary", "secondary"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = (v,)
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"analysis.{name}={v!r} must be a list of metrics, e.g. [ctr]")
            v = tuple(v)
            bad = [m for m in v if m not in TEST_METRICS]
            if bad:
                raise ValueError(f"analysis.{name} names unknown metrics {bad}; use some of {TEST_METRICS}")
            object.__setattr__(self, name, v)
        if not self.primary:
            raise ValueError("analysis.primary is empty; name at least one metric, e.g. primary: [ctr]")
        both = set(self.primary) & set(self.secondary)
        if both:
            raise ValueError(f"analysis: {sorted(both)} are both primary and secondary; list each metric once")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"analysis.correction={self.correction!r}; use one of {CORRECTIONS} "
                             "(holm: family-wise error, bh: false discovery rate)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 0.5:
            raise ValueError(f"analysis.alpha={self.alpha!r} must be a number in (0, 0.5), e.g. 0.05")
        for name in ("sequential", "cuped"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"analysis.{name}={getattr(self, name)!r} must be true or false")
        if isinstance(self.planned_users, bool) or not isinstance(self.planned_users, int) \
                or self.planned_users < 10:
            raise ValueError(f"analysis.planned_users={self.planned_users!r} must be an integer >= 10 "
                             "(the number of users the experiment plans to reach)")
        for name, example in (("pre_period_s", "1209600 (14 days)"), ("new_item_age_s", "86400 (one day)")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_WINDOW_S:
                raise ValueError(f"analysis.{name}={v!r} must be a number of seconds in (0, {MAX_WINDOW_S}] "
                                 f"(at most a year), e.g. {example}")

    @property
    def tested(self) -> tuple[str, ...]:
        """Primary then secondary metrics: the family the correction covers."""
        return self.primary + self.secondary

    @staticmethod
    def from_dict(d: dict | None, where: str = "analysis") -> "Analysis":
        """From the YAML mapping; unknown keys are an error that lists the known ones."""
        d = d or {}
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a mapping like {{sequential: true, correction: holm}}")
        known = set(Analysis.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; use some of {sorted(known)}")
        try:
            return Analysis(**d)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Arm:
    """One arm: its traffic weight and what it changes (model version, decode settings)."""

    name: str
    weight: float = 1.0
    model_version: str | None = None
    decode: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ";\n") or len(self.name) > 40:
            raise ValueError(f"Arm.name={self.name!r} must be 1-40 characters without ';'")
        if not (self.weight > 0):
            raise ValueError(f"Arm {self.name!r}: weight={self.weight!r} must be > 0")
        object.__setattr__(self, "decode", _check_decode(f"arm {self.name!r}", self.decode))


@dataclass(frozen=True)
class Experiment:
    """An experiment of one layer: a share of the layer's buckets split into weighted arms."""

    name: str
    arms: tuple[Arm, ...]
    traffic: float = 1.0
    salt: str = ""
    control: str = ""
    guardrails: tuple[Guardrail, ...] = ()
    enabled: bool = True
    analysis: Analysis = field(default_factory=Analysis)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ";\n/ ") or len(self.name) > 40:
            raise ValueError(f"Experiment.name={self.name!r} must be 1-40 characters without ';', '/' or spaces")
        if not self.arms:
            raise ValueError(f"experiment {self.name!r} has no arms; give at least one")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r} has duplicate arm names {names}")
        if not 0 < self.traffic <= 1:
            raise ValueError(f"experiment {self.name!r}: traffic={self.traffic} must be in (0, 1]")
        if not self.salt:
            object.__setattr__(self, "salt", f"exp:{self.name}")
        if not self.control:
            object.__setattr__(self, "control", names[0])
        if self.control not in names:
            raise ValueError(f"experiment {self.name!r}: control={self.control!r} is not an arm; arms: {names}")

    def weights(self) -> dict[str, float]:
        """Arm name → expected traffic fraction (weights normalised)."""
        total = sum(a.weight for a in self.arms)
        return {a.name: a.weight / total for a in self.arms}

    def arm_for(self, user_id: str) -> Arm:
        """The arm of a user already inside this experiment (weighted, deterministic)."""
        u = bucket_of(self.salt, user_id) / BUCKETS
        total, acc = sum(a.weight for a in self.arms), 0.0
        for a in self.arms:
            acc += a.weight / total
            if u < acc:
                return a
        return self.arms[-1]


@dataclass(frozen=True)
class Layer:
    """Mutually exclusive experiments sharing one bucket space (salted per layer)."""

    name: str
    experiments: tuple[Experiment, ...] = ()
    salt: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Layer.name must not be empty")
        if not self.salt:
            object.__setattr__(self, "salt", f"layer:{self.name}")
        share = sum(e.traffic for e in self.experiments if e.enabled)
        if share > 1 + 1e-9:
            raise ValueError(f"layer {self.name!r}: experiment traffic adds up to {share:.3f} > 1; "
                             "experiments in a layer are mutually exclusive, lower their traffic")

    def ranges(self) -> list[tuple[int, int, Experiment]]:
        """``(first_bucket, end_bucket, experiment)`` of each enabled experiment, in order."""
        out, start = [], 0
        for e in self.experiments:
            if not e.enabled:
                continue
            end = min(BUCKETS, start + int(round(e.traffic * BUCKETS)))
            out.append((start, end, e))
            start = end
        return out

    def experiment_for(self, user_id: str) -> Experiment | None:
        b = bucket_of(self.salt, user_id)
        for start, end, e in self.ranges():
            if start <= b < end:
                return e
        return None


@dataclass(frozen=True)
class ExperimentsConfig:
    """All layers plus the default model version / decode settings (frozen, validated)."""

    layers: tuple[Layer, ...] = ()
    default_model_version: str = "v1"
    default_decode: dict = field(default_factory=lambda: {"mode": "beam", "beam_width": 4}, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_decode", _check_decode("default", self.default_decode))
        seen_layers, seen_exps = set(), set()
        for layer in self.layers:
            if layer.name in seen_layers:
                raise ValueError(f"duplicate layer name {layer.name!r}")
            seen_layers.add(layer.name)
            for e in layer.experiments:
                if e.name in seen_exps:
                    raise ValueError(f"experiment name {e.name!r} appears twice; names must be unique")
                seen_exps.add(e.name)

    @staticmethod
    def from_dict(d: dict | None) -> "ExperimentsConfig":
        """Build from the parsed YAML (see the module docstring for the layout)."""
        d = d or {}
        if not isinstance(d, dict):
            raise ValueError(f"experiments config must be a mapping, got {type(d).__name__}")
        unknown = set(d) - {"default", "layers"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in experiments config; use 'default' and 'layers'")
        default = d.get("default") or {}
        layers = []
        for i, ld in enumerate(d.get("layers") or []):
            if not isinstance(ld, dict):
                raise ValueError(f"layers[{i}] must be a mapping with name, salt, experiments")
            exps = []
            for j, ed in enumerate(ld.get("experiments") or []):
                if not isinstance(ed, dict):
                    raise ValueError(f"layers[{i}].experiments[{j}] must be a mapping")
                try:
                    arms = tuple(Arm(**a) for a in ed.get("arms") or [])
                    guards = tuple(Guardrail(**g) for g in ed.get("guardrails") or [])
                    analysis = Analysis.from_dict(ed.get("analysis"),
                                                  f"layers[{i}].experiments[{j}].analysis")
                    exps.append(Experiment(name=ed["name"], arms=arms, traffic=float(ed.get("traffic", 1.0)),
                                           salt=str(ed.get("salt", "")), control=str(ed.get("control", "")),
                                           guardrails=guards, enabled=bool(ed.get("enabled", True)),
                                           analysis=analysis))
                except (TypeError, KeyError) as e:
                    raise ValueError(f"layers[{i}].experiments[{j}]: {e}; each experiment needs a name and "
                                     "arms [{name, weight, model_version?, decode?}]") from None
            layers.append(Layer(name=str(ld.get("name", f"layer{i}")), experiments=tuple(exps),
                                salt=str(ld.get("salt", ""))))
        return ExperimentsConfig(layers=tuple(layers),
                                 default_model_version=str(default.get("model_version", "v1")),
                                 default_decode=default.get("decode") or {"mode": "beam", "beam_width": 4})

    @staticmethod
    def from_yaml(text_or_path: str | Path) -> "ExperimentsConfig":
        """From YAML text or a path to a YAML file."""
        p = Path(text_or_path) if isinstance(text_or_path, Path) or (
            isinstance(text_or_path, str) and "\n" not in text_or_path and text_or_path.endswith((".yaml", ".yml"))
        ) else None
        text = p.read_text() if p is not None else str(text_or_path)
        try:
            return ExperimentsConfig.from_dict(yaml.safe_load(text))
        except yaml.YAMLError as e:
            raise ValueError(f"experiments YAML does not parse: {e}") from None

    def experiments(self) -> Iterable[Experiment]:
        for layer in self.layers:
            yield from layer.experiments

    def experiment(self, name: str) -> Experiment:
        for e in self.experiments():
            if e.name == name:
                return e
        raise KeyError(name)

    def describe(self) -> dict:
        """A JSON-ready description (what ``GET /v1/experiments`` returns)."""
        return {
            "default": {"model_version": self.default_model_version, "decode": self.default_decode},
            "layers": [{
                "name": layer.name, "salt": layer.salt,
                "experiments": [{
                    "name": e.name, "traffic": e.traffic, "salt": e.salt, "control": e.control,
                    "enabled": e.enabled, "weights": e.weights(),
                    "guardrails": [g.__dict__ for g in e.guardrails],
                    "analysis": {**e.analysis.__dict__, "primary": list(e.analysis.primary),
                                 "secondary": list(e.analysis.secondary)},
                    "arms": [{"name": a.name, "weight": a.weight, "model_version": a.model_version,
                              "decode": a.decode} for a in e.arms],
                } for e in layer.experiments],
            } for layer in self.layers],
        }


@dataclass(frozen=True)
class Resolution:
    """What one user gets: model version, decode settings and every (experiment, arm) they are in."""

    model_version: str
    decode: dict
    assignments: tuple[tuple[str, str], ...] = ()

    @property
    def experiment(self) -> str:
        """``;``-joined experiment names (the ``served.experiment`` field)."""
        return ";".join(e for e, _ in self.assignments)

    @property
    def arm(self) -> str:
        """``;``-joined arm names aligned with :attr:`experiment` (the ``served.arm`` field)."""
        return ";".join(a for _, a in self.assignments)


def resolve(config: ExperimentsConfig, user_id: str, model_override: str | None = None) -> Resolution:
    """Assign ``user_id`` in every layer and merge what the arms set (later layers win)."""
    version, decode, assigned = config.default_model_version, dict(config.default_decode), []
    for layer in config.layers:
        exp = layer.experiment_for(user_id)
        if exp is None:
            continue
        arm = exp.arm_for(user_id)
        assigned.append((exp.name, arm.name))
        if arm.model_version:
            version = arm.model_version
        decode.update(arm.decode)
    return Resolution(model_override or version, decode, tuple(assigned))


def split_assignments(experiment: str, arm: str) -> dict[str, str]:
    """Inverse of :class:`Resolution`'s joined fields: ``{experiment: arm}`` of a served record."""
    if not experiment:
        return {}
    exps, arms = experiment.split(";"), arm.split(";")
    return dict(zip(exps, arms))


class ExperimentRegistry:
    """The live experiments of one serving process: thread-safe lookups, reload without restart.

    ``reload`` swaps the whole frozen config atomically; a request resolved
    before the swap keeps the old assignment, one after gets the new one.
    ``promote``/``rollback`` change the default model version (admin calls)
    and keep a history so that rollback is one call.
    """

    def __init__(self, config: ExperimentsConfig | None = None, source: str | Path | None = None):
        self._lock = threading.Lock()
        self._source = source
        self._config = config or (ExperimentsConfig.from_yaml(source) if source else ExperimentsConfig())
        self._history: list[str] = []
        self.version = 1

    @property
    def config(self) -> ExperimentsConfig:
        return self._config

    def resolve(self, user_id: str) -> Resolution:
        return resolve(self._config, user_id)

    def reload(self, text_or_path: str | Path | None = None) -> ExperimentsConfig:
        """Re-read the YAML (the original source when none given) and swap it in; errors keep the old one."""
        src = text_or_path if text_or_path is not None else self._source
        if src is None:
            raise ValueError("no experiments source to reload from; pass YAML text or a path")
        new = ExperimentsConfig.from_yaml(src)
        with self._lock:
            self._config = new
            self.version += 1
        return new

    def promote(self, model_version: str) -> str:
        """Make ``model_version`` the default; returns the previous default."""
        if not model_version:
            raise ValueError("model_version must not be empty")
        with self._lock:
            old = self._config.default_model_version
            self._history.append(old)
            self._config = ExperimentsConfig(self._config.layers, model_version, self._config.default_decode)
            self.version += 1
        return old

    def rollback(self) -> str:
        """Restore the default model version that the last ``promote`` replaced; returns it."""
        with self._lock:
            if not self._history:
                raise ValueError("nothing to roll back: no model version was promoted")
            prev = self._history.pop()
            self._config = ExperimentsConfig(self._config.layers, prev, self._config.default_decode)
            self.version += 1
        return prev
