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
users between greedy and beam-4 decoding. Reward joiners (Ray actors, a
short event-time window) run beside the traffic and write one record per
session to ``rewards``; after the traffic a trickle of it keeps event time
moving until the windows closed. Prints latency, throughput, and the A/B
report from the ``rewards`` topic (``served`` + ``user-events`` when it holds
none), and writes its plot to the work directory. Serve stays up for the next part
(``ctx.state["serve_app"]``: URL, admin token, registry); the demo's teardown shuts it down.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import numpy as np

from infra.broker import free_port

TITLE = "Serving: Ray Serve HTTP API, closed-loop traffic, reward joiners, A/B report (greedy vs beam-4)"

#: Event-time feedback window and allowed lateness of the demo's reward joiners (seconds): the world's
#: events of a session come within 2 s per list position, so 10 s covers the 5 slots the clients ask for.
REWARD_WINDOW_S, REWARD_LATENESS_S = 10.0, 2.0
#: Longest wait after the traffic for the windows of its sessions to close.
REWARD_WAIT_S = 60.0

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
    """The app's sections (serving.application.AppArgs) from ctx.state (or stand-ins), and notes on what was used."""
    from actors.model_registry import ModelRegistry
    from models.generator.checkpoint import GeneratorBundle

    notes = []
    rec: dict = {"max_batch_size": 16}
    args = {"kafka": {"bootstrap": ctx.kafka.bootstrap, "namespace": ctx.kafka.namespace},
            "serving": {"experiments": EXPERIMENTS, "admin_token": secrets.token_urlsafe(24)},  # unused here
            "recommender": rec}
    model = ctx.state.get("generator")
    if model is not None:
        registry = ModelRegistry(str(ctx.workdir / "registry"))
        heads = ctx.state.get("mtp_heads")  # from the fast_decoding part: served beside the model
        ids, sids = ctx.state.get("generator_item_ids"), ctx.state.get("generator_item_sids")
        # with its catalog (item ids in the model's order, SIDs): what the aligner and the gate read
        registry.publish("v1", GeneratorBundle(model, heads, tuple(str(i) for i in ids or ()),
                                               None if sids is None else np.asarray(sids)))
        registry.promote("v1", require_verdict=False)   # the demo's first version: nothing to gate it against
        if heads is not None:
            notes.append("MTP heads of the fast_decoding part ship with the registry version: the MTP / "
                         "speculative decode modes are servable")
        rec["level_sizes"] = list(model.cfg.level_sizes)
        rec["registry"] = registry.uri
        rec["models"] = []      # the registry's promoted version, as genrec serve does
        args["_seed_catalog"] = ([str(i) for i in ctx.state["generator_item_ids"]],
                                 np.asarray(ctx.state["generator_item_sids"]))
        notes.append(f"model: the trained generator of the generator part ({model.num_parameters():,} parameters)")
    else:
        rec["level_sizes"] = [16, 16, 8]
        rec["models"] = [{"version": "v1", "seed": 1, "config": {"d_model": 64, "max_history": 30}}]
        notes.append("model: an UNTRAINED stand-in (the generator part did not run) — the A/B shows plumbing only")
    sup = ctx.state.get("sequences")
    if sup is not None and getattr(sup, "shards", None):
        spec = sup.router_spec()  # plain data: the replica finds the shard actors by name
        rec.update(history="shards", shard_names=spec["names"], shard_namespace=spec["namespace"],
                   num_partitions=spec["num_partitions"])
        notes.append(f"histories: the {len(sup.shards)} sequence shard actors of the sequences part")
    else:
        notes.append("histories: folded from user-events inside the replica (the sequences part did not run)")
    return args, notes


