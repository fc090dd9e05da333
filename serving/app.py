"""The HTTP API: a FastAPI ingress deployment with (or in front of) the recommender (Ray Serve).

Routes (all under ``/v1`` except the probes; every one is in the OpenAPI schema with examples):

* ``POST /v1/recommend`` — resolve the user's experiment arms, generate a session
  through the recommender deployment, write the ``served`` record, answer.
* ``POST /v1/events`` / ``POST /v1/items`` — validate a batch with the event
  contract (:func:`ingest.codec.decode_dict`), write the valid records to
  Kafka, answer 202 with counts and a reason per invalid record.
* ``GET /v1/experiments``, ``GET /v1/experiments/{name}/report`` (+ ``.png``).
* ``POST /v1/admin/...`` — reload experiments, promote / roll back the default
  model version, load a model version; bearer token from config.
* ``/healthz`` (process up), ``/readyz`` (recommender answers, catalog not empty),
  ``/metrics`` (Prometheus, :mod:`serving.metrics`).

Exposure logging (the ``served`` topic). The ingress writes the record after
the recommender answered and *waits for the broker's ack before it answers
the client* (:class:`serving.recommend_path.RecommendPath`: one linger-0
producer, each answer awaits its own ack). If the recommender fails (replica killed, back-pressure) there is
no result, no record and the client gets 503; if the write fails the client
gets 503 too. So no client sees a session without its ``served`` record, and a
record never exists for a request the recommender did not answer. (A record
*can* exist for a response lost on the wire after the ack — the one window no
server can close; the reward joiner treats such a session as one without
feedback.) In the colocated topology the recommender dies with the ingress: its in-flight
requests get no answer (the proxy answers 500, a direct client sees the connection drop), and
for a request killed between its ack and its response that same window applies.

Overload: the ingress admits at most ``max_inflight`` recommend requests (by
default what the recommender decodes at once: its rows with continuous
batching, two static batches without; :func:`serving.recommender.default_max_inflight`;
optionally an adaptive AIMD limit that keeps admitted latency near
``latency_target_ms``); beyond that it answers ``503`` (admitted requests keep
their latency instead of everybody queueing), with an adaptive, jittered
``Retry-After`` (:mod:`serving.admission`) and after a random sub-second delay,
so that clients rejected together do not come back together; that
503 comes from :class:`RecommendGate`, before FastAPI routes, reads or
validates the body. The recommender's ``max_queued_requests`` back-pressure
maps to the same answer, and beyond ``max_inflight + ingress_slack`` (+ a
short queue) Serve itself sheds with 503 + ``Retry-After: shed_retry_after_s``
(in the proxy, or with direct ingress in the replica's own server).
With static batches an admitted request waits for the batch that is running when
it arrives, then runs in the next one: about two batch decodes. With continuous
batching (the default in the colocated topology, :mod:`serving.session_streams`) it
joins the running rows at the next item boundary and costs one decode at the
running size (``serving.recommender.DEFAULT_MAX_BATCH`` rows). BENCHMARKS.md,
``serving``, runs the overload phase at several sizes and limits, static and continuous.

Topology (:data:`TOPOLOGIES`, ``AppSettings.topology``). ``colocated`` (default): every
ingress replica builds its own recommender (the :class:`serving.recommender.Recommender`
class in a child process of the replica, :mod:`serving.decode_process`, behind
:class:`serving.local_handle.LocalHandle`), so ``/recommend`` never leaves the replica that
parsed it, and decoding does not share a GIL with the HTTP server (``batching: worker`` keeps
it in the replica's own process). ``split``: the FastAPI ingress deployment calls a
separate batching recommender deployment through a Serve handle over Serve's gRPC transport
(``rec_transport``); the two scale apart. Measured on the 2-core dev machine (trivial
deployments, one script): the handle hop alone costs 3.4 ms over gRPC and 5.2 ms over Ray
actor calls, against the 5 ms budget of HTTP + Serve overhead; a one-deployment app answers
a trivial POST in 1.9 ms. The ``serving`` benchmark measures both topologies in one run.

Measured before (BENCHMARKS.md, ``serving``): clients talk to the ingress replica's own port
(Serve direct ingress, :mod:`serving.direct_ingress`), which took the HTTP + Serve overhead at
concurrency 1 from 44 ms (through the Serve proxy, same run) to 23 ms in the split topology;
Ray's workers start at nice 15 and a serving cluster started here runs them at nice 0
(same module), without which every replica got a few percent of a core beside other work.
"""


