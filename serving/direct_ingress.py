"""Direct ingress: clients talk HTTP to the ingress replica itself, not through the Serve proxy.

Every ingress replica runs its own HTTP server on a port the controller allocates (30000-31000,
same host as ``http_options``), skipping the proxy hop, the largest part of the HTTP + Serve
overhead (BENCHMARKS.md, ``serving``); the proxy still serves the same app on its usual port.
Serve reads the flags when its processes start, so :func:`enable` must run before ``ray.init``
of a local cluster (``genrec serve``, the benchmark and the tests do); for ``serve run`` export
them in the shell. The Serve internals involved are in :mod:`serving.compat_serve`.

:func:`enable` also starts Ray's workers at normal priority (:data:`WORKER_PRIORITY_ENV`).
"""

from __future__ import annotations

import os

from serving.compat_serve import DIRECT_INGRESS_ENV, direct_ingress_enabled, ingress_ports

#: Ray starts workers at nice 15 (raylet's ``worker_niceness``): serving replicas would get a few percent
#: of a core beside anything at nice 0. A local cluster started for serving runs them at normal priority.
WORKER_PRIORITY_ENV = {"RAY_worker_niceness": "0"}


def enable(env=os.environ) -> None:
    """Direct ingress and normal worker priority for Ray processes started after this call (explicit settings win)."""
    for k, v in {**DIRECT_INGRESS_ENV, **WORKER_PRIORITY_ENV}.items():
        env.setdefault(k, v)


def enabled(env=os.environ) -> bool:
    return direct_ingress_enabled(env)


def ingress_urls(app_name: str, host: str | None = "127.0.0.1") -> list[str]:
    """``http://host:port`` of every running ingress replica of ``app_name``; ``[]`` when direct ingress is off.

    The replicas bind to the host of Serve's ``http_options`` (loopback by default) while the
    controller reports node IPs, so on one machine pass that host (the default); ``host=None`` keeps
    the node IPs (a cluster whose ``http_options.host`` is 0.0.0.0).
    """
    return [f"http://{host or ip}:{port}" for ip, port in ingress_ports(app_name)]


def wait_for_ingress_urls(app_name: str, host: str | None = "127.0.0.1", timeout_s: float = 60.0) -> list[str]:
    """:func:`ingress_urls`, waiting until at least one replica has its port (``[]`` if direct ingress is off)."""
    import time

    if not enabled():
        return []
    deadline = time.monotonic() + timeout_s
    while True:
        urls = ingress_urls(app_name, host)
        if urls or time.monotonic() > deadline:
            return urls
        time.sleep(0.2)
