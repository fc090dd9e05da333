"""What the ingress and the recommender exchange: requests, results, model specs (no torch import).

The ingress builds :class:`RecRequest` with typed :class:`~models.decoding.settings.DecodeSettings`
(experiment arms resolved); the recommender process answers a :class:`RecResult`. Both cross a pipe
or a Serve handle, so they are plain picklable dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

from models.decoding.settings import DecodeSettings


@dataclass(frozen=True)
class RecRequest:
    """One recommendation to compute (already resolved to a model version and decode settings)."""

    user_id: str
    k: int
    model_version: str
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    exclude_seen: bool = True


@dataclass
class RecResult:
    """A generated session, or ``error`` (then nothing was recommended)."""

    items: list[str] = field(default_factory=list)
    sids: list[list[int]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    error: str | None = None


EMPTY_CATALOG = "the catalog is empty: no item can be recommended yet"


class RecommenderBackend(Protocol):
    """What a recommender replica needs from the model side."""

    def model_versions(self) -> list[str]: ...

    def recommend(self, requests: Sequence[RecRequest]) -> list[RecResult]: ...

    def status(self) -> dict: ...

    def is_recommendable(self, item_id: str) -> bool: ...


@dataclass(frozen=True)
class ModelSpec:
    """One model version: a version of the model registry (``registry``: its URI) or a seeded init.

    A registry version is loaded by name (safetensors + JSON, :mod:`actors.model_registry`), never from a
    path. A seeded init (``config``, no registry) is an untrained model — used by tests and by benchmarks
    that measure speed only.
    """

    version: str
    config: dict = field(default_factory=dict, hash=False)
    registry: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.version or len(self.version) > 64 or any(c.isspace() for c in self.version):
            raise ValueError(f"ModelSpec.version={self.version!r} must be 1-64 characters without spaces")
        if self.registry is None and not self.config:
            raise ValueError(f"ModelSpec {self.version!r}: give the model registry it is in, or a generator "
                             "config (an untrained model)")
