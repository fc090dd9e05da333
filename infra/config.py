"""One YAML file assembles every component's frozen config (``genrec.yaml``).

Each top-level section names a component and maps to its frozen, validated
config dataclass (``SECTIONS``). Values come, in increasing priority, from the
dataclass defaults, the YAML file, and environment variables
``GENREC_<SECTION>__<FIELD>`` (values parsed as YAML, so ``8``, ``true`` and
``[1, 2]`` keep their types). ``KAFKA_BOOTSTRAP`` overrides
``kafka.bootstrap``. An unknown section or field is an error that names it and
lists what is allowed — a typo never silently falls back to a default.
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
}

ENV_PREFIX = "GENREC_"
DEFAULT_PATHS = ("genrec.yaml", "infra/genrec.yaml")


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
    for candidate in DEFAULT_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, field = key[len(ENV_PREFIX):].lower().split("__", 1)
        out.setdefault(section, {})[field] = yaml.safe_load(raw) if raw != "" else ""
    if environ.get("KAFKA_BOOTSTRAP"):
        out.setdefault("kafka", {})["bootstrap"] = environ["KAFKA_BOOTSTRAP"]
    return out


def load_raw(path: str | Path | None = None, environ: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Merged ``{section: {field: value}}`` from the YAML file and the environment."""
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
    return data


def build(section: str, values: dict[str, Any] | None = None, **defaults: Any):
    """Instantiate a section's config class from ``values`` (unknown fields are errors)."""
    cls = _config_class(section)
    values = {**defaults, **(values or {})}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"config section {section!r} has unknown field(s) {sorted(unknown)}; "
                         f"{cls.__name__} takes {sorted(names)}")
    return cls(**values)


def load(path: str | Path | None = None, environ: dict[str, str] | None = None,
         required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every configured section as its config object; sections in ``required`` must be buildable."""
    raw = load_raw(path, environ)
    for section in raw:
        _config_class(section)  # unknown sections fail loudly
    out = {}
    for section in set(raw) | set(required):
        out[section] = build(section, raw.get(section))
    return out
