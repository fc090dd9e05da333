"""Every use of Ray Serve beyond its documented API, checked against the one Ray version it was written for.

* Direct ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS``, Ray 2.60): each ingress replica serves HTTP on its
  own port; the ports come from the controller's HTTP target groups (a private call).
* One event loop per replica (``RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0``,
  ``RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0``): no cross-thread hand-off per request.
* The gRPC transport of a deployment handle (``handle.options(_by_reference=False)``).

:func:`check_version` runs on import: another Ray fails here, naming the supported version, rather
than misbehaving inside Serve.
"""

from __future__ import annotations

#: The Ray version whose Serve internals this module uses (pyproject pins ``ray[serve]`` to it).
SUPPORTED_RAY = "2.60.0"

#: Serve's direct ingress. The draining period is how long a stopping ingress replica waits for an
#: external load balancer (30 s by default); with no such balancer it only delays ``serve.shutdown()``.
DIRECT_INGRESS_ENV = {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
                      "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}

#: User code and the handle's router on the replica's main event loop (our replicas only await there).
ONE_LOOP_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def check_version(installed: str | None = None) -> None:
    """Raise ``RuntimeError`` naming :data:`SUPPORTED_RAY` when another Ray is installed."""
    if installed is None:
        import ray

        installed = ray.__version__
    if installed != SUPPORTED_RAY:
        raise RuntimeError(f"genrec's serving uses Ray Serve internals of ray {SUPPORTED_RAY} "
                           f"(serving/compat_serve.py) but ray {installed} is installed: "
                           f"pip install 'ray[serve]=={SUPPORTED_RAY}', or port serving/compat_serve.py")


check_version()


def direct_ingress_enabled(env) -> bool:
    return env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1"


def ingress_ports(app_name: str) -> list[tuple[str, int]]:
    """``(node ip, port)`` of every running direct-ingress replica of ``app_name`` (the controller's HTTP
    target groups: what an external load balancer would route to)."""
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running in this process (call serve.start / serve.run first)")
    out = []
    for g in ray.get(client._controller.get_target_groups.remote(app_name)):
        if g.protocol != RequestProtocol.HTTP or g.app_name != app_name:
            continue  # app_name is set only on direct-ingress groups (proxy groups have none)
        out += [(t.ip, t.port) for t in g.targets if t.port is not None]
    return out


def grpc_handle(handle):
    """``handle`` calling its deployment over Serve's gRPC transport (not Ray actor calls)."""
    return handle.options(_by_reference=False)