async def _traffic(ctx, url: str, users: list[str], clients: int, seconds: float,
                   stop: threading.Event | None = None) -> dict:
    """Closed-loop sessions for ``seconds`` (or until ``stop``). The world answers in its own time; its
    events are shifted onto the wall clock, the time ``served`` records carry, so the joiners' windows fit."""
    import httpx
    import msgspec

    lat, codes, sessions, posted = [], {}, 0, 0
    rng = np.random.default_rng(7)
    t_world = int(ctx.world.cfg.start_ts_ms + ctx.world.cfg.duration_ms)

    async def client(c):
        nonlocal sessions, posted
        while time.perf_counter() - t0 < seconds and not (stop is not None and stop.is_set()):
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
            ts = t_world + int((time.perf_counter() - t0) * 1000)
            evs = ctx.world.respond(user, [x["item_id"] for x in body["items"]], body["request_id"], ts)
            if evs:
                from ingest.contract import to_dict

                shift = int(time.time() * 1000) - ts
                evs = [msgspec.structs.replace(e, ts=e.ts + shift) for e in evs]
                rr = await c.post("/v1/events", json={"records": [to_dict(e) for e in evs]})
                posted += rr.json().get("accepted", 0) if rr.status_code == 202 else 0

    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "codes": codes, "sessions": sessions, "events": posted, "wall": wall}


def start_reward_joiners(ctx):
    """Reward joiners on the demo's Ray over ``served`` + ``user-events`` (checkpoints in the work directory)."""
    from actors.reward_joiner import RewardJoinerConfig
    from actors.reward_supervisor import RewardSupervisor

    cfg = RewardJoinerConfig(window_s=REWARD_WINDOW_S, allowed_lateness_s=REWARD_LATENESS_S,
                             checkpoint_uri=str(ctx.workdir / "rewards"), idle_partition_s=3.0,
                             num_joiners=2, num_cpus=0.1)
    sup = RewardSupervisor(ctx.kafka, cfg).start()
    try:
        sup.wait_ready()
    except BaseException:
        sup.shutdown(checkpoint=False)
        raise
    ctx.say(f"{len(sup.joiners)} reward joiners over {sup.num_partitions} partitions of served + user-events -> "
            f"rewards (event-time window {cfg.window_s:g} s, lateness {cfg.allowed_lateness_s:g} s)")
    return sup


def wait_for_windows(ctx, sup, url: str, users: list[str], end_ms: int) -> bool:
    """Trickle traffic (one client) until every joiner's watermark passed ``end_ms`` + window, at most
    :data:`REWARD_WAIT_S`: event time only moves with records, so the last sessions close on newer ones."""
    target = end_ms + int(REWARD_WINDOW_S * 1000)
    ctx.say(f"waiting up to {REWARD_WAIT_S:g} s for the reward windows of the traffic's sessions to close "
            "(one client keeps event time moving)...")
    stop = threading.Event()
    trickle = threading.Thread(target=lambda: asyncio.run(_traffic(ctx, url, users, 1, REWARD_WAIT_S, stop)),
                               name="demo-trickle", daemon=True)
    t0 = time.monotonic()
    trickle.start()
    closed = False
    try:
        while time.monotonic() - t0 < REWARD_WAIT_S:
            marks = [r.get("watermark") for r in sup.status()["joiners"]]
            if marks and all(m is not None and m > target for m in marks):
                closed = True
                break
            time.sleep(1.0)
    finally:
        stop.set()
        trickle.join(timeout=130)
    ctx.say(f"  windows closed after {time.monotonic() - t0:.0f} s" if closed else
            f"  windows still open after {REWARD_WAIT_S:g} s: the rewards cover the sessions closed so far")
    return closed


def _reward_summary(ctx, experiment: str) -> int:
    """Print how many reward records (and distinct sessions) ``experiment`` has on ``rewards``; return it."""
    from serving.experiments.report import read_rewards_kafka, rewards_of

    everything = read_rewards_kafka(ctx.kafka)
    mine = rewards_of(experiment, everything)
    sessions = {r.request_id for r in mine}
    with_feedback = sum(1 for r in mine if r.components.get("events", 0) > 0)
    ctx.say(f"  rewards topic: {len(everything):,} reward records, {len(mine):,} of {experiment} over "
            f"{len(sessions):,} sessions ({with_feedback:,} with feedback)")
    if not mine:
        ctx.say(f"  no reward records of {experiment}: the report falls back to served + user-events")
    return len(mine)


