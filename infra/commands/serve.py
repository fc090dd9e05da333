"""``genrec serve``: run the Ray Serve app (HTTP API + recommender) in the foreground.

Reads the ``args`` of the genrec application in a Serve config file (``infra/serve_config.yaml`` by
default, the file ``serve run`` and ``serve deploy`` take: sections of ``genrec.yaml`` overriding it),
lets flags override them, starts a local Ray (or joins ``--address``), deploys, prints each start-up
stage with its time, and runs until Ctrl-C, then shuts Serve down.

A local Ray is started with Serve's direct ingress on (:mod:`serving.direct_ingress`): the ingress
replica answers HTTP on its own port (printed at start, the low-latency address) and the Serve proxy
on ``--port`` serves the same app. ``--no-direct-ingress`` keeps the proxy only.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"
APP_IMPORT_PATH = "serving.application:app_builder"
ADMIN_TOKEN_ON_ARGV = ("--admin-token is refused: a token on the command line is visible to every local user "
                       "in the process list; set GENREC_SERVING__ADMIN_TOKEN in the environment or pass "
                       "--admin-token-file PATH (serving.admin_token_file)")


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the HTTP API (Ray Serve) in the foreground",
                       description="Deploy the genrec Serve app (FastAPI ingress + recommender process, in one "
                                   "deployment or two: --topology) from a Serve config file and run until Ctrl-C. "
                                   "Settings are the genrec.yaml sections serving, recommender, decode and kafka "
                                   "(GENREC_<SECTION>__<FIELD> overrides them). Without KAFKA_BOOTSTRAP, "
                                   "GENREC_KAFKA__BOOTSTRAP or --bootstrap an embedded tansu broker is started.")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config YAML (default: %(default)s)")
    p.add_argument("--bootstrap", default=None, help="Kafka host:port (default: KAFKA_BOOTSTRAP or embedded)")
    p.add_argument("--namespace", default=None, help="topic-name prefix (kafka.namespace)")
    p.add_argument("--host", default=None, help="HTTP host (default from the config: 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default from the config: 8000)")
    p.add_argument("--experiments", default=None, help="experiments YAML (serving.experiments)")
    p.add_argument("--admin-token", default=None, help=argparse.SUPPRESS)   # refused: see app_args_from
    p.add_argument("--admin-token-file", default=None, metavar="PATH",
                   help="file holding the bearer token of the admin routes (serving.admin_token_file); or set "
                        "GENREC_SERVING__ADMIN_TOKEN. Never the token itself on the command line")
    p.add_argument("--registry", default=None, metavar="URI",
                   help="model registry, a directory or pyarrow URI (recommender.registry); without --model its "
                        "promoted version is served")
    p.add_argument("--model", action="append", default=[], metavar="VERSION",
                   help="serve this registry version (repeatable; replaces recommender.models)")
    p.add_argument("--num-cpus", type=float, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--address", default=None, help="join a running Ray cluster instead of starting one")
    p.add_argument("--for-seconds", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.add_argument("--topology", choices=("colocated", "split"), default=None,
                   help="colocated: every ingress replica holds its own recommender (lowest latency); split: a "
                        "FastAPI ingress deployment in front of a recommender deployment, scaled apart "
                        "(serving.topology; default colocated)")
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
    apps = [a for a in doc.get("applications") or [] if a.get("import_path") == APP_IMPORT_PATH]
    if not apps:
        raise ValueError(f"{path} has no application with import_path {APP_IMPORT_PATH}")
    return dict(doc.get("http_options") or {}), dict(apps[0].get("args") or {})


def app_args_from(args, app_args: dict) -> dict:
    """The Serve config's application ``args`` with the command-line flags applied (flags win)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in app_args.items()}
    section = lambda name: out.setdefault(name, {})  # noqa: E731
    if args.bootstrap:
        section("kafka")["bootstrap"] = args.bootstrap
    if args.namespace is not None:
        section("kafka")["namespace"] = args.namespace
    if args.experiments:
        section("serving")["experiments"] = args.experiments
    if getattr(args, "admin_token", None):
        raise ValueError(ADMIN_TOKEN_ON_ARGV)
    if getattr(args, "admin_token_file", None):
        section("serving")["admin_token_file"] = str(Path(args.admin_token_file).resolve())
    if args.topology:
        section("serving")["topology"] = args.topology
    if args.registry:
        section("recommender")["registry"] = args.registry
        if not args.model:
            section("recommender")["models"] = []      # the registry's promoted version
    if args.model:
        for m in args.model:
            if "=" in m or "/" in m:
                raise ValueError(f"--model {m!r}: name a registry version (--registry URI --model VERSION); "
                                 "model files are not served by path")
        section("recommender")["models"] = [{"version": m} for m in args.model]
    return out


def broker_given(app_args: dict, environ=os.environ) -> bool:
    """Whether a Kafka bootstrap was named for this run (flag, Serve config args or environment); genrec.yaml's
    default (where ``genrec broker`` listens) does not count: without one an embedded broker is started."""
    return bool((app_args.get("kafka") or {}).get("bootstrap") or environ.get("KAFKA_BOOTSTRAP")
                or environ.get("GENREC_KAFKA__BOOTSTRAP"))