import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any, Optional

import msgspec
from fastapi import FastAPI, Header, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from ingest.codec import ContractError, decode_dict
from ingest.contract import ITEM_EVENTS, USER_EVENTS
from serving.admission import AdaptiveRetryAfter, RetryAfterConfig
from serving.backend import ModelSpec, RecRequest, RecResult
from serving.experiments import ExperimentRegistry
from serving.loop_lag import ONE_LOOP_ENV, LoopLagProbe, tune_replica_process
from serving.metrics import CONTENT_TYPE, ServingMetrics
from serving.recommend_path import RecommendPath, ServedLog, Unavailable, await_kafka

log = logging.getLogger(__name__)
_REJECT_JSON = msgspec.json.Encoder()

MAX_BATCH_RECORDS = 1000


#: ``colocated``: every ingress replica holds its own recommender (model, catalog, history feed,
#: ``@serve.batch``): a /recommend never leaves the process that parsed it. ``split``: a FastAPI
#: ingress deployment calls a separate batching recommender deployment through a Serve handle, so
#: the two scale apart (e.g. CPU ingress replicas in front of GPU recommender replicas) at the cost
#: of one inter-process hop per request (measured: :mod:`serving.local_handle`).
TOPOLOGIES = {"colocated", "split"}


@dataclass(frozen=True)
class AppSettings:
    """Ingress settings (frozen, validated).

    ``experiments``: YAML text or a path to the experiments file.
    ``admin_token``: bearer token of the admin routes; ``None`` disables them.
    ``max_inflight``: admitted concurrent /recommend per ingress replica before 503.
    ``latency_target_ms``: when set, the admission limit adapts (AIMD) so that
    admitted requests stay near this latency; ``None`` keeps ``max_inflight`` fixed.
    ``ingress_slack`` / ``ingress_queue``: the ingress deployment takes ``max_inflight + ingress_slack``
    concurrent requests (other routes, fast 503s) and the Serve proxy queues ``ingress_queue`` more;
    beyond that the proxy itself answers 503 + ``Retry-After: shed_retry_after_s``. The ingress's own 503s carry an adaptive,
    jittered Retry-After in ``[retry_after_s, max_retry_after_s]`` (:mod:`serving.admission`), and each is
    answered after a uniform random delay in ``[0, reject_spread_s)`` so that a herd of clients rejected
    together does not return together (0 answers at once).
    """

    kafka: object                      # ingest.kafka_client.KafkaConfig
    experiments: str = ""
    admin_token: str | None = None
    max_inflight: int = 64
    latency_target_ms: float | None = None
    retry_after_s: int = 1
    produce_timeout_s: float = 10.0
    recommend_timeout_s: float = 30.0
    report_cache_s: float = 5.0
    max_k: int = 100
    num_replicas: int = 1
    ingress_slack: int = 1024
    shed_retry_after_s: int = 5
    ingress_queue: int = 64
    max_retry_after_s: int = 30
    reject_spread_s: float = 1.0
    topology: str = "colocated"
    rec_transport: str = "grpc"

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"AppSettings.topology={self.topology!r}: use one of {sorted(TOPOLOGIES)}")
        if self.rec_transport not in ("grpc", "ray"):
            raise ValueError(f"AppSettings.rec_transport={self.rec_transport!r}: use 'grpc' or 'ray'")
        if self.max_inflight < 1:
            raise ValueError(f"AppSettings.max_inflight={self.max_inflight} must be >= 1")
        if self.latency_target_ms is not None and self.latency_target_ms <= 0:
            raise ValueError(f"AppSettings.latency_target_ms={self.latency_target_ms} must be > 0 (or None: off)")
        if not 0 <= self.reject_spread_s <= 10:
            raise ValueError(f"AppSettings.reject_spread_s={self.reject_spread_s} must be in [0, 10] seconds "
                             "(0: answer 503s at once)")
        if self.retry_after_s < 1:
            raise ValueError(f"AppSettings.retry_after_s={self.retry_after_s} must be >= 1 second")
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise ValueError("AppSettings.admin_token must be at least 16 characters (or None to disable admin)")
        if self.shed_retry_after_s < 1 or self.max_retry_after_s < self.retry_after_s:
            raise ValueError(f"AppSettings: shed_retry_after_s={self.shed_retry_after_s} must be >= 1 and "
                             f"max_retry_after_s={self.max_retry_after_s} >= retry_after_s={self.retry_after_s}")
        if self.ingress_slack < 1 or self.ingress_queue < 1:
            raise ValueError(f"AppSettings.ingress_slack={self.ingress_slack} and ingress_queue={self.ingress_queue} "
                             "must be >= 1 (extra ingress concurrency / proxy queue beyond max_inflight)")
        if not 1 <= self.max_k <= 1000:
            raise ValueError(f"AppSettings.max_k={self.max_k} must be in 1..1000")


