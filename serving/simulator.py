"""The closed-loop simulator: the synthetic world's users request sessions over HTTP and answer with events.

What it does (docs/architecture.md §6, ``genrec simulate``): an open-loop Poisson
process of ``rate`` arrivals a second over ``duration_s`` seconds; each arrival is
one of ``users`` users of :class:`ingest.synthetic.SyntheticWorld`, drawn in
proportion to the world's activity level, who calls ``POST /v1/recommend`` of
the real app (:mod:`serving.app`). The world's :meth:`~ingest.synthetic.SyntheticWorld.respond`
turns each answered session into :class:`~ingest.contract.UserEvent` records
(carrying the answer's ``request_id`` and each item's ``position``), which go
back through the product's ingestion path, by default ``POST /v1/events`` of the
same app — what a real client does: it holds no Kafka credentials, and the
route validates against the event contract and acknowledges each record — or,
with ``events="kafka"``, produced straight to ``user-events`` (a server-side
emitter). The reward joiner (:mod:`actors.reward_joiner`) then joins them with
the ``served`` record into ``rewards``.

Load generation: ``httpx.AsyncClient`` on asyncio (a declared dependency with a
connection pool, per-request timeouts and HTTP/1.1 keep-alive; Locust is not
installed and is closed-loop, aiohttp is only a transitive dependency).

Invariants:

* **Open loop.** Arrival times do not depend on answers. At most
  ``concurrency`` sessions are in flight (a request, then the post of its
  events); an arrival beyond that is not sent
  and is counted as ``skipped`` (never delayed, so a slow server cannot slow the
  offered load down — no coordinated omission). Latency is measured from the
  *scheduled* arrival to the answer.
* **One clock with the joiner.** ``served.ts`` is the server's wall clock
  when it logged the session, before it answered. The world answers in its own
  time (``world_start_ms`` + elapsed, default the end of the world's log, so
  every item exists and tastes are where the log left them); the events are then
  shifted so that the session's start is the simulator's wall clock at the
  moment the answer arrived, which is at or after ``served.ts``. Every event of
  a session therefore lies in ``[served.ts, served.ts + latency + the world's
  in-session offsets]``, inside the joiner's event-time window
  (:mod:`actors.reward_window`) when the window is longer than a session; a
  remote server's clock must agree within the joiner's allowed lateness.
* **Session reward** is what the joiner computes (:mod:`actors.reward_spec`,
  default :class:`~actors.reward_spec.RewardSpec`) from all the events the world
  produced for the session; click rate is clicks per item served.

Paper: the closed-loop users follow RecSim (Ie et al., 2019) and KuaiSim
(Zhao et al., 2023); the model of the users is the world's, not this module's.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterator, Optional

import msgspec
import numpy as np

from actors.reward_spec import RewardSpec, components_of, scalar_reward
from serving.sim_summary import SessionOutcome, SimulationSummary

#: Where events go: ``http`` (POST /v1/events), ``kafka`` (produced to user-events), ``none`` (not sent).
EVENT_PATHS = ("http", "kafka", "none")

#: ``recommend(user_id) -> (status, body or None, headers)``; raises on a timeout or a transport error.
Recommend = Callable[[str], Awaitable[tuple[int, Optional[dict], dict]]]
#: ``send_events(events) -> (acknowledged event ids, rejected count)``; raises when the batch was not taken.
SendEvents = Callable[[list], Awaitable[tuple[list[str], int]]]


@dataclass(frozen=True)
class SimulatorConfig:
    """One simulator run. Errors name the bad value and the fix."""

    url: str                        # base URL of the genrec app, e.g. http://127.0.0.1:8000
    users: int = 100                # simulated users, drawn from the world's users
    rate: float = 5.0               # mean arrivals a second (Poisson)
    duration_s: float = 10.0        # seconds of arrivals
    k: int = 10                     # items per requested session
    concurrency: int = 64           # sessions (request + events post) in flight at most; beyond: skipped
    timeout_s: float = 10.0         # per HTTP request
    events: str = "http"            # EVENT_PATHS
    kafka: object = None            # ingest.kafka_client.KafkaConfig, for events="kafka"
    max_event_batch: int = 500      # records per POST /v1/events (the app's serving.max_batch_records bounds it)
    event_retries: int = 2          # retries of an event batch answered 503 / lost on the wire (event ids dedup)
    seed: int = 0                   # arrivals and user draws
    world_start_ms: Optional[int] = None  # world time of the first arrival; None: the end of the world's log
    exclude_seen: bool = True
    keep_sessions: bool = True      # keep one SessionOutcome per answer (request ids, acked event ids)
    preflight: bool = True          # GET /healthz first: a clear error for a wrong URL before any traffic

    def __post_init__(self) -> None:
        import httpx

        try:
            u = httpx.URL(self.url)
        except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
            raise ValueError(f"SimulatorConfig.url={self.url!r} is not a URL ({e}); give e.g. "
                             "http://127.0.0.1:8000") from None
        if u.scheme not in ("http", "https") or not u.host:
            raise ValueError(f"SimulatorConfig.url={self.url!r} must be an http:// or https:// URL with a host, "
                             "e.g. http://127.0.0.1:8000 (what `genrec serve` prints)")
        for name in ("users", "k", "concurrency", "max_event_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"SimulatorConfig.{name}={v!r} must be a positive integer")
        for name in ("rate", "duration_s", "timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"SimulatorConfig.{name}={v!r} must be a positive number of "
                                 f"{'requests a second' if name == 'rate' else 'seconds'}")
        if self.rate * self.duration_s > 1e8:
            raise ValueError(f"rate × duration = {self.rate * self.duration_s:.3g} arrivals is more than 1e8; "
                             "lower --rate or --duration")
        if self.events not in EVENT_PATHS:
            raise ValueError(f"SimulatorConfig.events={self.events!r} must be one of {EVENT_PATHS}")
        if self.events == "kafka" and self.kafka is None:
            raise ValueError("SimulatorConfig.events='kafka' needs kafka (a KafkaConfig: --bootstrap host:port), "
                             "or use events='http' (POST /v1/events, what a client does)")
        if self.event_retries < 0:
            raise ValueError(f"SimulatorConfig.event_retries={self.event_retries} must be >= 0")
        if self.world_start_ms is not None and self.world_start_ms < 0:
            raise ValueError(f"SimulatorConfig.world_start_ms={self.world_start_ms} must be >= 0 (ms since epoch)")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


# ---- arrivals and users (pure) ----------------------------------------------------------------

def poisson_arrivals(rate: float, duration_s: float, rng: np.random.Generator) -> Iterator[float]:
    """Arrival offsets (s, increasing, < ``duration_s``) of a Poisson process of ``rate`` per second:
    exponential gaps of mean ``1/rate``, drawn lazily in blocks (an hour at a high rate is never a list)."""
    t, block = 0.0, max(16, min(65_536, int(rate * min(duration_s, 10.0)) + 1))
    while True:
        gaps = rng.exponential(1.0 / rate, size=block)
        for g in gaps.tolist():
            t += g
            if t >= duration_s:
                return
            yield t


class UserDraw:
    """``users`` of the world's users (a seeded sample without replacement), drawn per arrival in
    proportion to the world's activity level (:attr:`~ingest.synthetic.SyntheticWorld.user_activity`)."""

    def __init__(self, world, users: int, rng: np.random.Generator):
        n = len(world.user_ids)
        if users > n:
            raise ValueError(f"--users {users} is more than the world's {n} users; lower --users or make a larger "
                             f"world (world.n_users in genrec.yaml, GENREC_WORLD__N_USERS={users})")
        self.index = np.sort(rng.choice(n, size=users, replace=False))      # [users]
        self.user_ids = [world.user_ids[i] for i in self.index.tolist()]
        act = np.asarray(world.user_activity, dtype=np.float64)[self.index]  # [users]
        self.p = act / act.sum()
        self._cdf = np.cumsum(self.p)
        self.rng = rng

    def draw(self) -> str:
        j = int(np.searchsorted(self._cdf, self.rng.random() * self._cdf[-1], side="right"))
        return self.user_ids[min(j, len(self.user_ids) - 1)]


