"""Fixtures of the actor tests: a real local Ray (2 CPUs, workers at normal priority), one per test module.

Also puts ``tests/actors`` on ``sys.path`` (the suite runs with ``--import-mode=importlib``) so the tests can
import :mod:`tiny_generator`.
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

_here = str(Path(__file__).parent)
if _here not in sys.path:
    sys.path.insert(0, _here)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_worker_niceness", "0")  # Ray would start workers at nice 15
        for attempt in range(3):  # Ray gives its raylet 30 s to register; a busy host can miss that
            try:
                ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=f"test-{uuid.uuid4().hex[:6]}",
                         log_to_driver=False, configure_logging=False)
                break
            except Exception:
                ray.shutdown()
                if attempt == 2:
                    raise
    yield ray
    if started:
        ray.shutdown()
