"""The HTTP API: the FastAPI ingress deployment, in front of (or holding) the recommender (Ray Serve).

Routes (under ``/v1`` except the probes; each in the OpenAPI schema with examples): ``POST /v1/recommend``
(resolve the user's experiment arms, generate a session, log it to ``served``, answer), ``POST
/v1/events`` and ``/v1/items`` (validate with the event contract, write to Kafka, 202 with a reason per
invalid record), ``/v1/experiments`` and their reports, ``/v1/admin/...`` (bearer token), ``/healthz``,
``/readyz``, ``/metrics``.

Exposure log: the ``served`` record is written after the recommender answered and acknowledged by the
broker before the client's answer (:mod:`serving.recommend_path`), so no client sees a session without
its record and no record exists for a request the recommender did not answer (except an answer lost on
the wire after the ack, which the reward joiner treats as a session without feedback).

Overload: the ingress admits at most ``max_inflight`` recommend requests (what the recommender decodes
at once, or an adaptive AIMD limit near ``latency_target_ms``); beyond that it answers 503 with a
jittered ``Retry-After`` (:mod:`serving.admission`) before FastAPI reads the body (:class:`RecommendGate`),
so admitted requests keep their latency instead of everybody queueing; beyond ``max_inflight +
ingress_slack`` Serve itself sheds.

Limits (:mod:`serving.limits`, outermost): 413 for a body over ``max_body_bytes`` before it is read,
429 + ``Retry-After`` beyond a client's optional rate on ``/v1/recommend``; 422 for a batch over
``max_batch_records`` or ``k`` over ``max_k``.

Topology (:data:`serving.settings.TOPOLOGIES`): ``colocated`` runs the recommender in a child process of
each ingress replica (:mod:`serving.decode_process`); ``split`` calls a recommender deployment over
Serve's gRPC transport (:mod:`serving.recommender_deployment`) so the two scale apart. The application
is assembled in :mod:`serving.application`.
"""

import asyncio
import hmac
import logging
import time
from typing import Optional

import msgspec
from fastapi import FastAPI, Header, HTTPException, Path as PathParam, Query
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from ray import serve

from ingest.codec import ContractError, decode_dict
from ingest.contract import ITEM_EVENTS, USER_EVENTS
from serving.admission import AdaptiveRetryAfter, RetryAfterConfig
from serving.limits import RateLimiter, RequestLimits
from serving.requests import RecRequest, RecResult
from serving.experiments.config import ExperimentRegistry, ExperimentsConfig
from serving.loop_lag import LoopLagProbe, tune_replica_process
from serving.metrics import CONTENT_TYPE, ServingMetrics
from serving.recommend_path import RecommendPath, ServedLog, Unavailable, await_kafka
from serving import rollout
from serving.rollout import FollowingExperiments, arm_with_model, config_yaml
from serving.schemas import (Accepted, AdmissionRequest, EventsBatch, ItemsBatch, LoadModelRequest, PromoteRequest,
                             RateLimitRequest, RecommendRequest, RecommendResponse, RecordBatch, ReloadRequest)
from serving.settings import AppSettings

log = logging.getLogger(__name__)
_REJECT_JSON = msgspec.json.Encoder()

#: How often the ingress asks its recommender which promoted version it follows (serving.recommender_follow);
#: the recommender itself reads the registry every ``recommender.promoted_poll_s``.
FOLLOW_CHECK_S = 1.0

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

    Rejected clients come back in bursts; routing, reading and validating every body only to answer
    503 would hold the event loop that admitted requests wait on. The 503 here has the route's body
    and adaptive ``Retry-After``; the route keeps its own check, which stays authoritative.
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


def _request_limits():
    """``(max_body_bytes, RateLimiter or None, key header)`` of this replica's Ingress, for
    :class:`serving.limits.RequestLimits` (None before the constructor ran). A module-level function, so
    the middleware reaches the module's ``_INGRESS`` by reference (see the Ingress constructor)."""
    if not _INGRESS:
        return None
    ing = _INGRESS[0]
    return ing.s.max_body_bytes, ing.rate_limiter, ing.s.rate_limit_key_header