# ---- transports (HTTP, Kafka) -----------------------------------------------------------------

def http_recommend(client, cfg: SimulatorConfig) -> Recommend:
    """``POST /v1/recommend`` on ``client`` (an ``httpx.AsyncClient`` on the app's base URL)."""
    ctx = {"client": "genrec-simulate"}

    async def call(user_id: str):
        r = await client.post("/v1/recommend", json={"user_id": user_id, "k": cfg.k,
                                                     "exclude_seen": cfg.exclude_seen, "context": ctx})
        body = r.json() if r.status_code == 200 else None
        return r.status_code, body, r.headers

    return call


_ENC = msgspec.json.Encoder()


def http_send_events(client, cfg: SimulatorConfig) -> SendEvents:
    """``POST /v1/events`` in batches of ``max_event_batch``; a 503 or a lost request is retried (up to
    ``event_retries``, after the answer's Retry-After, at most 1 s): consumers dedup by event id, so a
    retried batch that had landed is harmless. Returns the ids the app acknowledged (202) and the count
    it rejected (422 per record)."""
    import httpx

    async def send(events: list) -> tuple[list[str], int]:
        acked, rejected = [], 0
        for i in range(0, len(events), cfg.max_event_batch):
            chunk = events[i:i + cfg.max_event_batch]
            payload = _ENC.encode({"records": chunk})   # structs omit their defaults: the contract's wire form
            for attempt in range(cfg.event_retries + 1):
                try:
                    r = await client.post("/v1/events", content=payload,
                                          headers={"content-type": "application/json"})
                except httpx.TransportError:
                    if attempt == cfg.event_retries:
                        raise
                    await asyncio.sleep(0.2)
                    continue
                if r.status_code == 503 and attempt < cfg.event_retries:
                    await asyncio.sleep(min(1.0, float(r.headers.get("retry-after", 1) or 1)))
                    continue
                if r.status_code not in (202, 422):
                    raise RuntimeError(f"POST /v1/events answered {r.status_code}: {r.text[:200]}")
                body = r.json()
                bad = {e["index"] for e in body.get("errors", [])}
                acked += [e.event_id for j, e in enumerate(chunk) if j not in bad]
                rejected += len(bad)
                break
        return acked, rejected

    return send


