"""Benchmark suite ``serving``: HTTP latency/throughput of the Ray Serve app vs the same work in-process.

One run, one machine: an embedded broker, a local Ray (2 CPUs), the genrec
app on a loopback port. Concurrent load comes from a separate load-generator
process (this file run as a script: asyncio + aiohttp), so the clients do not
share a GIL with anything they measure; its CPU use is reported
(``loadgen_cpu_*``: CPU seconds per wall second, 1.0 = one core).

* The app runs in its default ``colocated`` topology (every ingress replica holds
  its own recommender process: :mod:`serving.decode_process`). At the end the same app is redeployed
  ``split`` (FastAPI ingress → recommender deployment over Serve's gRPC handle)
  and c1 is measured again, like for like: ``overhead_p50_ms_split``, a second stage table.
* c1, like for like: request *i* goes over HTTP, then the *same work* runs in
  this process — the very :class:`serving.recommend_path.RecommendPath` the
  ingress runs (arm resolution, history read + generation in one backend
  call, the ``served`` record written and acked, metrics, JSON encoding), with
  a direct backend call instead of the recommender process / Serve handle. So the difference is
  HTTP + Serve ingress routing/validation + the pipe to the recommender process (colocated) or the
  handle hop (split) + batch wait.
  ``overhead_p50_ms`` = median of the paired differences;
  ``overhead_p50_diff_ms`` = difference of the p50s. A stage table splits both.
  Clients talk to the ingress replica's own port (Serve direct ingress,
  :mod:`serving.direct_ingress`); the same request through the Serve HTTP
  proxy runs in the same loop (``http_proxy_p50_ms_c1``, ``overhead_proxy_p50_ms``).
* Floors, alternating, same client: ``healthz_p50_ms`` (``GET /healthz`` on the
  ingress replica's port: Serve ingress, no work, no recommender hop),
  ``healthz_proxy_p50_ms`` (the same through the proxy) and a trivial FastAPI
  app on plain uvicorn in its own process (``floor_uvicorn_get_p50_ms``,
  ``floor_uvicorn_post_p50_ms``: GET, and POST with a validated JSON body).
* c16 / c64: p50/p99 and requests/s at the app's defaults (503s and the clients' back-off also bound the rate).
* Overload: 500 concurrent clients for 30 s (12 s quick), all starting at once, each
  waiting ``Retry-After`` after a 503 (the server's Retry-After is adaptive and
  jittered, and each 503 is answered after a random sub-second delay: :mod:`serving.admission`),
  at the app's defaults for this device (batch size and admission limit:
  :data:`serving.recommender_config.DEFAULT_MAX_BATCH` rows decoding continuously, as many admitted per replica).
  ``overload_admitted_p99_ms_after_5s``
  leaves out requests sent in the first 5 s (the initial burst of 500). ``overload_non_503_errors`` counts answers that
  are neither 200 nor 503, 503s without Retry-After and connection errors;
  ``overload_p99_ratio`` = client-side p99 of admitted requests / unloaded
  client-side p99 (c1, same run); ``overload_server_p99_ratio`` the same for
  the ingress-measured time.
  ``overload_b{B}_i{L}_*``: the same 500 clients against the app deployed with B rows decoding
  together and L admitted per replica (:data:`OVERLOAD_SETTINGS`, ``recommender.max_batch_size`` and
  ``serving.max_inflight``): the latency / throughput trade-off an operator sets.
* Freshness through the API: ``event_to_rec_p99_ms`` — from posting click
  events on a user's recommended items until a recommend no longer returns
  them (exclude-seen: the events are in the history); ``item_to_rec_p99_ms`` —
  from posting a new item until the recommender's live catalog (the trie it
  decodes under) holds it (``GET /v1/items/{id}`` = 200). An item the catalog turns away
  (its hashed SID prefix already holds every de-duplication code) is counted in
  ``item_to_rec_rejected`` instead: it never becomes recommendable, so it has no latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

SUITE = "serving"
#: (max_batch_size, max_inflight) the app is also deployed with for the overload phase, besides its defaults:
#: more rows buy answers per second with admitted latency
OVERLOAD_SETTINGS = ((8, 8), (16, 16))
ADMIN = "bench-admin-token-0123456789"
REPO = Path(__file__).resolve().parents[2]
STAGES = ("total_ms", "resolve_ms", "recommender_ms", "batch_wait_ms", "history_ms", "decode_ms", "log_ms",
          "batch_size", "loop_lag_ms")

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if __name__ != "__main__":  # the Ray this suite starts serves HTTP on the ingress replica (serving.direct_ingress)
    from serving.direct_ingress import enable as _enable_direct_ingress

    _enable_direct_ingress()


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


# ---- the load generator (its own process) ---------------------------------------------------

async def _load_async(url: str, n_clients: int, n_requests: int, user_prefix: str, n_users: int,
                      duration_s: float | None) -> dict:
    """``n_clients`` concurrent loops sharing ``n_requests`` recommend calls (or running ``duration_s``).

    Well-mannered clients: after a 503 they wait ``Retry-After`` seconds. Latencies are of 200s.
    """
    import aiohttp

    lat, started, codes, errors, parts = [], [], {}, 0, []
    counter = iter(range(n_requests)) if duration_s is None else iter(range(10**9))
    t0 = time.perf_counter()

    async def client(s):
        nonlocal errors
        for i in counter:
            if duration_s is not None and time.perf_counter() - t0 > duration_s:
                return
            t = time.perf_counter()
            try:
                async with s.post(url + "/v1/recommend", json={"user_id": f"{user_prefix}{i % n_users}", "k": 5}) as r:
                    body = await r.read()
                    code, ra = r.status, r.headers.get("retry-after")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
                await asyncio.sleep(0.1)
                continue
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                lat.append((time.perf_counter() - t) * 1000)
                started.append(t - t0)
                parts.append(json.loads(body)["timings"])
            elif code == 503:
                if ra is None:
                    errors += 1
                wait = float(ra or 1)
                if duration_s is not None:   # a timed run ends on time: no back-off past its end stretches the wall
                    wait = min(wait, max(0.0, duration_s - (time.perf_counter() - t0)))
                await asyncio.sleep(wait)

    conn = aiohttp.TCPConnector(limit=n_clients + 8)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as s:
        await asyncio.gather(*(client(s) for _ in range(n_clients)))
    wall = time.perf_counter() - t0
    return {"lat": lat, "started": started, "codes": codes, "errors": errors, "wall_s": wall, "parts": parts}


def _load(url: str, n_clients: int, n_requests: int, user_prefix: str, n_users: int,
          duration_s: float | None = None) -> dict:
    """Run :func:`_load_async` in a child process (this file as a script); summarize its answers."""
    import tempfile

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as tmp:   # answers come back in a file: a pipe cut long output short
        out_path = os.path.join(tmp, "load.json")
        args = json.dumps([url, n_clients, n_requests, user_prefix, n_users, duration_s, out_path])
        p = subprocess.run([sys.executable, __file__, args], capture_output=True, text=True, env=env, timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"load generator failed: {p.stderr[-2000:]}")
        with open(out_path) as f:
            r = json.load(f)
    r["codes"] = {int(k): v for k, v in r["codes"].items()}
    parts = r.pop("parts")
    r["parts"] = {k: _pct([x.get(k, np.nan) for x in parts], 50) if parts else float("nan") for k in STAGES}
    r["srv"] = [x["total_ms"] for x in parts]
    r["lag"] = [x.get("loop_lag_ms", np.nan) for x in parts]
    # recommender call minus the replica's own stages: the handle hop plus the wait behind the running batch
    r["queued"] = [x["recommender_ms"] - x.get("decode_ms", 0) - x.get("batch_wait_ms", 0) - x.get("history_ms", 0)
                   for x in parts]
    r["rps"] = len(r["lat"]) / r["wall_s"]
    return r


def _child_main(argv: list[str]) -> None:
    """The load generator's process. Its own pauses would count as server latency, so it runs on uvloop
    when installed (Ray Serve's HTTP servers do) and with the cyclic GC off until the run ends (a gen-2
    pass over the growing lists of answers stalled every client in flight for tens of ms)."""
    import gc
    import resource

    url, n_clients, n_requests, prefix, n_users, duration_s, out_path = json.loads(argv[0])
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    gc.collect()
    gc.disable()
    out = asyncio.run(_load_async(url, n_clients, n_requests, prefix, n_users, duration_s))
    gc.enable()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = ru.ru_utime + ru.ru_stime
    out["codes"] = {str(k): v for k, v in out["codes"].items()}
    with open(out_path, "w") as f:   # not stdout: libuv leaves stdio non-blocking, and a long print was cut
        json.dump(out, f)


# ---- freshness ------------------------------------------------------------------------------

def _freshness(url: str, n: int) -> tuple[list[float], list[float], list[str]]:
    import httpx

    ev_ms, item_ms, rejected = [], [], []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(n):
            user = f"fresh{i}-{uuid.uuid4().hex[:4]}"
            first = [x["item_id"] for x in c.post("/v1/recommend", json={"user_id": user, "k": 5}).json()["items"]]
            now = int(time.time() * 1000)
            evs = [{"event_id": uuid.uuid4().hex, "user_id": user, "item_id": it, "type": "click", "ts": now}
                   for it in first]
            t0 = time.perf_counter()
            c.post("/v1/events", json={"records": evs})
            while True:
                got = [x["item_id"] for x in c.post("/v1/recommend", json={"user_id": user, "k": 5}).json()["items"]]
                if not set(got) & set(first) or time.perf_counter() - t0 > 30:
                    break
            ev_ms.append((time.perf_counter() - t0) * 1000)
            iid = f"new-{uuid.uuid4().hex[:10]}"
            t0 = time.perf_counter()
            c.post("/v1/items", json={"records": [{"item_id": iid, "ts": now, "title": f"new item {i}"}]})
            while time.perf_counter() - t0 < 30:
                r = c.get(f"/v1/items/{iid}")
                if r.status_code == 200 or "rejected" in r.text:
                    break
                time.sleep(0.005)
            if r.status_code == 200:
                item_ms.append((time.perf_counter() - t0) * 1000)
            else:   # the catalog turned it away (its SID prefix is full), with its reason: no latency to count
                rejected.append(r.json().get("detail", r.text))
    return ev_ms, item_ms, rejected


# ---- c1: HTTP and the same work in-process, alternating -------------------------------------

#: A trivial FastAPI app on plain uvicorn (own process): the HTTP floor of this machine and client.
_UVICORN_FLOOR = """
import sys, uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel
class Req(BaseModel):
    user_id: str
    k: int = 10
