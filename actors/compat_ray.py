"""Every use of Ray core beyond its public API, checked against the Ray version it was written for.

:func:`set_concurrency_group` sets the attribute ``@ray.method(concurrency_group=...)`` sets, on a
method of a class that is made a Ray actor later (``ray.remote(cls)``), so the module defining the
class does not import Ray. :func:`check_version` raises, naming the supported version, when another
Ray is installed.
"""

from __future__ import annotations

#: The Ray version whose internals this module uses (pyproject pins ``ray[serve]`` to it).
SUPPORTED_RAY = "2.60.0"


def check_version(installed: str | None = None) -> None:
    """Raise ``RuntimeError`` naming :data:`SUPPORTED_RAY` when another Ray is installed."""
    if installed is None:
        from importlib.metadata import version

        installed = version("ray")   # without importing Ray
    if installed != SUPPORTED_RAY:
        raise RuntimeError(f"genrec's actors use Ray internals of ray {SUPPORTED_RAY} (actors/compat_ray.py) but "
                           f"ray {installed} is installed: pip install 'ray[serve]=={SUPPORTED_RAY}', or port "
                           "actors/compat_ray.py")


def set_concurrency_group(method, group: str) -> None:
    """Run ``method`` of a future actor class in concurrency group ``group`` (declared in ``ray.remote``)."""
    check_version()
    method.__ray_concurrency_group__ = group