# ---- request / response schemas --------------------------------------------------------------

#: The contract's id rule (ingest.contract: no character for which Python's str.isspace() is true).
#: pydantic's regex engine has Unicode White_Space for \s, which lacks \x1c-\x1f; add them so an id
#: accepted here is never rejected by the contract (and dead-lettered) downstream.
ID_PATTERN = r"^[^\s\x1c-\x1f]+$"
UserId = Field(min_length=1, max_length=128, pattern=ID_PATTERN, description="the user to recommend for")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"user_id": "u42", "k": 5, "exclude_seen": True, "context": {"surface": "home"}}]})
    user_id: str = UserId
    k: int = Field(10, ge=1, le=1000, description="session length (items to generate)")
    exclude_seen: bool = Field(True, description="never recommend an item the user already interacted with")
    context: Optional[dict[str, Optional[str | int | float | bool]]] = Field(
        None, max_length=32, description="free-form request context (logged, not used for bucketing)")


class RecItem(BaseModel):
    item_id: str
    sid: list[int]
    score: float


class RecommendResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "4f1c0a9e2b7d4c18a5e3f0b6d9c2e71a", "model_version": "v1", "experiment": "decode-ab",
        "arm": "beam", "items": [{"item_id": "i17", "sid": [3, 0, 1], "score": -1.2}],
        "timings": {"total_ms": 12.5, "recommender_ms": 9.1, "log_ms": 1.2}}]})
    request_id: str
    items: list[RecItem]
    model_version: str
    experiment: str
    arm: str
    timings: dict[str, float]


class RecordBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    records: list[Any] = Field(..., max_length=MAX_BATCH_RECORDS,
                               description=f"up to {MAX_BATCH_RECORDS} records of the event contract")


class EventsBatch(RecordBatch):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"records": [
        {"event_id": "e1", "user_id": "u42", "item_id": "i17", "type": "click", "ts": 1764000000000},
        {"event_id": "e2", "user_id": "u42", "item_id": "i17", "type": "watch", "ts": 1764000005000,
         "watch_ms": 5000, "request_id": "4f1c0a9e2b7d4c18a5e3f0b6d9c2e71a"}]}]})


class ItemsBatch(RecordBatch):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"records": [
        {"item_id": "i900", "ts": 1764000000000, "op": "upsert", "title": "Night trains of Europe",
         "tags": ["travel", "rail"]}]}]})


class RecordError(BaseModel):
    index: int
    reason: str


class Accepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"accepted": 1, "rejected": 1, "errors": [{"index": 1, "reason": "invalid record: Expected `int`, "
                                                                           "got `str` - at `$.ts`"}]}]})
    accepted: int
    rejected: int
    errors: list[RecordError]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"yaml": None}]})
    yaml: Optional[str] = Field(None, max_length=1_000_000,
                                description="new experiments YAML; omitted: re-read the configured file")


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model_version": "v2"}]})
    model_version: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)


class AdmissionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"max_inflight": 32, "latency_target_ms": 500}]})
    max_inflight: Optional[int] = Field(None, ge=1, le=100_000)
    latency_target_ms: Optional[float] = Field(None, gt=0, le=600_000,
                                               description="adaptive limit target; 0 or omitted keeps it as is")
    adaptive: Optional[bool] = Field(None, description="false: switch the adaptive limit off")


class LoadModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model_version": "v3", "path": "/models/v3.pt"}]})
    model_version: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    path: str = Field(min_length=1, max_length=4096)