class KafkaEvents:
    """Events produced to ``user-events`` (keyed by user, acks=all) by one producer; each batch awaits its
    own acknowledgements."""

    def __init__(self, kafka, timeout_s: float):
        from ingest.producer import EventProducer, ProducerConfig

        self.producer = EventProducer(kafka, ProducerConfig(linger_ms=1))
        self.timeout_s = timeout_s

    async def __call__(self, events: list) -> tuple[list[str], int]:
        from serving.recommend_path import await_kafka

        futs = [self.producer.send(e) for e in events]
        await asyncio.gather(*(await_kafka(f, self.timeout_s) for f in futs))
        return [e.event_id for e in events], 0

    def close(self) -> None:
        self.producer.close()


# ---- the engine -------------------------------------------------------------------------------

class _Clock:
    """World time for :meth:`respond` and the shift that puts its events on the wall clock."""

    def __init__(self, world, world_start_ms: int | None):
        c = world.cfg
        self.world0 = int(c.start_ts_ms + c.duration_ms) if world_start_ms is None else int(world_start_ms)
        self.wall0 = int(time.time() * 1000)

    def now(self) -> tuple[int, int]:
        """``(wall ms now, world ms now)``."""
        wall = int(time.time() * 1000)
        return wall, self.world0 + (wall - self.wall0)


def _on_wall_clock(events: list, shift_ms: int) -> list:
    if not shift_ms:
        return events
    return [msgspec.structs.replace(e, ts=e.ts + shift_ms) for e in events]