def print_report(ctx, url: str, experiment: str, title: str, png_name: str) -> None:
    """The app's A/B report of ``experiment`` (markdown) and its plot, saved as ``png_name`` in the work dir."""
    import httpx

    n_rewards = _reward_summary(ctx, experiment)
    time.sleep(6)  # let the report cache expire so the report sees the last records
    md = httpx.get(url + f"/v1/experiments/{experiment}/report", params={"format": "markdown"}, timeout=120)
    src = "the rewards topic" if n_rewards else "served + user-events (no reward records)"
    ctx.say(f"\n{title} (from Kafka: {src}):\n" + md.text)
    png = httpx.get(url + f"/v1/experiments/{experiment}/report.png", timeout=120)
    if png.status_code == 200:
        path = ctx.workdir / png_name
        path.write_bytes(png.content)
        ctx.say(f"plot: {path}")


def run(ctx) -> None:
    import httpx
    import ray
    from ray import serve

    from serving.application import AppArgs, QUIET_LOGS, build_app, load_configs

    if not ray.is_initialized():
        from infra.ray_auth import prepare_ray_auth
        from serving.direct_ingress import enable

        prepare_ray_auth(None)   # a local Ray: token auth unless RAY_AUTH_MODE=disabled is set
        enable()  # Serve reads it at start: the ingress replica then also answers on its own port
        ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="genrec-demo", log_to_driver=False,
                 configure_logging=False)
    args, notes = _app_args(ctx)
    seed = args.pop("_seed_catalog", None)
    settings, rec = load_configs(AppArgs.model_validate(args))
    if seed is not None:
        from dataclasses import replace

        rec = replace(rec, seed_catalog=seed)
    for n in notes:
        ctx.say(n)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=QUIET_LOGS)
    app = ServeApp(f"http://127.0.0.1:{port}", args["serving"]["admin_token"], rec.registry or "")
    ctx.state["serve_app"] = app   # the alignment part serves on it; the demo's teardown shuts it down
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
        app.url = url
        ready = httpx.get(url + "/readyz", timeout=10).json()
        ctx.say(f"app ready at {url} in {time.time() - t0:.1f} s: {ready['catalog_items']:,} items in the live "
                f"catalog, models {ready['models']} (OpenAPI at {url}/docs)")

        users = list(ctx.world.user_ids)
        sup = start_reward_joiners(ctx)
        seconds, clients = (25, 8) if ctx.quick else (90, 16)
        ctx.say(f"closed-loop traffic: {clients} HTTP clients for {seconds} s over {len(users):,} users; "
                "every session goes to the world's respond(), its events back to /v1/events")
        try:
            res = asyncio.run(_traffic(ctx, url, users, clients, seconds))
            end_ms = int(time.time() * 1000)
        except BaseException:
            sup.shutdown(checkpoint=False)
            raise
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
        try:
            wait_for_windows(ctx, sup, url, users, end_ms)
            from actors.reward_supervisor import format_status

            ctx.say("  " + format_status(sup.status()).splitlines()[-1])
        finally:
            sup.shutdown()
            ctx.say("  reward joiners stopped (final checkpoints written)")
        print_report(ctx, url, "decode-ab", "A/B report", "ab_decode.png")
    except BaseException:
        app.shutdown()
        raise
    ctx.say("Serve stays up for the next part (shut down at the end of the demo)")


class ServeApp:
    """The running Serve app of this part, for later parts: its URL, admin token and model registry."""

    def __init__(self, url: str, admin_token: str, registry: str):
        self.url, self.admin_token, self.registry = url, admin_token, registry
        self.up = True

    def shutdown(self) -> None:
        if self.up:
            from ray import serve

            self.up = False
            serve.shutdown()
            print("Serve shut down", flush=True)
