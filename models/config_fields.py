"""A frozen config dataclass from a plain mapping (YAML, JSON, a CLI): unknown keys are errors, not ignored.

Pure and torch-free, so config values such as :class:`models.decoding.settings.DecodeSettings` can use it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Mapping, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: Mapping | None, what: str) -> T:
    """``cls(**d)``; a key that is not a field of ``cls`` raises :class:`ValueError` naming it and the known
    ones. ``what`` names the keys in that message (``"decode settings"``, ``"AlignConfig fields"``)."""
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)
