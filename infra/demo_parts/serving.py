"""Demo part: the Ray Serve app on the demo broker, closed-loop HTTP traffic, a first A/B report.

Deploys the genrec app (FastAPI ingress + batched recommender) with what the
earlier parts left in ``ctx.state``: the sequence supervisor's shards as the
history source (``sequences``), the trained generator and its item table
(``generator``, ``generator_item_ids``/``generator_item_sids``). Missing parts
are replaced by stand-ins, and the part says which.

Traffic: simulated users of the synthetic world call ``POST /v1/recommend``
over HTTP (several concurrent clients); each served session goes to the
world's ``respond()``, and the events it returns are posted back to
``POST /v1/events`` — the closed loop. The experiment ``decode-ab`` splits
users between greedy and beam-4 decoding. Prints latency, throughput, and
the A/B report read back from Kafka (``served`` + ``user-events``), and
writes its plot to the work directory. Serve is shut down at the end.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from infra.broker import free_port

TITLE = "Serving: Ray Serve HTTP API, closed-loop traffic, first A/B report (greedy vs beam-4)"

EXPERIMENTS = """
default: {model_version: v1, decode: {mode: greedy}}
layers:
  - name: decoding
    salt: demo-decoding
    experiments:
      - name: decode-ab
        control: greedy
        guardrails: [{metric: ctr, max_relative_drop: 0.05}]
        arms:
          - {name: greedy, weight: 1, decode: {mode: greedy}}
          - {name: beam4, weight: 1, decode: {mode: beam, beam_width: 4}}