api = FastAPI(title="genrec", version="0.1.0",
              description="Streaming generative recommender: sessions generated from fresh histories, "
                          "events and items in, online A/B experiments. Admin routes need "
                          "`Authorization: Bearer <token>`.")


def _unavailable(detail: str, retry_after: int) -> HTTPException:
    return HTTPException(503, detail, headers={"Retry-After": str(retry_after)})


def _overload_rejection(ing) -> tuple[str, int] | None:
    """``(detail, Retry-After seconds)`` when the ingress ``ing`` is at its ``/recommend`` admission limit
    (counted as a rejection), else None: the one admission check, shared by the route and
    :class:`RecommendGate`."""
    if ing.inflight < max(1, int(ing.limit)):
        return None
    ing.metrics.rejected.labels(route="recommend").inc()
    return f"overloaded: {ing.inflight} requests in flight; retry later", ing.retry.rejected()


async def _spread(ing) -> None:
    """Hold a rejection for a random sub-second delay before answering it, so that clients rejected
    together do not come back together (:mod:`serving.admission`, ``spread_s``)."""
    delay = ing.retry.answer_delay()
    if delay > 0:
        await asyncio.sleep(delay)


#: The Ingress instance of this replica process (set in its constructor) for :class:`RecommendGate`.
_INGRESS: list = []


