"""A real local Ray Serve app (one per test module) on the session's real broker.

Ray Serve reads its direct-ingress flags when its processes start, so they are
set here, at collection, before any test of the session starts Ray: the app's
ingress replica then serves HTTP on its own port (``serve_app.url``, what the
benchmark measures) and the Serve proxy still serves it too (``serve_app.proxy_url``).
"""

from __future__ import annotations

import time
import uuid

import pytest

from infra.broker import free_port
from serving.direct_ingress import enable as enable_direct_ingress

enable_direct_ingress()

ADMIN_TOKEN = "test-admin-token-0123456789"
MAX_BODY_BYTES = 64 * 1024   # the app's request limits (serving.max_body_bytes, max_batch_records)
MAX_BATCH = 50
LEVEL_SIZES = (8, 8, 8)
N_ITEMS = 120

EXPERIMENTS = """
default: {model_version: v1, decode: {mode: greedy}}
layers:
  - name: decoding
    salt: dec-1
    experiments:
      - name: decode-ab
        control: greedy
        guardrails: [{metric: ctr, max_relative_drop: 0.05}]
        arms:
          - {name: greedy, weight: 1, decode: {mode: greedy}}
          - {name: beam, weight: 1, decode: {mode: beam, beam_width: 2}}
  - name: models
    salt: mod-1
    experiments:
      - name: model-ab
        arms:
          - {name: small, weight: 1, model_version: v1}
          - {name: other, weight: 1, model_version: v2}
"""


def start_ray():
    """A small local Ray (2 CPUs, no dashboard); returns True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="genrec-tests",
             configure_logging=False)
    return True


class ServeApp:
    def __init__(self, url: str, kafka, item_ids: list[str], proxy_url: str, registry: str = "",
                 direct_urls: tuple[str, ...] = ()):
        self.url, self.kafka, self.item_ids, self.proxy_url = url, kafka, item_ids, proxy_url
        self.registry = registry            # the model registry's URI
        self.direct_urls = direct_urls      # every ingress replica's own URL


def publish_registry(root: str) -> str:
    """A model registry holding ``v3``, an untrained generator of the app's SID shape (the admin load test)."""
    import torch

    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle
    from models.generator.model import GenerativeRecommender, GeneratorConfig

    reg = ModelRegistry(root)
    torch.manual_seed(3)
    reg.publish("v3", GeneratorBundle(GenerativeRecommender(GeneratorConfig(level_sizes=LEVEL_SIZES, d_model=32,
                                                                            max_history=20))))
    return reg.uri


@pytest.fixture(scope="module")
def serve_app(broker, request, tmp_path_factory):
    """Broker topics with a seeded catalog, then the genrec Serve app on a free loopback port.

    The app's topology is the test module's ``TOPOLOGY`` (default ``colocated``, the app's default); its
    catalog the module's ``CATALOG`` item ids (default ``item0..``, :data:`N_ITEMS` of them). A module may also
    define ``APP_OVERRIDES`` (``{section: {field: value}}`` merged over the app's sections) and
    ``prepare_registry(uri)`` (called on the model registry before the app starts).
    """
    import httpx
    from ray import serve

    from ingest.contract import ItemEvent
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import ensure_topics
    from serving.application import AppArgs, app_builder

    ns = f"srv-{uuid.uuid4().hex[:8]}."
    kafka = KafkaConfig(bootstrap=broker, namespace=ns)
    ensure_topics(kafka)
    items = list(getattr(request.module, "CATALOG", None) or [f"item{i}" for i in range(N_ITEMS)])
    with EventProducer(kafka) as p:
        for i, it in enumerate(items):
            p.send(ItemEvent(it, 1000 + i, title=f"title {i}"))
    registry = publish_registry(str(tmp_path_factory.mktemp("registry")))
    if getattr(request.module, "prepare_registry", None) is not None:
        request.module.prepare_registry(registry)
    sections = {
        "kafka": {"bootstrap": broker, "namespace": ns},
        "serving": {"experiments": EXPERIMENTS, "admin_token": ADMIN_TOKEN, "max_inflight": 16,
                    "max_body_bytes": MAX_BODY_BYTES, "max_batch_records": MAX_BATCH,
                    "topology": getattr(request.module, "TOPOLOGY", "colocated")},
        "recommender": {"level_sizes": list(LEVEL_SIZES), "max_batch_size": 8, "registry": registry,
                        "models": [{"version": "v1", "seed": 1, "config": {"d_model": 32, "max_history": 20}},
                                   {"version": "v2", "seed": 2, "config": {"d_model": 32, "max_history": 20}}]},
    }
    for section, fields in getattr(request.module, "APP_OVERRIDES", {}).items():
        sections[section] = {**sections.get(section, {}), **fields}
    started = start_ray()
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = app_builder(AppArgs.model_validate(sections))
    serve.run(app, name="genrec", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        raise RuntimeError("the Serve app did not become ready in 180 s")
    from serving.direct_ingress import wait_for_ingress_urls

    direct = wait_for_ingress_urls("genrec", "127.0.0.1", 60)
    if not direct:
        raise RuntimeError("direct ingress is off: Ray was started before tests/serving/conftest.py set its flags")
    yield ServeApp(direct[0], kafka, items, proxy_url=url, registry=registry, direct_urls=tuple(direct))
    serve.shutdown()
    if started:
        import ray

        ray.shutdown()


def _replica_names(deployment: str) -> list[str]:
    import ray

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if f"#{deployment}#" in a["name"] and a["name"].startswith("SERVE_REPLICA"))


