"""One YAML file assembles every component's frozen config (``genrec.yaml``).

Each top-level section names a component and maps to its frozen, validated
config dataclass (``SECTIONS``). Values come, in increasing priority, from the
dataclass defaults, the YAML file, and environment variables
``GENREC_<SECTION>__<FIELD>`` (values parsed as YAML, so ``8``, ``true`` and
``[1, 2]`` keep their types), then explicit overrides (a Serve config's ``args``,
command-line flags). ``KAFKA_BOOTSTRAP`` overrides ``kafka.bootstrap`` and
``GENREC_TOPIC_NAMESPACE`` ``kafka.namespace``. A field that holds another
section's config (``serving.kafka``, :data:`LINKS`) is filled from that section.
An unknown section or field is an error that names it and lists what is
allowed — a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any

import yaml

#: section name -> "module:ConfigClass"
SECTIONS: dict[str, str] = {
    "kafka": "ingest.kafka_client:KafkaConfig",
    "broker": "infra.broker:BrokerConfig",
    "topics": "ingest.topics:TopicsConfig",
    "producer": "ingest.producer:ProducerConfig",
    "consumer": "ingest.consumer_loop:ConsumerConfig",
    "archive": "ingest.archive:ArchiveConfig",
    "replay": "ingest.replay:ReplayConfig",
    "world": "ingest.synthetic:WorldConfig",
    "sequence": "actors.sequence_state:SequenceConfig",
    "checkpoint": "actors.checkpoint:CheckpointConfig",
    "item_indexer": "actors.item_indexer:ItemIndexerConfig",
    "text_encoder": "actors.text_encoder:TextEncoderConfig",
    "triton_encoder": "actors.triton_encoder:TritonEncoderConfig",
    "eval": "actors.eval_job:EvalConfig",
    "serving": "serving.settings:AppSettings",
    "recommender": "serving.recommender_config:RecommenderConfig",
    "decode": "models.decoding.settings:DecodeSettings",
    "rewards": "actors.reward_joiner:RewardJoinerConfig",
    "align": "actors.align_job:AlignJobConfig",
}

#: Fields that hold another section's config object: section -> {field: section it comes from}.
#: They are filled from that section and cannot be set in the section itself.
LINKS: dict[str, dict[str, str]] = {
    "serving": {"kafka": "kafka", "decode": "decode"},
    "recommender": {"kafka": "kafka"},
}

ENV_PREFIX = "GENREC_"
DEFAULT_PATHS = ("genrec.yaml", "infra/genrec.yaml")
#: The repository's own genrec.yaml: found from any working directory (a Ray worker's may differ).
REPO_ROOT = Path(__file__).resolve().parents[1]


def _config_class(section: str):
    try:
        target = SECTIONS[section]
    except KeyError:
        raise ValueError(f"unknown config section {section!r}; known sections: {sorted(SECTIONS)}") from None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def find_config_file(explicit: str | None = None) -> Path | None:
    """The YAML file to read: ``explicit``, ``$GENREC_CONFIG``, or the first default path that exists."""
    path = explicit or os.environ.get("GENREC_CONFIG")
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist (from --config or GENREC_CONFIG)")
        return p
    for candidate in (*DEFAULT_PATHS, REPO_ROOT / "genrec.yaml"):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def resolve_repo_path(p: str) -> str:
    """A relative path as an absolute one: from the working directory when it exists there, else from the
    repository when it exists there (a Ray worker's working directory may differ from the caller's).
    Anything else (absolute, missing, YAML text, empty) comes back as it is."""
    if not p or "\n" in p or Path(p).is_absolute():
        return p
    if Path(p).exists():
        return str(Path(p).resolve())
    return str(REPO_ROOT / p) if (REPO_ROOT / p).exists() else p


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, field = key[len(ENV_PREFIX):].lower().split("__", 1)
        out.setdefault(section, {})[field] = yaml.safe_load(raw) if raw != "" else ""
    if environ.get("KAFKA_BOOTSTRAP"):
        out.setdefault("kafka", {})["bootstrap"] = environ["KAFKA_BOOTSTRAP"]
    if environ.get("GENREC_TOPIC_NAMESPACE") is not None and "namespace" not in out.get("kafka", {}):
        out.setdefault("kafka", {})["namespace"] = environ["GENREC_TOPIC_NAMESPACE"]
    return out


def load_raw(path: str | Path | None = None, environ: dict[str, str] | None = None,
             overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Merged ``{section: {field: value}}``: the YAML file, then the environment, then ``overrides``
    (explicit arguments: a Serve config's ``args``, command-line flags)."""
    environ = dict(os.environ if environ is None else environ)
    file = find_config_file(str(path) if path else None)
    data: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: top level must be a mapping of sections, got {type(loaded).__name__}")
        data = {k: dict(v or {}) for k, v in loaded.items()}
    for section, fields in _env_overrides(environ).items():
        data.setdefault(section, {}).update(fields)
    for section, fields in (overrides or {}).items():
        data.setdefault(section, {}).update(fields or {})
    return data


def build(section: str, values: dict[str, Any] | None = None, **defaults: Any):
    """Instantiate a section's config class from ``values`` (unknown fields are errors)."""
    cls = _config_class(section)
    check_links(section, values)
    values = {**defaults, **(values or {})}
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"config section {section!r} has unknown field(s) {sorted(unknown)}; "
                         f"{cls.__name__} takes {sorted(names - set(LINKS.get(section, {})))}")
    missing = [f.name for f in fields if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"config section {section!r} needs field(s) {missing} (in genrec.yaml or "
                         f"GENREC_{section.upper()}__{missing[0].upper()})")
    return cls(**values)


def check_links(section: str, values: dict[str, Any] | None) -> None:
    """A linked field (:data:`LINKS`) given in the section itself is an error that says where it belongs."""
    linked = set(LINKS.get(section, {})) & set(values or {})
    if linked:
        raise ValueError(f"config section {section!r}: {sorted(linked)} come from their own section(s) "
                         f"{sorted(LINKS[section][f] for f in linked)}; set them there")


def load(path: str | Path | None = None, environ: dict[str, str] | None = None,
         required: tuple[str, ...] = (), overrides: dict[str, dict[str, Any]] | None = None,
         only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every configured section as its config object; sections in ``required`` must be buildable.

    ``only``: build just these sections (and the sections they link to); the others are still checked
    for unknown section names. A linked field (:data:`LINKS`) gets its section's object.
    """
    raw = load_raw(path, environ, overrides)
    for section in raw:
        _config_class(section)  # unknown sections fail loudly
        check_links(section, raw[section])
    wanted = set(only) if only is not None else set(raw) | set(required)
    wanted |= set(required)
    out: dict[str, Any] = {}

    def get(section: str):
        if section not in out:   # linked sections first (LINKS has no cycles)
            links = {f: get(src) for f, src in LINKS.get(section, {}).items()}
            out[section] = build(section, raw.get(section), **links)
        return out[section]

    for section in sorted(wanted):
        get(section)
    return out
