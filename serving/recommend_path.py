"""One ``/recommend`` from resolved arm to encoded answer, with the exposure log written first.

The ingress (:mod:`serving.app`) runs every recommend through
:class:`RecommendPath`, and the ``serving`` benchmark runs the *same object*
in-process with a direct backend call in place of the Serve handle, so the
in-process baseline does exactly the work of one HTTP request minus HTTP and
Serve: the arm resolution, the history read and generation (one backend call),
the ``served`` record written and acknowledged, the metrics, and the JSON
encoding of the answer. The record carries the latency the ingress measured up
to writing it (``Served.latency_ms``: from ``t0``, the route's start, through
generation), which the A/B report's p99-latency guardrail reads per arm.

Exposure log (:class:`ServedLog`): one long-lived producer per process with
``linger_ms=0`` and ``acks='all'``; each answer awaits *its own* delivery
future (no ``flush()``, which would wait on every record queued by every
concurrent request). ``linger_ms=0`` does not mean one request per record:
while a produce request is in flight, kafka-python keeps appending the records
of concurrent requests to the next batch, so under load the acks come per batch
of answers and at concurrency 1 nothing waits on a linger timer. A response is
encoded only after its record is acknowledged by the broker, so no client sees a
session without its ``served`` record (docs/architecture.md §6).

The JSON answer is encoded with msgspec (a few µs) and returned as bytes;
FastAPI's ``response_model`` stays on the route for the OpenAPI schema only.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Awaitable, Callable

import msgspec

from ingest.contract import Served
from models.decoding.settings import DecodeSettings
from serving.requests import RecRequest, RecResult

_json = msgspec.json.Encoder()


_ids = random.Random()  # seeded from os.urandom once, at import: one per process


def new_request_id() -> str:
    """A random 128-bit request id (32 hex digits), drawn without a system call.

    Not ``uuid.uuid4()``: its ``os.urandom`` system call releases the GIL, and taking it back waits
    behind the other threads' switch interval on every request. A request id must be unique, not
    unpredictable: 128 bits from a per-process Mersenne Twister seeded from ``os.urandom`` are.
    """
    return f"{_ids.getrandbits(128):032x}"


class Unavailable(Exception):
    """The request cannot be answered now (→ HTTP 503 + Retry-After); ``reason`` labels the error metric."""

    def __init__(self, detail: str, reason: str):
        super().__init__(detail)
        self.detail, self.reason = detail, reason


async def await_kafka(fut, timeout_s: float):
    """Await a kafka-python send future from asyncio (its callbacks fire on the producer's I/O thread)."""
    loop = asyncio.get_running_loop()
    af = loop.create_future()

    def ok(md):
        loop.call_soon_threadsafe(lambda: af.done() or af.set_result(md))

    def err(e):
        loop.call_soon_threadsafe(lambda: af.done() or af.set_exception(e if isinstance(e, BaseException)
                                                                          else RuntimeError(str(e))))

    fut.add_callback(ok)
    fut.add_errback(err)
    return await asyncio.wait_for(af, timeout_s)


class ServedLog:
    """The ``served`` topic writer: one producer, linger 0, acks=all; :meth:`write` returns once acked."""

    def __init__(self, kafka, timeout_s: float = 10.0):
        from ingest.producer import EventProducer, ProducerConfig

        self.producer = EventProducer(kafka, ProducerConfig(linger_ms=0))
        self.timeout_s = timeout_s
        try:  # fetch the topic's metadata now, not on the first answer (which would wait for it)
            from ingest.contract import SERVED

            self.producer._p.partitions_for(self.producer.kafka.topic(SERVED))
        except Exception:  # noqa: BLE001 - the first write will fetch it (and report a real failure)
            pass

    async def write(self, record: Served) -> None:
        await await_kafka(self.producer.send(record), self.timeout_s)

    def close(self) -> None:
        self.producer.close()


def non_default_fields(settings) -> dict:
    """The fields of a dataclass instance that differ from its class's defaults."""
    import dataclasses

    base = type(settings)()
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if getattr(settings, f.name) != getattr(base, f.name)}


#: ``call(req) -> RecResult``: the Serve handle in the ingress, a direct backend call in the benchmark.
RecCall = Callable[[RecRequest], Awaitable[RecResult]]


class RecommendPath:
    """Resolve arms → generate (through ``call``) → log ``served`` (acked) → metrics → JSON bytes."""

    def __init__(self, registry, served_log: ServedLog, metrics=None, decode_defaults=None):
        """``decode_defaults``: the ``decode`` section (a ``DecodeSettings``); the experiment arms' decode
        settings override its fields."""
        self.registry, self.log, self.metrics = registry, served_log, metrics
        self.decode_base = non_default_fields(decode_defaults) if decode_defaults is not None else {}

    async def run(self, user_id: str, k: int, exclude_seen: bool, call: RecCall,
                  t0: float | None = None, extra: Callable[[], dict] | None = None) -> tuple[bytes, dict]:
        """The encoded answer and its timings (ms). Raises :class:`Unavailable` when it cannot answer.

        ``extra()``, when given, adds caller-measured timings (the ingress's event-loop lag) at answer time.
        """
        t0 = time.perf_counter() if t0 is None else t0
        res = self.registry.resolve(user_id)
        rid = new_request_id()
        t1 = time.perf_counter()
        decode = {**self.decode_base, **res.decode} if self.decode_base else res.decode
        out = await call(RecRequest(user_id, k, res.model_version, DecodeSettings.from_dict(decode), exclude_seen))
        t2 = time.perf_counter()
        if out.error:
            raise Unavailable(out.error, "backend")
        served = Served(request_id=rid, user_id=user_id, ts=int(time.time() * 1000),
                        model_version=res.model_version, experiment=res.experiment, arm=res.arm,
                        items=out.items, sids=out.sids, scores=out.scores,
                        decode={k2: v for k2, v in decode.items() if isinstance(v, (str, int, float, bool))},
                        latency_ms=round((t2 - t0) * 1e3, 3))  # route start → answer, before the log write
        try:
            await self.log.write(served)
        except Exception as e:  # noqa: BLE001 - no exposure log, no answer
            raise Unavailable(f"could not log the served record ({type(e).__name__}); retry", "served_log") from None
        t3 = time.perf_counter()
        st = out.stats
        m = self.metrics
        if m is not None:
            m.served.labels(experiment=res.experiment, arm=res.arm, model_version=res.model_version).inc()
            m.decode_mode.labels(mode=str(st.get("mode", decode.get("mode", "")))).inc()
            if "batch_size" in st:
                m.batch_size.observe(st["batch_size"])
            m.latency.labels(route="recommend", arm=res.arm, status="200").observe(t3 - t0)
        timings = {"total_ms": (t3 - t0) * 1e3, "recommender_ms": (t2 - t1) * 1e3, "log_ms": (t3 - t2) * 1e3,
                   "resolve_ms": (t1 - t0) * 1e3}
        for key in ("history_ms", "decode_ms", "batch_size", "batch_wait_ms"):
            if key in st:
                timings[key] = float(st[key])
        if extra is not None:
            timings.update(extra())
        body = _json.encode({"request_id": rid, "model_version": res.model_version, "experiment": res.experiment,
                             "arm": res.arm, "timings": timings,
                             "items": [{"item_id": i, "sid": s, "score": sc}
                                       for i, s, sc in zip(out.items, out.sids, out.scores)]})
        return body, timings
