"""RecommendGate: over the admission limit a POST /v1/recommend gets 503 + Retry-After before the app runs."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from serving import app as app_mod
from serving.admission import AdaptiveRetryAfter, RetryAfterConfig
from serving.metrics import ServingMetrics


class _State:
    """The attributes of the Ingress that the gate reads (a real metrics registry and Retry-After policy)."""

    def __init__(self, inflight: int, limit: float):
        self.inflight, self.limit = inflight, limit
        self.metrics = ServingMetrics()
        self.retry = AdaptiveRetryAfter(RetryAfterConfig(min_s=2, max_s=10), seed=0)


def _call(state, path="/v1/recommend", body=b"{not json"):
    calls = []
    inner = FastAPI()

    @inner.post("/v1/recommend")
    async def rec():
        calls.append(1)
        return {"ok": 1}

    @inner.post("/v1/events")
    async def ev():
        calls.append(1)
        return {"ok": 1}

    async def go():
        app_mod._INGRESS[:] = [state]
        try:
            transport = httpx.ASGITransport(app=app_mod.RecommendGate(inner))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await c.post(path, content=body, headers={"content-type": "application/json"})
        finally:
            app_mod._INGRESS[:] = []

    return asyncio.run(go()), calls


def test_over_the_limit_rejects_before_the_app():
    st = _State(inflight=16, limit=16)
    r, calls = _call(st)
    assert r.status_code == 503 and calls == []          # not routed, body never parsed (it is not even JSON)
    assert 2 <= int(r.headers["retry-after"]) <= 10
    assert "overloaded" in r.json()["detail"]
    assert st.metrics.rejected.labels(route="recommend")._value.get() == 1


def test_under_the_limit_and_other_routes_pass_through():
    r, calls = _call(_State(inflight=3, limit=16), body=b"{}")
    assert r.status_code == 200 and calls == [1]
    r, calls = _call(_State(inflight=99, limit=16), path="/v1/events", body=b"{}")
    assert r.status_code == 200 and calls == [1]          # only /v1/recommend is gated