class RecommendGate:
    """ASGI middleware: a ``POST /v1/recommend`` beyond the admission limit gets its 503 before FastAPI.

    Why: under overload most requests are rejected, and rejected clients come
    back in bursts (``Retry-After`` has whole-second resolution, so everyone
    turned away in the same instant returns in the same instant). Measured in
    the ingress replica: such a burst kept its event loop busy for up to
    ~0.4 s — routing, reading and validating every body only to answer 503 —
    and the admitted requests in flight on that loop waited behind it. Here
    the 503 (same body and adaptive ``Retry-After`` as the route's own) is sent
    without routing, body read or validation. The route keeps its own check,
    which stays authoritative (admission can change while a body is read).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and _INGRESS and scope["path"] == "/v1/recommend"
                and scope["method"] == "POST"):
            rejected = _overload_rejection(_INGRESS[0])
            if rejected is not None:
                detail, retry_after = rejected
                await _spread(_INGRESS[0])
                body = _REJECT_JSON.encode({"detail": detail})
                await send({"type": "http.response.start", "status": 503,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"retry-after", str(retry_after).encode()),
                                        (b"x-genrec-shed", b"gate")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


api.add_middleware(RecommendGate)


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """The HTTP front: validation, experiments, exposure log, metrics."""

    def __init__(self, recommender, settings: AppSettings, rec_cfg=None):
        from ingest.producer import EventProducer, ProducerConfig
        from ingest.topics import ensure_topics

        if recommender is None:  # colocated: this replica's own recommender (a child process by default)
            from serving.local_handle import LocalHandle

            if rec_cfg.batching == "process":
                from serving.decode_process import RecommenderProcess

                self.rec = LocalHandle(RecommenderProcess(rec_cfg))
            else:
                from serving.recommender import Recommender

                self.rec = LocalHandle(Recommender.func_or_class(rec_cfg))
        else:  # split: the recommender deployment; gRPC transport unless told otherwise
            self.rec = recommender.options(_by_reference=settings.rec_transport == "ray")
        self.s = settings
        ensure_topics(settings.kafka)
        self.producer = EventProducer(settings.kafka, ProducerConfig(linger_ms=1))
        self.registry = ExperimentRegistry(source=settings.experiments or None) if settings.experiments \
            else ExperimentRegistry()
        self.metrics = ServingMetrics()
        self.path = RecommendPath(self.registry, ServedLog(settings.kafka, settings.produce_timeout_s), self.metrics)
        self.retry = AdaptiveRetryAfter(RetryAfterConfig(min_s=settings.retry_after_s,
                                                         max_s=max(settings.retry_after_s, settings.max_retry_after_s),
                                                         spread_s=settings.reject_spread_s))
        self.loop_lag = LoopLagProbe()
        self.inflight = 0
        self.max_inflight = settings.max_inflight
        self.latency_target_ms = settings.latency_target_ms
        self.limit = float(settings.max_inflight)
        self._report_cache: dict[str, tuple[float, dict]] = {}
        # RecommendGate answers overload before FastAPI. Through the imported module, not the name:
        # Serve ships this class by value (``serving.app.Ingress`` is the Deployment, so cloudpickle
        # cannot refer to the class), and a by-value function carries a *copy* of the globals it uses:
        # ``_INGRESS[:] = ...`` here would fill a list that the gate, imported by reference, never sees.
        import serving.app as this_module

        this_module._INGRESS[:] = [self]
        tune_replica_process()  # last: frozen start-up heap, 1 ms GIL switches, fewer young GCs (serving.loop_lag)

    def check_health(self) -> None:
        """Serve's health check: a replica whose recommender process died is replaced (its in-flight
        requests were answered 503, with no ``served`` record)."""
        target = getattr(self.rec, "target", None)
        if target is not None and not getattr(target, "alive", True):
            raise RuntimeError("the recommender process of this replica died; Serve replaces the replica")

    def reconfigure(self, user_config: dict) -> None:
        """Serve ``user_config`` update (``serve deploy`` with a new config): reload experiments in place."""
        text = (user_config or {}).get("experiments")
        if text:
            self.registry.reload(text)

    # -- helpers -----------------------------------------------------------------------------

    def _adapt(self, ms: float) -> None:
        """AIMD admission limit (as in TCP congestion control / Netflix's concurrency limits).

        Over the target: shrink the limit by 10 %; under it: grow by 1/limit
        (≈ +1 per window of answers). Off without a target.
        """
        if not self.latency_target_ms:
            return
        if ms > self.latency_target_ms:
            self.limit = max(1.0, self.limit * 0.9)
        else:
            self.limit = min(float(self.max_inflight), self.limit + 1.0 / max(self.limit, 1.0))

    def _admin(self, authorization: str | None) -> None:
        if not self.s.admin_token:
            raise HTTPException(403, "admin API disabled: no admin_token configured (genrec serve --admin-token)")
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "admin route: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(authorization[7:].encode(), self.s.admin_token.encode()):
            raise HTTPException(403, "admin token does not match")

    async def _write(self, topic: str, body: RecordBatch) -> JSONResponse:
        t0 = time.perf_counter()
        valid, errors = [], []
        for i, obj in enumerate(body.records):
            if not isinstance(obj, dict):
                errors.append({"index": i, "reason": f"record must be a JSON object, got {type(obj).__name__}"})
                continue
            try:
                valid.append(decode_dict(topic, obj))
            except ContractError as e:
                errors.append({"index": i, "reason": e.reason})
            except Exception as e:  # noqa: BLE001 - msgspec edge cases: still a 4xx for the client
                errors.append({"index": i, "reason": f"invalid record: {e}"})
        futs = [self.producer.send(r) for r in valid]
        try:
            await asyncio.gather(*(await_kafka(f, self.s.produce_timeout_s) for f in futs))
        except Exception as e:  # noqa: BLE001 - broker down or slow: the client retries
            self.metrics.errors.labels(route=topic, reason="kafka").inc()
            raise _unavailable(f"could not write to Kafka ({type(e).__name__}); retry", self.s.retry_after_s)
        self.metrics.written.labels(topic=topic).inc(len(valid))
        self.metrics.invalid.labels(topic=topic).inc(len(errors))
        status = 202 if valid or not errors else 422
        self.metrics.latency.labels(route=topic, arm="", status=str(status)).observe(time.perf_counter() - t0)
        return JSONResponse({"accepted": len(valid), "rejected": len(errors), "errors": errors}, status_code=status)

    # -- recommend ---------------------------------------------------------------------------

    @api.post("/v1/recommend", response_model=RecommendResponse, tags=["recommend"],
              responses={503: {"description": "overloaded or recommender unavailable; see Retry-After"},
                         422: {"description": "invalid request"}})
    async def recommend(self, body: RecommendRequest) -> Response:
        """Generate a session of ``k`` items for ``user_id`` from their fresh history."""
        t0 = time.perf_counter()
        self.loop_lag.ensure_started()
        if body.k > self.s.max_k:
            raise HTTPException(422, f"k={body.k} exceeds the limit of {self.s.max_k} items per session")
        rejected = _overload_rejection(self)
        if rejected is not None:
            await _spread(self)
            raise _unavailable(*rejected)
        self.retry.admitted()
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        self.metrics.admission_limit.set(self.limit)
        try:
            out, timings = await self.path.run(body.user_id, body.k, body.exclude_seen, self._call, t0,
                                               extra=self._lag_timings)
        except Unavailable as e:
            if e.reason == "backpressure":
                self.metrics.rejected.labels(route="recommend").inc()
                raise _unavailable(e.detail, self.retry.rejected()) from None
            self.metrics.errors.labels(route="recommend", reason=e.reason).inc()
            raise _unavailable(e.detail, self.s.retry_after_s) from None
        finally:
            self.inflight -= 1
            self.metrics.inflight.set(self.inflight)
        self._adapt(timings["total_ms"])
        return Response(out, media_type="application/json")

    async def configure_batching(self, max_batch_size: int, batch_wait_timeout_s: float | None = None,
                                 continuous: bool | None = None) -> dict:
        """Change the recommender's batch size (and continuous batching, in a recommender process) live.

        The benchmark compares settings in one run; in the split topology this reaches one recommender replica.
        """
        return await self.rec.configure_batching.remote(max_batch_size, batch_wait_timeout_s, continuous)

    def _lag_timings(self) -> dict:
        """Ingress event-loop lag now (ms), reported with each answer (:mod:`serving.loop_lag`)."""
        self.metrics.loop_lag.set(self.loop_lag.lag_ms / 1e3)
        return {"loop_lag_ms": self.loop_lag.lag_ms}

    async def _call(self, req: RecRequest) -> RecResult:
        """The recommender through its deployment handle; failures become :class:`Unavailable` (→ 503)."""
        from ray.serve.exceptions import BackPressureError

        try:
            return await asyncio.wait_for(self.rec.recommend.remote(req), self.s.recommend_timeout_s)
        except BackPressureError:
            raise Unavailable("recommender queue full; retry later", "backpressure") from None
        except Exception as e:  # noqa: BLE001 - replica died / restarting / timed out: unanswered, no record
            raise Unavailable(f"recommender unavailable ({type(e).__name__}); retry", type(e).__name__) from None

    # -- events and items --------------------------------------------------------------------

    @api.post("/v1/events", status_code=202, response_model=Accepted, tags=["ingest"],
              responses={422: {"description": "every record was invalid", "model": Accepted},
                         503: {"description": "Kafka unavailable; see Retry-After"}})
    async def events(self, body: EventsBatch) -> JSONResponse:
        """Validate user events (topic ``user-events``) and write the valid ones to Kafka."""
        return await self._write(USER_EVENTS, body)

    @api.post("/v1/items", status_code=202, response_model=Accepted, tags=["ingest"],
              responses={422: {"description": "every record was invalid", "model": Accepted},
                         503: {"description": "Kafka unavailable; see Retry-After"}})
    async def items(self, body: ItemsBatch) -> JSONResponse:
        """Validate catalog changes (topic ``item-events``) and write the valid ones to Kafka."""
        return await self._write(ITEM_EVENTS, body)

    @api.get("/v1/items/{item_id}", tags=["ingest"], responses={404: {"description": "not recommendable"}})
    async def item_status(self, item_id: str = PathParam(..., min_length=1, max_length=128)) -> dict:
        """Whether the recommender's live catalog can recommend ``item_id`` now."""
        try:
            state, reason = await asyncio.wait_for(self.rec.item_state.remote(item_id), 5)
        except Exception as e:  # noqa: BLE001
            raise _unavailable(f"recommender unavailable ({type(e).__name__})", self.s.retry_after_s) from None
        if state != "live":
            why = {"retired": "it was retired", "rejected": f"the indexer rejected it: {reason}",
                   "unknown": "not indexed yet (or never posted)"}[state]
            raise HTTPException(404, f"item {item_id!r} is not in the live catalog: {why}")
        return {"item_id": item_id, "recommendable": True}

    # -- experiments -------------------------------------------------------------------------

    @api.get("/v1/experiments", tags=["experiments"])
    async def experiments(self) -> dict:
        """The live experiment layers, arms, weights and guardrails."""
        return {"version": self.registry.version, **self.registry.config.describe()}

    def _experiment(self, name: str):
        try:
            return self.registry.config.experiment(name)
        except KeyError:
            names = [e.name for e in self.registry.config.experiments()]
            raise HTTPException(404, f"no experiment {name!r}; known: {names}") from None

    async def _report(self, name: str, plot: str | None = None) -> dict:
        from serving.ab_report import build_report, read_kafka

        exp = self._experiment(name)
        hit = self._report_cache.get(name)
        if hit and time.monotonic() - hit[0] < self.s.report_cache_s and plot is None:
            return hit[1]
        loop = asyncio.get_running_loop()
        try:
            served, events = await loop.run_in_executor(None, read_kafka, self.s.kafka, 30.0)
        except Exception as e:  # noqa: BLE001
            raise _unavailable(f"could not read Kafka ({type(e).__name__})", self.s.retry_after_s) from None
        rep = await loop.run_in_executor(None, build_report, exp, served, events, plot)
        self._report_cache[name] = (time.monotonic(), rep)
        return rep

    @api.get("/v1/experiments/{name}/report", tags=["experiments"],
             responses={404: {"description": "unknown experiment"}})
    async def report(self, name: str = PathParam(..., min_length=1, max_length=128),
                     format: str = Query("json", pattern="^(json|markdown)$")) -> Response:
        """Per-arm exposures, feedback, CTR, reward, watch time with 95% CIs, Welch tests vs control, SRM."""
        from serving.ab_report import markdown

        rep = await self._report(name)
        if format == "markdown":
            return PlainTextResponse(markdown(rep))
        return JSONResponse(rep)

    @api.get("/v1/experiments/{name}/report.png", tags=["experiments"],
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "unknown experiment"}})
    async def report_png(self, name: str = PathParam(..., min_length=1, max_length=128)) -> Response:
        """The report's plot (per-arm means with 95% CIs)."""
        import os
        import tempfile

        self._experiment(name)
        fd, path = tempfile.mkstemp(suffix=".png")
        os.close(fd)
        try:
            await self._report(name, plot=path)
            with open(path, "rb") as f:
                return Response(f.read(), media_type="image/png")
        finally:
            os.unlink(path)

    # -- admin -------------------------------------------------------------------------------

    @api.post("/v1/admin/experiments/reload", tags=["admin"],
              responses={400: {"description": "invalid experiments config"}, 401: {}, 403: {}})
    async def reload(self, body: ReloadRequest, authorization: str | None = Header(None)) -> dict:
        """Re-read the experiments (from the body's YAML or the configured file) without a restart."""
        self._admin(authorization)
        try:
            self.registry.reload(body.yaml)
        except (ValueError, OSError) as e:
            raise HTTPException(400, f"experiments not reloaded: {e}") from None
        self._report_cache.clear()
        return {"version": self.registry.version, "experiments": [e.name for e in self.registry.config.experiments()]}

    async def _versions(self) -> list[str]:
        try:
            return await asyncio.wait_for(self.rec.model_versions.remote(), 10)
        except Exception as e:  # noqa: BLE001
            raise _unavailable(f"recommender unavailable ({type(e).__name__})", self.s.retry_after_s) from None

    @api.post("/v1/admin/models/promote", tags=["admin"],
              responses={404: {"description": "model version not loaded"}, 401: {}, 403: {}})
    async def promote(self, body: PromoteRequest, authorization: str | None = Header(None)) -> dict:
        """Make a loaded model version the default (users outside model experiments get it)."""
        self._admin(authorization)
        versions = await self._versions()
        if body.model_version not in versions:
            raise HTTPException(404, f"model version {body.model_version!r} is not loaded; loaded: {versions}")
        previous = self.registry.promote(body.model_version)
        return {"default_model_version": body.model_version, "previous": previous}

    @api.post("/v1/admin/models/rollback", tags=["admin"], responses={409: {"description": "nothing to roll back"}})
    async def rollback(self, authorization: str | None = Header(None)) -> dict:
        """Undo the last promote: one call."""
        self._admin(authorization)
        try:
            restored = self.registry.rollback()
        except ValueError as e:
            raise HTTPException(409, str(e)) from None
        return {"default_model_version": restored}

    @api.post("/v1/admin/admission", tags=["admin"], responses={401: {}, 403: {}})
    async def admission(self, body: AdmissionRequest, authorization: Optional[str] = Header(None)) -> dict:
        """Change the admission limit and/or the latency target of the adaptive limit, live."""
        self._admin(authorization)
        if body.max_inflight is not None:
            self.max_inflight = body.max_inflight
            self.limit = float(body.max_inflight)
        if body.latency_target_ms:
            self.latency_target_ms = body.latency_target_ms
        if body.adaptive is False:
            self.latency_target_ms = None
            self.limit = float(self.max_inflight)
        return {"max_inflight": self.max_inflight, "limit": self.limit, "latency_target_ms": self.latency_target_ms}

    @api.post("/v1/admin/models/load", tags=["admin"], responses={400: {"description": "cannot load"}})
    async def load_model(self, body: LoadModelRequest, authorization: str | None = Header(None)) -> dict:
        """Load a checkpoint as a new model version beside the running ones (every replica that gets it)."""
        self._admin(authorization)
        try:
            versions = await self.rec.load_model.remote(ModelSpec(body.model_version, path=body.path))
        except Exception as e:  # noqa: BLE001 - a bad path / config is the caller's problem
            raise HTTPException(400, f"could not load {body.path!r}: {type(e).__name__}: {e}"[:2000]) from None
        return {"models": versions}

    # -- probes ------------------------------------------------------------------------------

    @api.get("/healthz", tags=["probes"])
    async def healthz(self) -> dict:
        """The ingress process is up."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["probes"], responses={503: {"description": "not ready"}})
    async def readyz(self) -> dict:
        """Ready when the recommender answers and its catalog holds at least one item."""
        try:
            st = await asyncio.wait_for(self.rec.status.remote(), 5)
        except Exception as e:  # noqa: BLE001
            raise _unavailable(f"recommender not ready ({type(e).__name__})", self.s.retry_after_s) from None
        if not st.get("catalog_items"):
            raise _unavailable("catalog is empty: no item can be recommended yet", self.s.retry_after_s)
        return {"status": "ready", "catalog_items": st["catalog_items"], "models": st.get("models")}

    @api.get("/metrics", tags=["probes"], response_class=PlainTextResponse)
    async def metrics_route(self) -> Response:
        """Prometheus text format."""
        try:
            self.metrics.observe_status(await asyncio.wait_for(self.rec.status.remote(), 2))
        except Exception:  # noqa: BLE001 - a scrape never fails because the recommender is busy
            pass
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)




#: No per-request access log lines from the replicas (or, passed to ``serve.start``, the proxy): Serve
#: formats and flushes one line per request per component, which on a 2-core machine is CPU taken from
#: decoding exactly when overload makes it scarce. Latency, status and errors per route and arm are in
#: ``/metrics``; warnings and errors are still logged.
QUIET_LOGS = {"enable_access_log": False, "log_level": "WARNING"}


def build_app(settings: AppSettings, rec_cfg):
    """The bound Serve application: ingress → recommender."""
    from serving.recommender import recommender_deployment

    dep, rec_cfg = recommender_deployment(rec_cfg)
    # The proxy sheds load before the ingress replica: beyond max_ongoing (the admitted /recommend
    # plus room for the other routes and for fast 503s) and a short queue, Serve's router answers
    # 503 + Retry-After itself, without a replica call (a rejected request then costs the proxy only).
    opts = dict(max_ongoing_requests=settings.max_inflight + settings.ingress_slack,
                max_queued_requests=settings.ingress_queue,
                backpressure_config={"status_code": 503, "retry_after_s": settings.shed_retry_after_s},
                logging_config=QUIET_LOGS)
    if settings.topology == "colocated":
        # one deployment: each ingress replica is also a recommender (its resources, GPU included)
        rec_opts = dep.ray_actor_options or {}
        ingress = Ingress.options(num_replicas=settings.num_replicas, **opts, health_check_period_s=2,
                                  health_check_timeout_s=30, ray_actor_options={
            "num_cpus": rec_opts.get("num_cpus", 0.5), "num_gpus": rec_opts.get("num_gpus", 0),
            "runtime_env": {"env_vars": ONE_LOOP_ENV}})
        return ingress.bind(None, settings, rec_cfg)
    ingress = Ingress.options(num_replicas=settings.num_replicas, **opts,
                              ray_actor_options={"num_cpus": 0.25, "runtime_env": {"env_vars": ONE_LOOP_ENV}})
    dep = dep.options(logging_config=QUIET_LOGS)
    return ingress.bind(dep.bind(rec_cfg), settings)


def app_builder(args: dict):
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path: serving.app:app_builder``)."""
    from serving.serve_args import app_from_args

    return app_from_args(args)