"""


def _app_args(ctx) -> tuple[dict, list[str]]:
    """Serve arguments from ctx.state (or stand-ins), and notes on what was used."""
    from serving.backend import save_model

    notes = []
    args = {"bootstrap": ctx.kafka.bootstrap, "namespace": ctx.kafka.namespace, "experiments": EXPERIMENTS,
            "admin_token": "demo-admin-token-0123456789", "max_batch_size": 16}
    model = ctx.state.get("generator")
    if model is not None:
        path = ctx.workdir / "serving_v1.pt"
        heads = ctx.state.get("mtp_heads")  # from the fast_decoding part: served beside the model
        save_model(model, str(path), mtp_heads=heads)
        if heads is not None:
            notes.append("MTP heads of the fast_decoding part ship in the model file: the MTP / speculative "
                         "decode modes are servable")
        args["level_sizes"] = list(model.cfg.level_sizes)
        args["models"] = [{"version": "v1", "path": str(path)}]
        args["_seed_catalog"] = ([str(i) for i in ctx.state["generator_item_ids"]],
                                 np.asarray(ctx.state["generator_item_sids"]))
        notes.append(f"model: the trained generator of the generator part ({model.num_parameters():,} parameters)")
    else:
        args["level_sizes"] = [16, 16, 8]
        args["models"] = [{"version": "v1", "seed": 1, "config": {"d_model": 64, "max_history": 30}}]
        notes.append("model: an UNTRAINED stand-in (the generator part did not run) — the A/B shows plumbing only")
    sup = ctx.state.get("sequences")
    if sup is not None and getattr(sup, "shards", None):
        spec = sup.router_spec()  # plain data: the replica finds the shard actors by name
        args.update(history="shards", shard_names=spec["names"], shard_namespace=spec["namespace"],
                    num_partitions=spec["num_partitions"])
        notes.append(f"histories: the {len(sup.shards)} sequence shard actors of the sequences part")
    else:
        notes.append("histories: folded from user-events inside the replica (the sequences part did not run)")
    return args, notes


async def _traffic(ctx, url: str, users: list[str], clients: int, seconds: float) -> dict:
    import httpx

    lat, codes, sessions, posted = [], {}, 0, 0
    rng = np.random.default_rng(7)
    t_world = int(ctx.world.cfg.start_ts_ms + ctx.world.cfg.duration_ms)

    async def client(c):
        nonlocal sessions, posted
        while time.perf_counter() - t0 < seconds:
            user = users[int(rng.integers(len(users)))]
            t = time.perf_counter()
            r = await c.post("/v1/recommend", json={"user_id": user, "k": 5})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code != 200:
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                continue
            lat.append((time.perf_counter() - t) * 1000)
            body = r.json()
            sessions += 1
            evs = ctx.world.respond(user, [x["item_id"] for x in body["items"]], body["request_id"],
                                    t_world + int((time.perf_counter() - t0) * 1000))
            if evs:
                from ingest.contract import to_dict

                rr = await c.post("/v1/events", json={"records": [to_dict(e) for e in evs]})
                posted += rr.json().get("accepted", 0) if rr.status_code == 202 else 0

    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "codes": codes, "sessions": sessions, "events": posted, "wall": wall}


def run(ctx) -> None:
    import httpx
    import ray
    from ray import serve

    from serving.app import build_app
    from serving.serve_args import configs_from_args

    if not ray.is_initialized():
        from serving.direct_ingress import enable

        enable()  # Serve reads it at start: the ingress replica then also answers on its own port
        ray.init(num_cpus=2, include_dashboard=False, namespace="genrec-demo", log_to_driver=False,
                 configure_logging=False)
    args, notes = _app_args(ctx)
    seed = args.pop("_seed_catalog", None)
    settings, rec = configs_from_args(args)
    if seed is not None:
        from dataclasses import replace

        rec = replace(rec, seed_catalog=seed)
    for n in notes:
        ctx.say(n)
    port = free_port()
    from serving.app import QUIET_LOGS

    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET_LOGS)
    try:
        t0 = time.time()
        serve.run(build_app(settings, rec), name="genrec", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        posted_catalog = False
        while True:
            try:
                r = httpx.get(url + "/readyz", timeout=10)
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 200:
                break
            if r is not None and "catalog is empty" in r.text and not posted_catalog:
                from ingest.contract import to_dict

                cat = ctx.world.initial_catalog()
                ctx.say(f"the live catalog is empty (no ingest part): posting the world's {len(cat):,} "
                        "initial items to /v1/items")
                for i in range(0, len(cat), 500):
                    httpx.post(url + "/v1/items", json={"records": [to_dict(e) for e in cat[i:i + 500]]},
                               timeout=60).raise_for_status()
                posted_catalog = True
            if time.time() - t0 > 300:
                raise RuntimeError("the Serve app did not become ready in 300 s")
            time.sleep(0.5)
        from serving.direct_ingress import wait_for_ingress_urls

        direct = wait_for_ingress_urls("genrec", "127.0.0.1", 30)
        if direct:
            ctx.say(f"Serve proxy at {url}; clients use the ingress replica's own port (direct ingress, no proxy hop)")
            url = direct[0]
        ready = httpx.get(url + "/readyz", timeout=10).json()
        ctx.say(f"app ready at {url} in {time.time() - t0:.1f} s: {ready['catalog_items']:,} items in the live "
                f"catalog, models {ready['models']} (OpenAPI at {url}/docs)")

        users = list(ctx.world.user_ids)
        seconds, clients = (25, 8) if ctx.quick else (90, 16)
        ctx.say(f"closed-loop traffic: {clients} HTTP clients for {seconds} s over {len(users):,} users; "
                "every session goes to the world's respond(), its events back to /v1/events")
        res = asyncio.run(_traffic(ctx, url, users, clients, seconds))
        lat = np.asarray(res["lat"] or [np.nan])
        ctx.say(f"  {res['sessions']:,} sessions answered ({res['sessions'] / res['wall']:.1f}/s), "
                f"{res['events']:,} feedback events posted; status codes {res['codes']}")
        ctx.say(f"  /v1/recommend latency: p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms "
                f"(2 shared CPU cores, {clients} concurrent clients)")
        metrics = httpx.get(url + "/metrics", timeout=10).text
        vals = {ln.split()[0]: float(ln.split()[-1]) for ln in metrics.splitlines()
                if ln.startswith(("genrec_batch_size_sum", "genrec_batch_size_count"))}
        if vals.get("genrec_batch_size_count"):
            ctx.say(f"  mean recommender batch size (Prometheus /metrics): "
                    f"{vals['genrec_batch_size_sum'] / vals['genrec_batch_size_count']:.1f}")
        time.sleep(6)  # let the report cache expire so the report sees the last events
        md = httpx.get(url + "/v1/experiments/decode-ab/report", params={"format": "markdown"}, timeout=120)
        ctx.say("\nA/B report (from Kafka: served + user-events):\n" + md.text)
        png = httpx.get(url + "/v1/experiments/decode-ab/report.png", timeout=120)
        if png.status_code == 200:
            path = ctx.workdir / "ab_decode.png"
            path.write_bytes(png.content)
            ctx.say(f"plot: {path}")
    finally:
        serve.shutdown()
        ctx.say("Serve shut down")