def describe(settings, rec) -> str:
    """One line on what is served: models (registry version or untrained), topology, batch rows, admission."""
    models = ", ".join(f"{m.version} (registry {m.registry})" if m.registry else
                       f"{m.version} (untrained, seed {m.seed}, d_model {m.config.get('d_model', 'default')})"
                       for m in rec.models)
    return (f"serving models {models}; topology {settings.topology}; {rec.max_batch_size} rows decoding "
            f"together, {settings.max_inflight} admitted per ingress replica; Kafka {settings.kafka.bootstrap} "
            f"namespace {settings.kafka.namespace!r}")


class Prepared:
    """The configs and the app's imports, built on a thread while Ray starts (both take seconds)."""

    def __init__(self, app_args: dict):
        self.app_args, self.error, self.configs = app_args, None, None
        self.thread = threading.Thread(target=self._run, name="genrec-serve-config", daemon=True)
        self.t0 = time.perf_counter()
        self.thread.start()

    def _run(self) -> None:
        try:
            from serving.application import AppArgs, load_configs

            self.configs = load_configs(AppArgs.model_validate(self.app_args))
            import serving.app  # noqa: F401 - the deployment classes build_app binds (FastAPI, Serve, torch)
        except BaseException as e:  # noqa: BLE001 - raised in the main thread by result()
            self.error = e
        self.seconds = time.perf_counter() - self.t0

    def result(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.configs


def run(args) -> int:
    import logging

    from serving.startup import StartupLog

    log = StartupLog(echo=True)
    print("genrec serve: starting (each stage with its time since start)", flush=True)
    http, app_args = load_serve_config(args.config)
    app_args = app_args_from(args, app_args)
    broker = None
    if not broker_given(app_args):
        with log.stage("embedded Kafka broker (tansu)"):
            from infra.broker import EmbeddedBroker

            kafka_log = logging.getLogger("kafka")
            level = kafka_log.level
            kafka_log.setLevel(logging.CRITICAL)   # the start-up probe's refused connections are expected
            try:
                broker = EmbeddedBroker().start()
            finally:
                kafka_log.setLevel(level)
            app_args.setdefault("kafka", {})["bootstrap"] = broker.bootstrap
        print(f"         embedded tansu broker on {broker.bootstrap}", flush=True)
    host = args.host or http.get("host", "127.0.0.1")
    port = args.port if args.port is not None else int(http.get("port", 8000))
    prepared = Prepared(app_args)   # config, validation and imports, while Ray starts

    stop = threading.Event()
    try:
        with log.stage("Ray" + (f" (joining {args.address})" if args.address else " (local)")):
            import ray
            from ray import serve

            from infra.ray_auth import prepare_ray_auth

            prepare_ray_auth(args.address)   # token auth; joining without the cluster's token is refused
            if args.address:
                ray.init(address=args.address)
            else:
                if not args.no_direct_ingress:
                    from serving.direct_ingress import enable

                    enable()  # read by Serve's processes at start: before ray.init
                ray.init(address="local", num_cpus=args.num_cpus, dashboard_host="127.0.0.1", include_dashboard=False,
                         log_to_driver=False)
        # after ray.init, which installs its own SIGTERM handler
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with log.stage("config and imports (beside Ray's start)"):
            configs = prepared.result()
        from serving.application import QUIET_LOGS, build_app, resolve_defaults

        settings, rec = resolve_defaults(*configs)
        print(f"         {describe(settings, rec)}", flush=True)
        with log.stage("Serve controller and HTTP proxy"):
            serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
        with log.stage("deploy: ingress replica start-up"):
            try:
                serve.run(build_app(settings, rec), name="genrec", route_prefix="/", blocking=False)
            except RuntimeError as e:
                print(f"genrec serve: error: the app did not start: {deploy_failure(serve, 'genrec') or e}",
                      file=sys.stderr, flush=True)
                return 2
        try:
            for name, seconds in serve.get_deployment_handle("Ingress", app_name="genrec") \
                    .startup_stages.remote().result(timeout_s=30):
                print(f"           {name}: {seconds:.1f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - the stages are information only
            print(f"           (replica stages unavailable: {type(e).__name__})", flush=True)
        from serving.direct_ingress import wait_for_ingress_urls

        direct = wait_for_ingress_urls("genrec", None if host in ("0.0.0.0", "::") else host, 60)
        print(f"genrec API ready in {log.elapsed():.1f} s on http://{host}:{port}  "
              f"(OpenAPI: http://{host}:{port}/docs)   Ctrl-C to stop", flush=True)
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
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        if broker is not None:
            broker.stop()
    print("serve stopped")
    return 0


def deploy_failure(serve, app: str) -> str | None:
    """The last line of each failed deployment's message in Serve's status: the replica's own error (the
    exception Serve raises only says which deployments failed; the reason is in the replica logs)."""
    try:
        status = serve.status().applications.get(app)
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return None
    if status is None:
        return None
    reasons = []
    for name, dep in status.deployments.items():
        lines = [ln.strip() for ln in (dep.message or "").splitlines() if ln.strip()]
        if lines:
            reasons.append(f"{name}: {lines[-1]}")
    return "; ".join(reasons) or None
