"""``genrec serve``: run the Ray Serve app (HTTP API + recommender) in the foreground.

Reads the ``args`` of the genrec application in a Serve config file
(``infra/serve_config.yaml`` by default — the same file ``serve run`` and
``serve deploy`` take), lets flags override them, starts a local Ray with the
dashboard and job API on loopback (or joins ``--address``), deploys and runs
until Ctrl-C, then shuts Serve down.

A local Ray is started with Serve's direct ingress on (:mod:`serving.direct_ingress`):
the ingress replica answers HTTP on its own port (printed at start, the
low-latency address) and the Serve proxy on ``--port`` serves the same app.
``--no-direct-ingress`` keeps the proxy only.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the HTTP API (Ray Serve) in the foreground",
                       description="Deploy the genrec Serve app (FastAPI ingress + batching recommender, in one deployment or two: "
                                   "--topology) from a "
                                   "Serve config file and run until Ctrl-C. Without KAFKA_BOOTSTRAP or "
                                   "--bootstrap an embedded tansu broker is started.")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML (default: %(default)s)")
    p.add_argument("--bootstrap", default=None, help="Kafka host:port (default: KAFKA_BOOTSTRAP or embedded)")
    p.add_argument("--namespace", default=None, help="topic-name prefix (GENREC_TOPIC_NAMESPACE)")
    p.add_argument("--host", default=None, help="HTTP host (default from the config: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default from the config: 8000)")
    p.add_argument("--experiments", default=None, help="experiments YAML (default from the config)")
    p.add_argument("--admin-token", default=None, help="bearer token of the admin routes (or GENREC_ADMIN_TOKEN)")
    p.add_argument("--model", action="append", default=[], metavar="VERSION=PATH",
                   help="serve this checkpoint as VERSION (repeatable; replaces the config's models)")
    p.add_argument("--num-cpus", type=float, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--address", default=None, help="join a running Ray cluster instead of starting one")
    p.add_argument("--for-seconds", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.add_argument("--topology", choices=("colocated", "split"), default=None,
                   help="colocated: every ingress replica holds its own recommender (lowest latency); split: a "
                        "FastAPI ingress deployment in front of a batching recommender deployment, scaled apart "
                        "(default from the config: colocated)")
    p.add_argument("--no-direct-ingress", action="store_true",
                   help="serve through the Serve proxy only (default: the ingress replica also listens on its "
                        "own port, which skips the proxy hop; local Ray only)")
    p.set_defaults(func=run)


def load_serve_config(path: str | Path) -> tuple[dict, dict]:
    """``(http_options, args of the genrec application)`` of a Serve config file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Serve config {path} not found; pass --config PATH")
    doc = yaml.safe_load(path.read_text()) or {}
    apps = [a for a in doc.get("applications") or [] if a.get("import_path", "").startswith("serving.app:")]
    if not apps:
        raise ValueError(f"{path} has no application with import_path serving.app:app_builder")
    return dict(doc.get("http_options") or {}), dict(apps[0].get("args") or {})


def run(args) -> int:
    import ray
    from ray import serve

    from serving.serve_args import app_from_args

    http, app_args = load_serve_config(args.config)
    broker = None
    bootstrap = args.bootstrap or app_args.get("bootstrap") or os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        from infra.broker import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
        print(f"embedded tansu broker on {bootstrap}")
    app_args["bootstrap"] = bootstrap
    if args.namespace is not None:
        app_args["namespace"] = args.namespace
    if args.experiments:
        app_args["experiments"] = args.experiments
    if args.admin_token:
        app_args["admin_token"] = args.admin_token
    if args.topology:
        app_args["topology"] = args.topology
    if args.model:
        models = []
        for m in args.model:
            version, sep, path = m.partition("=")
            if not sep or not version or not path:
                raise ValueError(f"--model {m!r}: use VERSION=PATH")
            models.append({"version": version, "path": path})
        app_args["models"] = models
    host = args.host or http.get("host", "127.0.0.1")
    port = args.port if args.port is not None else int(http.get("port", 8000))
    app = app_from_args(app_args)  # validates before anything starts

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.address:
        ray.init(address=args.address)
    else:
        if not args.no_direct_ingress:
            from serving.direct_ingress import enable

            enable()  # read by Serve's processes at start: before ray.init
        ray.init(num_cpus=args.num_cpus, dashboard_host="127.0.0.1", include_dashboard=False,
                 log_to_driver=False)
    try:
        from serving.app import QUIET_LOGS

        serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
        serve.run(app, name="genrec", route_prefix="/", blocking=False)
        print(f"genrec API on http://{host}:{port}  (OpenAPI: http://{host}:{port}/docs)   Ctrl-C to stop",
              flush=True)
        from serving.direct_ingress import wait_for_ingress_urls

        direct = wait_for_ingress_urls("genrec", None if host in ("0.0.0.0", "::") else host, 60)
        if direct:
            print(f"direct ingress (no proxy hop): {', '.join(direct)}", flush=True)
        t0 = time.monotonic()
        try:
            while not stop.wait(0.5):
                if args.for_seconds and time.monotonic() - t0 > args.for_seconds:
                    break
        except KeyboardInterrupt:
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
        if broker is not None:
            broker.stop()
    print("serve stopped")
    return 0
