"""Joining Ray from a long-running command (``genrec sequences``, ``genrec rewards``)."""

from __future__ import annotations

import os


def init_ray(address: str | None, num_cpus: int, namespace: str = "genrec") -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local Ray of ``num_cpus`` CPUs; no-op if running.

    A local Ray starts its workers at CPU priority 0 (Ray's default, nice 15,
    starves latency-bound stream consumers on a busy host). Token authentication
    (:func:`infra.ray_auth.prepare_ray_auth`): joining needs the cluster's token.
    """
    import ray

    from infra.ray_auth import prepare_ray_auth

    if ray.is_initialized():
        return
    prepare_ray_auth(address)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=namespace)
    else:
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, namespace=namespace,
                 log_to_driver=False, configure_logging=False)


def run_supervised(sup, args, banner, line, stopped: str, extra=None) -> int:
    """Run a started supervisor in the foreground until Ctrl-C, SIGTERM or ``args.duration``.

    Prints ``banner(sup)`` once every actor answers, then every ``args.interval`` seconds the status
    (``--json``: the whole dict; else ``line(status)``) and ``extra()`` if given; ``sup.shutdown()``
    writes the final checkpoints on the way out.
    """
    import json
    import signal
    import threading
    import time

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        sup.wait_ready()
        print(banner(sup), flush=True)
        t0 = time.monotonic()
        while not stop.wait(args.interval):
            st = sup.status()
            print(json.dumps(st, default=str) if args.json else time.strftime("%H:%M:%S ") + line(st), flush=True)
            if extra is not None:
                extra()
            if args.duration and time.monotonic() - t0 >= args.duration:
                break
    except KeyboardInterrupt:
        pass
    finally:
        sup.shutdown()
        print(stopped)
    return 0
