"""Benchmark suite ``serving``: HTTP latency/throughput of the Ray Serve app vs the same backend in-process.

One run, one machine: an embedded broker, a local Ray (2 CPUs), the genrec
app on a loopback port, and an httpx load generator in this process.

* ``http_p50_ms_c1`` / ``http_p99_ms_c1`` — sequential ``POST /v1/recommend``;
  ``inproc_p50_ms`` — the same backend (same config, same Kafka state) called
  in this process, each call right after its HTTP twin; ``overhead_p50_ms`` =
  median of the paired differences (HTTP + proxy + ingress + handle + batch
  wait + the served-record ack); ``overhead_p50_diff_ms`` = difference of the p50s.
* c16 / c64: p50/p99 and requests/s; ``batching_gain_c64`` = rps with dynamic
  batching / rps with batch size 1 (``configure_batching(1)`` on the same replica).
* Overload: the ingress switches to its adaptive (AIMD) admission limit with
  the unloaded server-side p99 as latency target; then 500 concurrent
  clients for 40 s (15 s quick), each waiting
  ``Retry-After`` after a 503; ``overload_non_503_errors`` counts answers
  that are neither 200 nor 503 (+ connection errors); ``overload_p99_ratio`` =
  p99 of admitted requests / unloaded p99 (c1), as the clients see it (500
  Python clients on the same 2 cores inflate it), and ``overload_server_p99_ratio``
  the same ratio of the ingress-measured time (admission to answer).
* Freshness through the API: ``event_to_rec_p99_ms`` — from posting click
  events on a user's recommended items until a recommend no longer returns
  them (exclude-seen: the events are in the history); ``item_to_rec_p99_ms`` —
  from posting a new item until the recommender's live catalog (the trie it
  decodes under) holds it (``GET /v1/items/{id}`` = 200).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import numpy as np

from infra.broker import free_port

SUITE = "serving"
ADMIN = "bench-admin-token-0123456789"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


async def _load(url: str, n_clients: int, n_requests: int, user_prefix: str, n_users: int,
                duration_s: float | None = None) -> dict:
    """``n_clients`` concurrent loops sharing ``n_requests`` recommend calls (or running ``duration_s``).

    Clients behave like well-mannered ones: after a 503 they wait ``Retry-After`` seconds.
    Latencies are of the admitted (200) requests.
    """
    import httpx

    lat, codes, errors, parts = [], {}, 0, []
    counter = iter(range(n_requests)) if duration_s is None else iter(range(10**9))

    async def client(c):
        nonlocal errors
        for i in counter:
            if duration_s is not None and time.perf_counter() - t0 > duration_s:
                return
            t = time.perf_counter()
            try:
                r = await c.post("/v1/recommend", json={"user_id": f"{user_prefix}{i % n_users}", "k": 5})
            except httpx.HTTPError:
                errors += 1
                continue
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 200:
                lat.append((time.perf_counter() - t) * 1000)
                parts.append(r.json()["timings"])
            elif r.status_code == 503:
                ra = r.headers.get("retry-after")
                if ra is None:
                    errors += 1
                await asyncio.sleep(float(ra or 1))

    limits = httpx.Limits(max_connections=n_clients + 8, max_keepalive_connections=n_clients + 8)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(n_clients)))
        wall = time.perf_counter() - t0
    mean = {k: float(np.mean([p.get(k, np.nan) for p in parts])) if parts else float("nan")
            for k in ("total_ms", "recommender_ms", "decode_ms", "log_ms", "batch_size")}
    srv = [p["total_ms"] for p in parts]
    return {"lat": lat, "codes": codes, "errors": errors, "rps": len(lat) / wall, "wall_s": wall, "parts": mean,
            "srv": srv}


def _freshness(url: str, n: int) -> tuple[list[float], list[float]]:
    import httpx

    ev_ms, item_ms = [], []
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
            while c.get(f"/v1/items/{iid}").status_code != 200 and time.perf_counter() - t0 < 30:
                time.sleep(0.005)
            item_ms.append((time.perf_counter() - t0) * 1000)
    return ev_ms, item_ms


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import httpx
    import ray
    from ray import serve

    from infra.broker import EmbeddedBroker
    from ingest.contract import ItemEvent, UserEvent
    from ingest.kafka_client import KafkaConfig
    from ingest.producer import EventProducer
    from ingest.topics import ensure_topics
    from serving.backend import RecRequest
    from serving.recommender import build_backend
    from serving.serve_args import app_from_args, configs_from_args

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
        args = {"bootstrap": broker.bootstrap, "namespace": ns, "experiments": experiments,
                "level_sizes": level_sizes, "models": [{"version": "v1", "seed": 1, "config": model_cfg}],
                "max_batch_size": 16, "batch_wait_timeout_s": 0.002, "max_inflight": 32,
                "max_queued_requests": 256, "admin_token": ADMIN}
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(app_from_args(args), name="genrec", route_prefix="/", blocking=False)
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300
            while httpx.get(url + "/readyz", timeout=10).status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("app not ready in 300 s")
                time.sleep(0.5)
            # the same generation in this process (same config, same Kafka state), measured *paired*
            # with the HTTP calls: request i over HTTP, then the same request in-process, so both see
            # the same (shared, noisy) machine; overhead = median of the paired differences.
            _, rec_cfg = configs_from_args(args)
            backend = build_backend(rec_cfg)
            asyncio.run(_load(url, 4, 40, "u", n_users))  # warm up
            http_ms, srv_ms, inproc, pairs = [], [], [], []
            with httpx.Client(base_url=url, timeout=60) as hc:
                t_c1 = time.perf_counter()
                for i in range(n_c1):
                    user = f"u{i % n_users}"
                    t = time.perf_counter()
                    r = hc.post("/v1/recommend", json={"user_id": user, "k": 5})
                    h = (time.perf_counter() - t) * 1000
                    t = time.perf_counter()
                    backend.recommend([RecRequest(user, 5, "v1", decode)])
                    p_ms = (time.perf_counter() - t) * 1000
                    if r.status_code == 200:
                        http_ms.append(h)
                        srv_ms.append(r.json()["timings"]["total_ms"])
                        inproc.append(p_ms)
                        pairs.append(h - p_ms)
                wall_c1 = time.perf_counter() - t_c1
            for f in getattr(backend, "feeds", []):
                f.stop()
            c1 = {"lat": http_ms, "srv": srv_ms, "codes": {200: len(http_ms)}, "errors": n_c1 - len(http_ms),
                  "rps": len(http_ms) / wall_c1, "parts": {k: float("nan") for k in
                                                           ("total_ms", "recommender_ms", "decode_ms", "log_ms",
                                                            "batch_size")}}
            c16 = asyncio.run(_load(url, 16, n_conc, "u", n_users))
            c64 = asyncio.run(_load(url, 64, n_conc, "u", n_users))
            handle = serve.get_deployment_handle("Recommender", app_name="genrec")
            handle.configure_batching.remote(1).result()
            c64_unbatched = asyncio.run(_load(url, 64, n_conc, "u", n_users))
            handle.configure_batching.remote(16).result()
            target = float(_pct(c1["srv"], 99))  # adaptive admission: keep admitted requests near unloaded p99
            httpx.post(url + "/v1/admin/admission", json={"latency_target_ms": target},
                       headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30).raise_for_status()
            over = asyncio.run(_load(url, 500, 0, "u", n_users, duration_s=15 if quick else 40))
            ev_ms, item_ms = _freshness(url, n_fresh)
        finally:
            serve.shutdown()
            ray.shutdown()

    m = {
        "http_p50_ms_c1": _pct(c1["lat"], 50), "http_p99_ms_c1": _pct(c1["lat"], 99),
        "inproc_p50_ms": _pct(inproc, 50),
        "overhead_p50_ms": _pct(pairs, 50),
        "overhead_p50_diff_ms": _pct(c1["lat"], 50) - _pct(inproc, 50),
        "http_p50_ms_c16": _pct(c16["lat"], 50), "http_p99_ms_c16": _pct(c16["lat"], 99), "rps_c16": c16["rps"],
        "http_p50_ms_c64": _pct(c64["lat"], 50), "http_p99_ms_c64": _pct(c64["lat"], 99),
        "rps_c1": c1["rps"],
        "rps_c64_batched": c64["rps"], "rps_c64_unbatched": c64_unbatched["rps"],
        "batching_gain_c64": c64["rps"] / max(c64_unbatched["rps"], 1e-9),
        "c64_503": c64["codes"].get(503, 0), "c64_unbatched_503": c64_unbatched["codes"].get(503, 0),
        "overload_200": over["codes"].get(200, 0), "overload_503": over["codes"].get(503, 0),
        "overload_non_503_errors": over["errors"] + sum(v for k, v in over["codes"].items() if k not in (200, 503)),
        "overload_admitted_p99_ms": _pct(over["lat"], 99),
        "overload_p99_ratio": _pct(over["lat"], 99) / _pct(c1["lat"], 99),
        "overload_server_p99_ms": _pct(over["srv"], 99),
        "overload_server_p99_ratio": _pct(over["srv"], 99) / _pct(c1["srv"], 99),
        "event_to_rec_p50_ms": _pct(ev_ms, 50), "event_to_rec_p99_ms": _pct(ev_ms, 99),
        "item_to_rec_p50_ms": _pct(item_ms, 50), "item_to_rec_p99_ms": _pct(item_ms, 99),
    }
    rows = [("1", c1), ("16", c16), ("64 (batched)", c64), ("64 (batch size 1)", c64_unbatched), ("500", over)]
    table = ["| clients | requests/s | p50 ms | p99 ms | 200 | 503 | other errors | mean batch | ingress ms "
             "| recommender ms | decode ms | served-log ms |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        table.append(f"| {name} | {r['rps']:.1f} | {_pct(r['lat'], 50):.1f} | {_pct(r['lat'], 99):.1f} | "
                     f"{r['codes'].get(200, 0)} | {r['codes'].get(503, 0)} | "
                     f"{r['errors'] + sum(v for k, v in r['codes'].items() if k not in (200, 503))} | "
                     f"{r['parts']['batch_size']:.1f} | {r['parts']['total_ms']:.1f} | "
                     f"{r['parts']['recommender_ms']:.1f} | {r['parts']['decode_ms']:.1f} | {r['parts']['log_ms']:.1f} |")
    return {"config": {"items": n_items, "users": n_users, "level_sizes": level_sizes, "model": model_cfg,
                       "decode": decode, "max_batch_size": 16, "max_inflight": 32, "batch_wait_timeout_s": 0.002, "ray_cpus": 2,
                       "requests_c1": n_c1, "requests_concurrent": n_conc, "freshness_probes": n_fresh},
            "metrics": m, "tables": ["\n".join(table)]}
