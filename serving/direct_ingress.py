"""Direct ingress: clients talk HTTP to the ingress replica itself, not through the Serve proxy.

Why: by default every request crosses the Serve HTTP proxy (a separate
process) before it reaches the ingress replica, and for a POST the replica
then calls back into the proxy for the body (``receive_asgi_messages``).
Measured on the 2-core dev machine, side by side in one script
(``tests/bench/bench_serving.py`` reports the same floors every run): a
trivial FastAPI POST on plain uvicorn ~2 ms, the same route through the Serve
proxy ~12 ms, the same route on the ingress replica's own port ~4 ms. The
proxy hop was most of the measured HTTP + Serve overhead, and under overload
it was where admitted requests queued behind the rejected ones.

What: Ray Serve 2.60 has a "direct ingress" mode (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``;
ray-project/ray PR #60118): every replica of an application's *ingress*
deployment runs its own uvicorn server (uvloop + httptools) on a port the
controller allocates (``RAY_SERVE_DIRECT_INGRESS_MIN/MAX_HTTP_PORT``,
30000-31000 by default), bound to the same host as ``http_options`` (loopback by
default). The proxy keeps running on the head node and still answers on the
usual port, so both addresses serve the same app. The flags are read when
Serve's processes start, so :func:`enable` must run before ``ray.init`` of a
local cluster (``genrec serve``, the benchmark and the tests do this); for
``serve run`` export them in the shell.

The recommender deployment and the handle hop between the two deployments
are unchanged (DESIGN §6 keeps ingress and batching recommender apart).

:func:`enable` also starts Ray's workers at normal priority (``WORKER_PRIORITY_ENV``).
"""

from __future__ import annotations

import os

#: Environment of a local Ray started for the genrec app. The draining period is Serve's wait for an
#: external load balancer to notice a stopping ingress replica (30 s by default); with clients on
#: loopback there is no such balancer, and 30 s would only delay every ``serve.shutdown()``.
DIRECT_INGRESS_ENV = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
                      "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}

#: Ray starts every worker process at nice 15 (raylet's ``worker_niceness``), so the Serve proxy, the
#: ingress and the recommender replicas run at background priority: on a machine shared with anything
#: at nice 0 they get a few percent of a core (weight 36 vs 1024). Measured while other work ran: the
#: same decode took 73 ms in the recommender replica and 42 ms in the benchmark process at nice 0.
#: A local cluster started for serving gives its workers normal priority.
WORKER_PRIORITY_ENV = {"RAY_worker_niceness": "0"}


def enable(env=os.environ) -> None:
    """Direct ingress and normal worker priority for Ray processes started after this call (explicit settings win)."""
    for k, v in {**DIRECT_INGRESS_ENV, **WORKER_PRIORITY_ENV}.items():
        env.setdefault(k, v)


def enabled(env=os.environ) -> bool:
    return env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"


def ingress_urls(app_name: str, host: str | None = "127.0.0.1") -> list[str]:
    """``http://host:port`` of every running ingress replica of ``app_name``; ``[]`` when direct ingress is off.

    Asks the Serve controller for the application's HTTP target groups (what an
    external load balancer would route to). The replicas bind to the host of
    Serve's ``http_options`` (loopback by default) while the controller reports
    node IPs, so on one machine pass that host (the default); ``host=None``
    keeps the node IPs (a cluster whose ``http_options.host`` is 0.0.0.0).
    """
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running in this process (call serve.start / serve.run first)")
    groups = ray.get(client._controller.get_target_groups.remote(app_name))
    urls = []
    for g in groups:
        if g.protocol != RequestProtocol.HTTP or g.app_name != app_name:
            continue  # app_name is set only on direct-ingress groups (proxy groups have none)
        for t in g.targets:
            if t.port is None:
                continue
            urls.append(f"http://{host or t.ip}:{t.port}")
    return urls


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