def recommender_child_pids() -> list[int]:
    """Pids of the recommender child processes of colocated Ingress replicas (serving.decode_process)."""
    import os

    def cmd(pid) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if "spawn_main" not in cmd(pid):
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if "ServeReplica:genrec:Ingress" in cmd(ppid):
            out.append(int(pid))
    return out


def kill_replica_under_load(app: ServeApp, deployment: str, url: str,
                            kill=None, prefix: str = "kill-") -> tuple[list[tuple[str, int]], list[str]]:
    """4 clients send /recommend to ``url``; after 2 s the one replica of ``deployment`` is killed (no
    restart by Ray: Serve must replace it), or ``kill()`` is called instead. Runs until 8 answers came after the kill. Returns
    ``[(user, status or -1 for a connection error)]`` and the user ids of the ``served`` records written.
    Asserts the replica was replaced and that only 200 / 503 / connection errors / 5xx of the killed
    request itself were seen."""
    import asyncio

    import httpx
    import ray

    from ingest.contract import SERVED

    before = _replica_names(deployment)
    assert len(before) == 1, before
    results: list[tuple[str, int]] = []
    state = {"killed_at": None, "ok_after": 0}
    t0 = time.monotonic()

    async def worker(c, w):
        n = 0
        while True:
            user = f"{prefix}{w}-{n}"
            n += 1
            try:
                r = await c.post("/v1/recommend", json={"user_id": user, "k": 3})
                code = r.status_code
            except httpx.HTTPError:
                code = -1
            results.append((user, code))
            if state["killed_at"] is not None and code == 200:
                state["ok_after"] += 1
            if state["ok_after"] >= 8 or time.monotonic() - t0 > 150:
                return
            if code != 200:
                await asyncio.sleep(0.1)

    async def killer():
        await asyncio.sleep(2.0)
        if kill is None:
            ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        else:
            kill()
        state["killed_at"] = time.monotonic()

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            await asyncio.gather(killer(), *(worker(c, w) for w in range(4)))

    asyncio.run(go())
    codes = {c: sum(1 for _, x in results if x == c) for c in {c for _, c in results}}
    print(f"kill {deployment}: codes {codes}")
    assert state["ok_after"] >= 8, "no answers after the kill: the replica was not replaced"
    after = _replica_names(deployment)
    assert after and after != before
    time.sleep(0.5)
    from ingest.consumer_loop import ConsumerConfig, ContractConsumer

    with ContractConsumer(app.kafka, SERVED, config=ConsumerConfig(poll_timeout_ms=100)) as c:
        logged = [s.user_id for b in c.drain(until_empty_polls=2, timeout_s=30) for s in b.records()
                  if s.user_id.startswith(prefix)]
    return results, logged


def ensure_chromium() -> str:
    """The path of a headless-capable Chromium, installing Debian's ``chromium`` with apt once when absent.

    Browser tests need a real browser; the install is cached by the system package itself, so only the first
    session pays for it. Raises RuntimeError with the reason when it cannot be installed.
    """
    import os
    import shutil
    import subprocess

    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if not shutil.which("apt-get"):
        raise RuntimeError("chromium is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        raise RuntimeError("chromium is not installed and installing it needs root (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed (rc {done.returncode}): {done.stderr.strip()[-500:]}")
    path = shutil.which("chromium")
    if not path:
        raise RuntimeError("apt-get installed chromium but no chromium binary is on PATH")
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's ``chromium`` (installed once per machine on first use); skips, with the reason, only when it
    cannot be installed."""
    try:
        return ensure_chromium()
    except (RuntimeError, OSError, __import__("subprocess").TimeoutExpired) as e:
        pytest.skip(f"headless browser test needs chromium: {e}")