def session_reward(n_items: int, events: list, spec: RewardSpec) -> tuple[float, int]:
    """``(scalar reward, clicks)`` of one session as the reward joiner scores it (:mod:`actors.reward_spec`)."""
    comp = components_of(n_items, events)
    return scalar_reward(spec, comp), int(comp["clicks"])


async def simulate(cfg: SimulatorConfig, world, *, recommend: Recommend | None = None,
                   send_events: SendEvents | None = None, progress: bool = False,
                   reward_spec: RewardSpec = RewardSpec(), stop=None) -> SimulationSummary:
    """Run ``cfg`` against the app (asyncio); ``recommend`` / ``send_events`` replace the HTTP / Kafka
    transports (an in-process caller); ``stop`` (a ``threading.Event``) ends the arrivals early, e.g. from
    another thread of a chaos run. Raises ``ConnectionError`` when the app cannot be reached."""
    import httpx

    rng = np.random.default_rng([cfg.seed, 17])
    draw = UserDraw(world, cfg.users, rng)
    summary = SimulationSummary(config={"url": cfg.base_url, "users": cfg.users, "rate": cfg.rate,
                                        "duration_s": cfg.duration_s, "k": cfg.k, "concurrency": cfg.concurrency,
                                        "timeout_s": cfg.timeout_s, "events": cfg.events, "seed": cfg.seed},
                                keep_sessions=cfg.keep_sessions)
    limits = httpx.Limits(max_connections=cfg.concurrency + 8, max_keepalive_connections=cfg.concurrency + 8)
    kafka_sender = None
    async with httpx.AsyncClient(base_url=cfg.base_url, timeout=cfg.timeout_s, limits=limits) as client:
        if cfg.preflight and recommend is None:
            await _preflight(client, cfg)
        rec = recommend or http_recommend(client, cfg)
        if send_events is None and cfg.events == "http":
            send_events = http_send_events(client, cfg)
        elif send_events is None and cfg.events == "kafka":
            kafka_sender = send_events = KafkaEvents(cfg.kafka, cfg.timeout_s)
        clock = _Clock(world, cfg.world_start_ms)
        world_items = frozenset(world.item_ids)
        inflight: set[asyncio.Task] = set()

        async def session(user: str, scheduled: float) -> None:
            try:
                status, body, _ = await rec(user)
            except asyncio.CancelledError:
                summary.no_answer("cancelled at the end")
                raise
            except httpx.TimeoutException:
                summary.no_answer("timeout")
                return
            except (httpx.TransportError, OSError) as e:
                summary.no_answer(type(e).__name__)
                return
            except Exception as e:  # noqa: BLE001 - a bad answer body is counted, never fatal to the run
                summary.no_answer(f"bad answer ({type(e).__name__})")
                return
            latency_ms = (time.perf_counter() - scheduled) * 1e3
            summary.answered(status, latency_ms)
            if status != 200:
                return
            try:
                rid, items = body["request_id"], [x["item_id"] for x in body["items"]]
                arm = f"{body.get('experiment', '')}/{body.get('arm', '')}"
                version = body.get("model_version", "")
            except (KeyError, TypeError) as e:
                summary.client_errors[f"bad 200 body ({type(e).__name__}: {e})"[:200]] += 1
                return
            wall, world_ts = clock.now()
            try:
                events = _on_wall_clock(world.respond(user, items, rid, world_ts), wall - world_ts)
            except Exception as e:  # noqa: BLE001 - a world that cannot answer this session: counted, run goes on
                summary.client_errors[f"respond ({type(e).__name__}: {e})"[:200]] += 1
                return
            reward, clicks = session_reward(len(items), events, reward_spec)
            known = sum(1 for i in items if i in world_items)
            outcome = SessionOutcome(request_id=rid, user_id=user, arm=arm, model_version=version,
                                     items=len(items), unknown_items=len(items) - known, events=len(events),
                                     clicks=clicks, reward=reward, ts=wall)
            if events and send_events is not None:
                t = time.perf_counter()
                try:
                    acked, rejected = await send_events(events)
                except asyncio.CancelledError:
                    summary.events_failed(len(events), "cancelled at the end")
                    summary.session(outcome)
                    raise
                except Exception as e:  # noqa: BLE001 - counted per kind; the run goes on
                    summary.events_failed(len(events), type(e).__name__)
                else:
                    outcome.acked_event_ids = acked
                    summary.events_sent(len(acked), rejected, (time.perf_counter() - t) * 1e3)
            summary.session(outcome)

        bar = _progress(cfg, summary) if progress else None
        t0 = time.perf_counter()
        try:
            for offset in poisson_arrivals(cfg.rate, cfg.duration_s, rng):
                due = t0 + offset
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                if stop is not None and stop.is_set():
                    break
                summary.arrivals += 1
                if len(inflight) >= cfg.concurrency:
                    summary.skipped += 1
                    continue
                summary.sent += 1
                task = asyncio.create_task(session(draw.draw(), due))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                if bar is not None:
                    bar.tick(time.perf_counter() - t0, len(inflight))
            if inflight:  # each request is bounded by its timeout; event posts by theirs and their retries
                await asyncio.wait(set(inflight), timeout=cfg.timeout_s * (cfg.event_retries + 2) + 1)
            late = list(inflight)
            for task in late:   # beyond every bound: cancelled and counted (in session()), not awaited forever
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        finally:
            summary.wall_s = time.perf_counter() - t0
            if bar is not None:
                bar.close(summary.wall_s, len(inflight))
            if kafka_sender is not None:
                kafka_sender.close()
    return summary