# Added last: outermost, so the body limit and the rate limit answer before the admission gate.
api.add_middleware(RequestLimits, limits=_request_limits)


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """The HTTP front: validation, experiments, exposure log, metrics."""

    def __init__(self, recommender, settings: AppSettings, rec_cfg=None):
        from ingest.producer import EventProducer, ProducerConfig
        from ingest.topics import ensure_topics
        from serving.startup import StartupLog

        self.startup = StartupLog()
        with self.startup.stage("ingress: topics"):   # before the recommender: its feeds follow them
            ensure_topics(settings.kafka)
        if recommender is None:  # colocated: this replica's own recommender, in a child process
            from serving.decode_process import RecommenderProcess
            from serving.local_handle import LocalHandle

            with self.startup.stage("ingress: recommender process"):
                proc = RecommenderProcess(rec_cfg)
            self.startup.stages += [(f"  {name}", s) for name, s in proc.startup_stages]
            self.rec = LocalHandle(proc)
        else:  # split: the recommender deployment, over Serve's gRPC transport
            from serving.compat_serve import grpc_handle

            self.rec = grpc_handle(recommender)
        self.s = settings
        self.admin_token = settings.admin_secret()   # from the environment or admin_token_file, never argv
        self.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst) \
            if settings.rate_limit_per_s else None
        t = time.perf_counter()
        self.producer = EventProducer(settings.kafka, ProducerConfig(linger_ms=1))
        self.registry = ExperimentRegistry(source=settings.experiments or None) if settings.experiments \
            else ExperimentRegistry()
        self.metrics = ServingMetrics()
        # the default model version follows the registry's promoted version once the recommender loaded it
        self.routing = FollowingExperiments(self.registry)
        self._follow_task = None
        self._registry_uri = rec_cfg.registry if rec_cfg is not None else None
        self.routing.promoted = rollout.promoted_at_start(rec_cfg)
        self.path = RecommendPath(self.routing, ServedLog(settings.kafka, settings.produce_timeout_s), self.metrics,
                                  decode_defaults=settings.decode)
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
        self.startup.add("ingress: producers, experiments, metrics", time.perf_counter() - t)
        tune_replica_process()  # last: frozen start-up heap, 1 ms GIL switches, fewer young GCs (serving.loop_lag)

    def startup_stages(self) -> list[tuple[str, float]]:
        """``(stage, seconds)`` of this replica's start-up (``genrec serve`` prints them)."""
        return list(self.startup.stages)

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
        if not self.admin_token:
            raise HTTPException(403, "admin API disabled: no admin token configured (set GENREC_SERVING__ADMIN_TOKEN "
                                     "or serving.admin_token_file)")
        if not authorization or not authorization.startswith("Bearer "):
            raise HTTPException(401, "admin route: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(authorization[7:].encode(), self.admin_token.encode()):
            raise HTTPException(403, "admin token does not match")

    async def _write(self, topic: str, body: RecordBatch) -> JSONResponse:
        t0 = time.perf_counter()
        if len(body.records) > self.s.max_batch_records:
            raise HTTPException(422, f"{len(body.records)} records exceed the limit of {self.s.max_batch_records} "
                                     "per request (serving.max_batch_records); split the batch")
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
        if self._follow_task is None:
            await self._ensure_following()
        if body.k > self.s.max_k:
            raise HTTPException(422, f"k={body.k} exceeds the limit of {self.s.max_k} items per session "
                                     "(serving.max_k)")
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

    # -- following the registry's promoted version --------------------------------------------

    async def _sync_promoted(self) -> dict | None:
        """Ask the recommender which promoted version it follows and make it the default model version."""
        try:
            st = await asyncio.wait_for(self.rec.status.remote(), 5)
        except Exception:  # noqa: BLE001 - busy or restarting: keep the current default, ask again later
            return None
        self._registry_uri = st.get("registry") or self._registry_uri
        self.routing.promoted = (st.get("promoted") or {}).get("version")
        return st

    async def _follow_loop(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_CHECK_S)
            await self._sync_promoted()

    async def _ensure_following(self) -> None:
        """Start the follow loop on first use (the replica's event loop runs by then), after one sync."""
        if self._follow_task is None:
            self._follow_task = asyncio.get_running_loop().create_task(self._follow_loop())
            await self._sync_promoted()

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
        return {"version": self.registry.version, **self.routing.config.describe()}

    @api.get("/v1/experiments.html", tags=["experiments"], response_class=HTMLResponse)
    async def experiments_html(self) -> HTMLResponse:
        """The experiments as a page for people: layers, arms, traffic, links to each report page."""
        from serving.experiments.html import experiments_page

        return HTMLResponse(experiments_page({"version": self.registry.version, **self.routing.config.describe()}))

    def _experiment(self, name: str):
        try:
            return self.registry.config.experiment(name)
        except KeyError:
            names = [e.name for e in self.registry.config.experiments()]
            raise HTTPException(404, f"no experiment {name!r}; known: {names}") from None

    async def _report(self, name: str, plot: str | None = None) -> dict:
        from serving.experiments.report import read_report_records, report_from_records

        exp = self._experiment(name)
        hit = self._report_cache.get(name)
        if hit and time.monotonic() - hit[0] < self.s.report_cache_s and plot is None:
            return hit[1]
        loop = asyncio.get_running_loop()
        try:  # the rewards topic when the joiners wrote this experiment's sessions, else served + user-events
            records = await loop.run_in_executor(None, read_report_records, self.s.kafka, name, 30.0)
        except Exception as e:  # noqa: BLE001
            raise _unavailable(f"could not read Kafka ({type(e).__name__})", self.s.retry_after_s) from None
        rep = await loop.run_in_executor(None, report_from_records, exp, records, plot)
        self._report_cache[name] = (time.monotonic(), rep)
        return rep

    @api.get("/v1/experiments/{name}/report", tags=["experiments"],
             responses={404: {"description": "unknown experiment"}})
    async def report(self, name: str = PathParam(..., min_length=1, max_length=128),
                     format: str = Query("json", pattern="^(json|markdown)$")) -> Response:
        """Per-arm metrics over users (the randomisation unit): lifts with intervals, corrected p-values, guardrails, SRM."""
        from serving.experiments.report import markdown

        rep = await self._report(name)
        if format == "markdown":
            return PlainTextResponse(markdown(rep))
        return JSONResponse(rep)

    @api.get("/v1/experiments/{name}/report.png", tags=["experiments"],
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "unknown experiment"}})
    async def report_png(self, name: str = PathParam(..., min_length=1, max_length=128)) -> Response:
        """The report's plot: a forest plot of relative lifts and the cumulative lift with its bounds."""
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

    @api.get("/v1/experiments/{name}/report.html", tags=["experiments"], response_class=HTMLResponse,
             responses={404: {"description": "unknown experiment (a page saying so)"}})
    async def report_html(self, name: str = PathParam(..., min_length=1, max_length=128)) -> HTMLResponse:
        """The report as a page for people (tables and the plot); a failure is a page that says what failed."""
        from serving.experiments.html import message_page, report_page

        back = "../../experiments.html"
        try:
            return HTMLResponse(report_page(await self._report(name)))
        except HTTPException as e:
            return HTMLResponse(message_page(f"Experiment {name}", str(e.detail), back), status_code=e.status_code,
                                headers=e.headers)
        except Exception as e:  # noqa: BLE001 - a bug in the analysis: say so on the page, log the traceback
            log.exception("report of experiment %r failed", name)
            return HTMLResponse(message_page(f"Experiment {name}", f"the report could not be computed "
                                             f"({type(e).__name__}: {e})"[:500], back), status_code=500)

    # -- admin -------------------------------------------------------------------------------

    @api.post("/v1/admin/experiments/reload", tags=["admin"],
              responses={400: {"description": "invalid experiments config"}, 401: {}, 403: {}})
    async def reload(self, body: ReloadRequest, authorization: str | None = Header(None)) -> dict:
        """Re-read the experiments (from the body's YAML or the configured file) without a restart. An arm that
        names a model version whose gate verdict failed is refused (400): it never receives traffic."""
        self._admin(authorization)
        try:
            mreg = self._model_registry()
            if mreg is not None and body.yaml:
                rollout.check_arms(ExperimentsConfig.from_yaml(body.yaml), mreg)
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

    def _model_registry(self):
        """The model registry the recommender loads from (None when it has none)."""
        if not self._registry_uri:
            return None
        from actors.model_registry import ModelRegistry

        return ModelRegistry(self._registry_uri)

    async def _load_on_this_replica(self, version: str) -> None:
        """Load ``version`` into this replica's recommender before it takes traffic (400 when it cannot)."""
        if version in await self._versions():
            return
        try:
            await self.rec.load_model.remote(version)
        except Exception as e:  # noqa: BLE001 - damaged, foreign or refused version: serving keeps its own
            raise HTTPException(400, f"model version {version!r} not promoted, serving keeps its version: "
                                     f"{type(e).__name__}: {e}"[:2000]) from None

    @api.post("/v1/admin/models/promote", tags=["admin"],
              responses={404: {"description": "model version neither in the registry nor loaded"},
                         409: {"description": "no passing gate verdict (the version never receives traffic)"},
                         400: {"description": "the version cannot be loaded; serving keeps its version"},
                         401: {}, 403: {}})
    async def promote(self, body: PromoteRequest, authorization: str | None = Header(None)) -> dict:
        """Make a model version the default (users outside model experiments get it).

        A version of the model registry is promoted *in the registry* (as ``genrec models promote``): only
        with a passing gate verdict (409 otherwise), after this replica loaded it (400 when it cannot, the
        pointer unchanged); every replica follows the pointer within ``recommender.promoted_poll_s``. A
        loaded version outside the registry (an untrained test model) moves this replica's experiments
        default, unless the app follows a registry version."""
        from actors.model_registry import RegistryError

        self._admin(authorization)
        await self._ensure_following()
        version = body.model_version
        mreg = self._model_registry()
        try:
            registered = mreg is not None and rollout.registered(mreg, version)
            if registered:
                rollout.check_promotable(mreg, version, self.routing.promoted)
        except rollout.Refused as e:
            raise HTTPException(e.status, e.detail) from None
        if registered:
            await self._load_on_this_replica(version)
            try:
                previous = mreg.promote(version)
            except RegistryError as e:
                raise HTTPException(409, f"not promoted: {e}") from None
            await self._sync_promoted()
            return {"default_model_version": version, "previous": previous, "registry": mreg.uri}
        versions = await self._versions()
        if version not in versions:
            raise HTTPException(404, f"model version {version!r} is not loaded and not in the model registry; "
                                     f"loaded: {versions}")
        if self.routing.promoted is not None:
            raise HTTPException(409, f"this app serves the model registry's promoted version "
                                     f"{self.routing.promoted!r}; promote a registry version that passed its gate")
        previous = self.registry.promote(version)
        return {"default_model_version": version, "previous": previous}

    @api.post("/v1/admin/models/rollback", tags=["admin"], responses={409: {"description": "nothing to roll back"}})
    async def rollback(self, authorization: str | None = Header(None)) -> dict:
        """Undo the last promote: one call. While the app follows the registry's promoted version, the registry
        pointer moves back (every replica follows it); otherwise this replica's experiments default does."""
        from actors.model_registry import RegistryError

        self._admin(authorization)
        await self._ensure_following()
        mreg = self._model_registry()
        if self.routing.promoted is None:
            try:
                return {"default_model_version": self.registry.rollback()}
            except ValueError as e:
                if mreg is None:
                    raise HTTPException(409, str(e)) from None
        try:
            restored = mreg.rollback()
        except RegistryError as e:
            raise HTTPException(409, str(e)) from None
        return {"default_model_version": restored, "registry": mreg.uri}

    @api.get("/v1/admin/models", tags=["admin"], responses={401: {}, 403: {}})
    async def models(self, authorization: str | None = Header(None)) -> dict:
        """The versions this replica's recommender holds, the promoted version it follows (with its failed
        loads) and the default model version users get."""
        self._admin(authorization)
        await self._ensure_following()
        st = await self._sync_promoted()
        if st is None:
            raise _unavailable("recommender unavailable", self.s.retry_after_s)
        return {"models": st.get("models"), "promoted": st.get("promoted"), "registry": st.get("registry"),
                "default_model_version": self.routing.config.default_model_version}

    @api.post("/v1/admin/experiments/{name}/arms/{arm}", tags=["admin"],
              responses={404: {"description": "unknown experiment or arm"},
                         409: {"description": "no passing gate verdict"},
                         400: {"description": "the version cannot be loaded"}, 401: {}, 403: {}})
    async def assign_arm(self, body: PromoteRequest, name: str = PathParam(..., min_length=1, max_length=128),
                         arm: str = PathParam(..., min_length=1, max_length=40),
                         authorization: str | None = Header(None)) -> dict:
        """Put a model version that passed its gate into an experiment arm (this replica's experiments; the
        file-backed way for every replica is ``serving.rollout.assign_arm_model`` and a reload)."""
        from actors.model_registry import RegistryError

        self._admin(authorization)
        mreg = self._model_registry()
        if mreg is None:
            raise HTTPException(409, "this app has no model registry (recommender.registry): arms take registry "
                                     "versions that passed their gate")
        try:
            mreg.require_passing(body.model_version)
        except RegistryError as e:
            raise HTTPException(404 if "is not in the registry" in str(e) else 409, f"not assigned: {e}") from None
        try:
            new = arm_with_model(self.registry.config, name, arm, body.model_version)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0])) from None
        await self._load_on_this_replica(body.model_version)
        self.registry.reload(config_yaml(new))
        self._report_cache.clear()
        return {"experiment": name, "arm": arm, "model_version": body.model_version, "version": self.registry.version}

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

    @api.post("/v1/admin/rate-limit", tags=["admin"], responses={401: {}, 403: {}})
    async def rate_limit(self, body: RateLimitRequest, authorization: Optional[str] = Header(None)) -> dict:
        """Switch the per-client rate limit of /v1/recommend on (``per_s``, ``burst``) or off (``per_s: 0``), live,
        in the replica that answers (each replica has its own buckets)."""
        self._admin(authorization)
        self.rate_limiter = RateLimiter(body.per_s, body.burst or self.s.rate_limit_burst) if body.per_s else None
        return {"per_s": body.per_s or None, "burst": self.rate_limiter.burst if self.rate_limiter else None}

    @api.post("/v1/admin/models/load", tags=["admin"], responses={400: {"description": "cannot load"}})
    async def load_model(self, body: LoadModelRequest, authorization: str | None = Header(None)) -> dict:
        """Load a version of the model registry beside the running ones (every replica that gets it)."""
        self._admin(authorization)
        try:
            versions = await self.rec.load_model.remote(body.model_version)
        except Exception as e:  # noqa: BLE001 - an unknown or damaged version is the caller's problem
            raise HTTPException(400, f"could not load {body.model_version!r}: {type(e).__name__}: {e}"[:2000]) from None
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
