"""Shared fixtures: a real embedded Kafka broker (tansu) for the whole session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

# Ray token auth is off only for local test clusters: the suite's many short-lived local Ray clusters on a trusted
# machine (infra/ray_auth.py; a command that joins a cluster refuses "disabled").
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: MovieLens-100K lives beside the project (its licence forbids committing it).
ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def broker():
    """A real tansu broker on a free loopback port, shared by the session's tests.

    If ``KAFKA_BOOTSTRAP`` is set, tests use that cluster instead.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from infra.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b.bootstrap


@pytest.fixture
def topic_name():
    """A fresh topic-name suffix so tests sharing the broker never see each other's data."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def ml100k_path():
    """Path of MovieLens-100K, or skip with a clear message when it is not there."""
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K} (it is not committed: licence); "
                    "put the ml-100k folder under ../shared/data to run this test")
    return ML100K