api = FastAPI()
@api.get("/healthz")
async def healthz():
    return {"status": "ok"}
@api.post("/echo")
async def echo(body: Req):
    return Response(b'{"ok": 1}', media_type="application/json")
uvicorn.run(api, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def _floors(url: str, proxy_url: str, n: int) -> dict:
    """p50 ms of ``GET /healthz`` on the ingress replica's own port, through the Serve proxy, and of a
    trivial FastAPI app on plain uvicorn (GET and a validated POST), alternating, same client."""
    import httpx

    from infra.broker import free_port

    port = free_port()
    uvi = subprocess.Popen([sys.executable, "-c", _UVICORN_FLOOR, str(port)])
    lat = {"healthz_direct": [], "healthz_proxy": [], "uvicorn_get": [], "uvicorn_post": []}
    try:
        uurl = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(uurl + "/healthz", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with httpx.Client(timeout=30) as c:
            calls = {"healthz_direct": lambda: c.get(url + "/healthz"),
                     "healthz_proxy": lambda: c.get(proxy_url + "/healthz"),
                     "uvicorn_get": lambda: c.get(uurl + "/healthz"),
                     "uvicorn_post": lambda: c.post(uurl + "/echo", json={"user_id": "u1", "k": 5})}
            for i in range(n + 10):
                for k, f in calls.items():
                    t = time.perf_counter()
                    r = f()
                    ms = (time.perf_counter() - t) * 1000
                    if r.status_code != 200:
                        raise RuntimeError(f"floor {k}: HTTP {r.status_code}")
                    if i >= 10:
                        lat[k].append(ms)
    finally:
        uvi.terminate()
        uvi.wait(10)
    return {k: _pct(v, 50) for k, v in lat.items()}


def _c1_paired(url: str, args: dict, experiments: str, n: int, n_users: int, proxy_url: str | None = None) -> dict:
    import httpx

    from ingest.kafka_client import KafkaConfig
    from serving.experiments.config import ExperimentRegistry
    from serving.metrics import ServingMetrics
    from serving.recommend_path import RecommendPath, ServedLog
    from serving.application import AppArgs, load_configs, resolve_defaults
    from serving.recommender import build_backend

    _, rec_cfg = resolve_defaults(*load_configs(AppArgs.model_validate(args)))
    backend = build_backend(rec_cfg)
    log = ServedLog(KafkaConfig(**args["kafka"]))
    path = RecommendPath(ExperimentRegistry(source=experiments), log, ServingMetrics())

    async def direct(req):
        return backend.recommend([req])[0]

    loop = asyncio.new_event_loop()
    http_ms, inproc, pairs, http_parts, inproc_parts, proxy_ms, proxy_pairs = [], [], [], [], [], [], []
    try:
        with httpx.Client(base_url=url, timeout=60) as hc:
            for i in range(10):  # warm both paths
                hc.post("/v1/recommend", json={"user_id": f"u{i}", "k": 5})
                if proxy_url:
                    hc.post(proxy_url + "/v1/recommend", json={"user_id": f"u{i}", "k": 5})
                loop.run_until_complete(path.run(f"u{i}", 5, True, direct))
            t_c1 = time.perf_counter()
            for i in range(n):
                user = f"u{i % n_users}"
                t = time.perf_counter()
                r = hc.post("/v1/recommend", json={"user_id": user, "k": 5})
                h = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                _, tim = loop.run_until_complete(path.run(user, 5, True, direct))
                p_ms = (time.perf_counter() - t) * 1000
                if r.status_code == 200:
                    http_ms.append(h)
                    http_parts.append({**r.json()["timings"], "client_ms": h})
                    inproc.append(p_ms)
                    inproc_parts.append({**tim, "client_ms": p_ms})
                    pairs.append(h - p_ms)
                if proxy_url:  # the same request through the Serve HTTP proxy (the default path), same run
                    t = time.perf_counter()
                    r = hc.post(proxy_url + "/v1/recommend", json={"user_id": user, "k": 5})
                    if r.status_code == 200:
                        proxy_ms.append((time.perf_counter() - t) * 1000)
                        proxy_pairs.append(proxy_ms[-1] - p_ms)
            wall = time.perf_counter() - t_c1
    finally:
        loop.close()
        log.close()
        for f in getattr(backend, "feeds", []):
            f.stop()
    med = lambda rows: {k: _pct([x.get(k, np.nan) for x in rows], 50) for k in STAGES + ("client_ms",)}  # noqa: E731
    return {"lat": http_ms, "srv": [x["total_ms"] for x in http_parts], "inproc": inproc, "pairs": pairs,
            "proxy": proxy_ms, "proxy_pairs": proxy_pairs,
            "codes": {200: len(http_ms)}, "errors": n - len(http_ms), "rps": len(http_ms) / wall / (3 if proxy_url else 2),
            "queued": [x["recommender_ms"] - x.get("decode_ms", 0) - x.get("batch_wait_ms", 0) - x.get("history_ms", 0)
                       for x in http_parts],
            "parts": med(http_parts), "inproc_parts": med(inproc_parts), "cpu_s": float("nan"), "wall_s": wall,
            }


def _stage_table(c1: dict) -> str:
    h, p = c1["parts"], c1["inproc_parts"]
    hop = lambda d: d["recommender_ms"] - np.nan_to_num(d["batch_wait_ms"]) - d["history_ms"] - d["decode_ms"]  # noqa: E731
    hb = h.get("batch_wait_ms", float("nan"))
    rows = [("client-side total", h["client_ms"], p["client_ms"]),
            ("HTTP + Serve ingress routing/validation (client − ingress total)", h["client_ms"] - h["total_ms"], 0.0),
            ("arm resolution", h["resolve_ms"], p["resolve_ms"]),
            ("ingress → recommender handle hop (recommender − wait − history − decode)", hop(h), hop(p)),
            ("batch wait (recommender process)", hb, 0.0),
            ("history read", h["history_ms"], p["history_ms"]),
            ("generation (encode + constrained decode)", h["decode_ms"], p["decode_ms"]),
            ("served-log write, acked", h["log_ms"], p["log_ms"])]
    out = ["| c1 stage (median ms) | HTTP | in-process |", "|---|---|---|"]
    out += [f"| {name} | {a:.2f} | {b:.2f} |" for name, a, b in rows]
    return "\n".join(out)


def _wait_ready(proxy_url: str, what: str, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while httpx.get(proxy_url + "/readyz", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready in {timeout_s:.0f} s")
        time.sleep(0.5)


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import httpx
    import ray
    from ray import serve

    from infra.broker import EmbeddedBroker, free_port
    from ingest.contract import ItemEvent, UserEvent
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import ensure_topics
    from serving.application import QUIET_LOGS, AppArgs, app_builder, load_configs, resolve_defaults
    from serving.direct_ingress import enabled as direct_ingress_enabled, wait_for_ingress_urls

    load_at_start = os.getloadavg()
    n_items, n_users = (300, 100) if quick else (2000, 500)
    n_c1 = 40 if quick else 200
    n_conc = 150 if quick else 600
    n_fresh = 10 if quick else 40
    level_sizes = [32, 32, 8]  # 8192 SIDs: hashed codes of ~2k items leave every dedup level room
    decode = {"mode": "greedy"}
    experiments = f"default: {{model_version: v1, decode: {{mode: {decode['mode']}}}}}\nlayers: []\n"
    model_cfg = {"d_model": 64, "heads": 2, "enc_layers": 1, "dec_layers": 1, "max_history": 30}
    rng = np.random.default_rng(0)
    with EmbeddedBroker() as broker:
        ns = f"bench{int(time.time())}."
        kafka = KafkaConfig(bootstrap=broker.bootstrap, namespace=ns)
        ensure_topics(kafka)
        with EventProducer(kafka) as p:
            for i in range(n_items):
                p.send(ItemEvent(f"i{i}", 1000 + i, title=f"item {i}"))
            for u in range(n_users):
                for j, it in enumerate(rng.integers(0, n_items, 10)):
                    p.send(UserEvent(f"e{u}-{j}", f"u{u}", f"i{it}", "click", 10_000 + j))
        # batch size and admission limit: the app's defaults for this device
        args = {"kafka": {"bootstrap": broker.bootstrap, "namespace": ns},
                "serving": {"experiments": experiments, "admin_token": ADMIN, "topology": "colocated"},
                "recommender": {"level_sizes": level_sizes, "models": [{"version": "v1", "seed": 1, "config": model_cfg}],
                                "batch_wait_timeout_s": 0.0, "max_queued_requests": 256}}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        settings, rec_cfg = resolve_defaults(*load_configs(AppArgs.model_validate(args)))
        max_batch, max_inflight = rec_cfg.max_batch_size, settings.max_inflight
        try:
            port = free_port()
            proxy_url = f"http://127.0.0.1:{port}"
            serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET_LOGS)

            def deploy(app_args: dict, what: str) -> str:
                """Deploy the app with ``app_args`` (replacing the running one); the URL clients use."""
                if "genrec" in serve.status().applications:
                    serve.delete("genrec")
                serve.run(app_builder(AppArgs.model_validate(app_args)), name="genrec", route_prefix="/",
                          blocking=False)
                _wait_ready(proxy_url, what)
                direct = wait_for_ingress_urls("genrec", "127.0.0.1", 60)
                return direct[0] if direct else proxy_url   # clients talk to the ingress replica's own port

            url = deploy(args, "app")
            floors = _floors(url, proxy_url, 50 if quick else 150)
            c1 = _c1_paired(url, args, experiments, n_c1, n_users, proxy_url if url != proxy_url else None)
            c16 = _load(url, 16, n_conc, "u", n_users)
            c64 = _load(url, 64, n_conc, "u", n_users)
            ev_ms, item_ms, items_rejected = _freshness(url, n_fresh)
            # overload at the app's defaults, then the same 500 clients against the app deployed with other rows /
            # admission limits: the latency / throughput trade-off
            over_s = 12 if quick else 30
            over = _load(url, 500, 0, "u", n_users, duration_s=over_s)
            sweep = {(max_batch, max_inflight): over}
            for batch, lim in OVERLOAD_SETTINGS:
                if (batch, lim) in sweep:
                    continue
                sized = {**args, "serving": {**args["serving"], "max_inflight": lim},
                         "recommender": {**args["recommender"], "max_batch_size": batch}}
                sized_url = deploy(sized, f"app with {batch} rows, {lim} admitted")
                sweep[(batch, lim)] = _load(sized_url, 500, 0, "u", n_users, duration_s=over_s)
            # the split topology (ingress and recommender as two deployments, gRPC handle), c1 only
            split_args = {**args, "serving": {**args["serving"], "topology": "split"}}
            split_url = deploy(split_args, "split app")
            c1_split = _c1_paired(split_url, split_args, experiments, max(n_c1 // 2, 20), n_users)
        finally:
            serve.shutdown()
            ray.shutdown()

    m = {
        "http_p50_ms_c1": _pct(c1["lat"], 50), "http_p99_ms_c1": _pct(c1["lat"], 99),
        "inproc_p50_ms": _pct(c1["inproc"], 50), "inproc_p99_ms": _pct(c1["inproc"], 99),
        "overhead_p50_ms": _pct(c1["pairs"], 50),
        "overhead_p50_diff_ms": _pct(c1["lat"], 50) - _pct(c1["inproc"], 50),
        "http_proxy_p50_ms_c1": _pct(c1["proxy"], 50), "http_proxy_p99_ms_c1": _pct(c1["proxy"], 99),
        "overhead_proxy_p50_ms": _pct(c1["proxy_pairs"], 50),
        "healthz_p50_ms": floors["healthz_direct"], "healthz_proxy_p50_ms": floors["healthz_proxy"],
        "floor_uvicorn_get_p50_ms": floors["uvicorn_get"], "floor_uvicorn_post_p50_ms": floors["uvicorn_post"],
        "c1_log_ms_p50": c1["parts"]["log_ms"], "c1_batch_wait_ms_p50": c1["parts"]["batch_wait_ms"],
        "c1_http_proxy_ms_p50": c1["parts"]["client_ms"] - c1["parts"]["total_ms"],
        "http_p50_ms_c16": _pct(c16["lat"], 50), "http_p99_ms_c16": _pct(c16["lat"], 99), "rps_c16": c16["rps"],
        "http_p50_ms_c64": _pct(c64["lat"], 50), "http_p99_ms_c64": _pct(c64["lat"], 99),
        "rps_c1": c1["rps"],
        "rps_c64": c64["rps"], "c64_503": c64["codes"].get(503, 0),
        "overload_200": over["codes"].get(200, 0), "overload_503": over["codes"].get(503, 0),
        "overload_non_503_errors": over["errors"] + sum(v for k, v in over["codes"].items() if k not in (200, 503)),
        "overload_admitted_p99_ms": _pct(over["lat"], 99),
        "overload_p99_ratio": _pct(over["lat"], 99) / _pct(c1["lat"], 99),
        "overload_admitted_p50_ms": _pct(over["lat"], 50),
        "overload_admitted_p99_ms_after_5s": _pct([x for x, t in zip(over["lat"], over["started"]) if t > 5], 99),
        "overload_server_p99_ms": _pct(over["srv"], 99),
        "overload_server_p99_ms_after_5s": _pct([x for x, t in zip(over["srv"], over["started"]) if t > 5], 99),
        "overload_server_p99_ratio": _pct(over["srv"], 99) / _pct(c1["srv"], 99),
        "overload_rps": over["rps"],
        "overload_loop_lag_ms_p50": _pct(over["lag"], 50), "overload_loop_lag_ms_p99": _pct(over["lag"], 99),
        "overload_hop_and_queue_ms_p50": _pct(over["queued"], 50),
        "overload_client_minus_server_ms_p50": _pct(over["lat"], 50) - _pct(over["srv"], 50),
        "loadgen_cpu_c64": c64["cpu_s"] / c64["wall_s"], "loadgen_cpu_overload": over["cpu_s"] / over["wall_s"],
        "http_p50_ms_c1_split": _pct(c1_split["lat"], 50), "inproc_p50_ms_split": _pct(c1_split["inproc"], 50),
        "overhead_p50_ms_split": _pct(c1_split["pairs"], 50),
        "event_to_rec_p50_ms": _pct(ev_ms, 50), "event_to_rec_p99_ms": _pct(ev_ms, 99),
        "item_to_rec_p50_ms": _pct(item_ms, 50), "item_to_rec_p99_ms": _pct(item_ms, 99),
        "item_to_rec_rejected": len(items_rejected),
    }
    for (batch, lim), r in sorted(sweep.items(), reverse=True):
        key = f"overload_b{batch}_i{lim}"
        m[f"{key}_rps"] = r["rps"]
        m[f"{key}_admitted_p99_ms"] = _pct(r["lat"], 99)
        m[f"{key}_p99_ratio"] = _pct(r["lat"], 99) / _pct(c1["lat"], 99)
        m[f"{key}_non_503_errors"] = r["errors"] + sum(v for k, v in r["codes"].items() if k not in (200, 503))
    rows = [("1 (paired with in-process)", c1), ("16", c16), ("64", c64),
            (f"500 (overload; defaults: {max_batch} rows, {max_inflight} admitted)", over)] + [
            (f"500 (overload; {b} rows, {lim} admitted)", r)
            for (b, lim), r in sorted(sweep.items(), reverse=True) if (b, lim) != (max_batch, max_inflight)]
    table = ["| clients | requests/s | p50 ms | p99 ms | 200 | 503 | other errors | load-gen CPU | median batch "
             "| ingress ms | recommender ms | hop + queued behind batch ms | batch wait ms | decode ms | served-log ms "
             "| ingress loop lag ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        pp = r["parts"]
        table.append(f"| {name} | {r['rps']:.1f} | {_pct(r['lat'], 50):.1f} | {_pct(r['lat'], 99):.1f} | "
                     f"{r['codes'].get(200, 0)} | {r['codes'].get(503, 0)} | "
                     f"{r['errors'] + sum(v for k, v in r['codes'].items() if k not in (200, 503))} | "
                     f"{r['cpu_s'] / r['wall_s']:.2f} | {pp['batch_size']:.0f} | {pp['total_ms']:.1f} | "
                     f"{pp['recommender_ms']:.1f} | {_pct(r.get('queued', []), 50):.1f} | {pp['batch_wait_ms']:.1f} | "
                     f"{pp['decode_ms']:.1f} | {pp['log_ms']:.1f} | {pp['loop_lag_ms']:.1f} |")
    return {"config": {"items": n_items, "users": n_users, "level_sizes": level_sizes, "model": model_cfg,
                       "decode": decode, "max_batch_size": max_batch, "max_inflight": max_inflight,
                       "overload_settings": [list(k) for k in sorted(sweep)], "overload_seconds": over_s,
                       "batch_wait_timeout_s": 0.0, "ray_cpus": 2, "requests_c1": n_c1,
                       "requests_concurrent": n_conc, "freshness_probes": n_fresh,
                       "loadavg_at_start": [round(x, 2) for x in load_at_start],
                       "load_generator": "separate process, asyncio + aiohttp",
                       "http_path": "direct ingress (ingress replica's own port)" if url != proxy_url else "Serve proxy",
                       "direct_ingress_env": direct_ingress_enabled()},
            "metrics": m, "tables": ["\n".join(table), _stage_table(c1), _stage_table(c1_split).replace(
                "| c1 stage (median ms) |", "| c1 stage, split topology (median ms) |")]}


if __name__ == "__main__":
    _child_main(sys.argv[1:])