async def _preflight(client, cfg: SimulatorConfig) -> None:
    """``GET /healthz``: a wrong URL fails here with what to check, before the first arrival."""
    import httpx

    try:
        r = await client.get("/healthz", timeout=min(cfg.timeout_s, 5.0))
    except httpx.TransportError as e:
        raise ConnectionError(f"cannot reach the genrec app at {cfg.base_url} ({type(e).__name__}: {e}); "
                              "is `genrec serve` running, and is this the URL it printed?") from None
    if r.status_code != 200:
        raise ConnectionError(f"{cfg.base_url}/healthz answered {r.status_code}: this does not look like a "
                              "genrec app (give the base URL `genrec serve` printed, without /v1)")


class _progress:
    """A tqdm line over the run's seconds: sent, answered 200, skipped, in flight, p50 latency."""

    def __init__(self, cfg: SimulatorConfig, summary: SimulationSummary):
        from tqdm import tqdm

        self.summary, self.last = summary, 0.0
        self.bar = tqdm(total=round(cfg.duration_s, 1), unit="s", desc="simulate", leave=True,
                        bar_format="{desc} {bar} {n:.0f}/{total:.0f}s {postfix}", mininterval=0.5)

    def tick(self, elapsed: float, inflight: int) -> None:
        if elapsed - self.last < 0.5:
            return
        s = self.summary
        self.bar.update(round(elapsed - self.bar.n, 1))
        self.bar.set_postfix_str(f"sent {s.sent} ok {s.status.get(200, 0)} skipped {s.skipped} "
                                 f"in flight {inflight} p50 {s.latency_p(50):.0f} ms", refresh=False)
        self.last = elapsed

    def close(self, elapsed: float, inflight: int) -> None:
        self.last = -1.0
        self.tick(min(elapsed, self.bar.total), inflight)
        self.bar.close()


def run_simulation(cfg: SimulatorConfig, world, *, recommend: Recommend | None = None,
                   send_events: SendEvents | None = None, progress: bool = False,
                   reward_spec: RewardSpec = RewardSpec(), stop=None) -> SimulationSummary:
    """:func:`simulate` from synchronous code (its own event loop)."""
    return asyncio.run(simulate(cfg, world, recommend=recommend, send_events=send_events, progress=progress,
                                reward_spec=reward_spec, stop=stop))
