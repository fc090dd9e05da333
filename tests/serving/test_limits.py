"""Request limits as pure logic: the token bucket, the per-client limiter and the ASGI middleware's answers
(the same middleware over the real socket is in tests/serving/test_app.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from serving.limits import RateLimiter, RequestLimits, TokenBucket, client_key


def test_token_bucket_spends_burst_then_refills_at_rate():
    b = TokenBucket(per_s=2.0, burst=3, stamp=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)        # one token back after 1/2 s
    assert b.take(0.5) == 0.0
    assert b.take(0.5) > 0
    assert [b.take(100.0) for _ in range(3)] == [0.0] * 3   # refill caps at burst
    assert b.take(100.0) > 0
    with pytest.raises(ValueError, match="per_s"):
        TokenBucket(per_s=0, burst=1)


def test_rate_limiter_is_per_client_and_bounded():
    now = [0.0]
    lim = RateLimiter(per_s=0.5, burst=2, max_clients=3, clock=lambda: now[0])
    assert lim.retry_after("a") is None and lim.retry_after("a") is None
    assert lim.retry_after("a") == 2                  # 1 token at 0.5/s: Retry-After rounds up to 2 s
    assert lim.retry_after("b") is None               # another client has its own bucket
    for c in ("c", "d"):
        lim.retry_after(c)
    assert len(lim) == 3                              # "a", least recently seen, was dropped
    now[0] = 2.0
    assert lim.retry_after("b") is None


def test_client_key_is_the_key_header_when_configured_else_the_address():
    scope = {"client": ("10.0.0.7", 5555), "headers": [(b"x-api-key", b"team-a")]}
    assert client_key(scope, None) == "addr:10.0.0.7"
    assert client_key(scope, "X-Api-Key") == "key:team-a"
    assert client_key({**scope, "headers": []}, "X-Api-Key") == "addr:10.0.0.7"


def _call(mw, method="POST", path="/v1/events", headers=(), chunks=(b"",)):
    sent = []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers), "client": ("1.2.3.4", 1)}
    asyncio.run(mw(scope, receive, send))
    status = sent[0]["status"]
    return status, dict(sent[0]["headers"]), json.loads(sent[1]["body"]) if sent[1]["body"] else None


async def _reading_app(scope, receive, send):
    """An app that reads the whole body, then answers 200 with its length."""
    size = 0
    while True:
        m = await receive()
        size += len(m.get("body", b""))
        if not m.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"size": size}).encode()})


def test_body_over_the_limit_is_refused_by_length_or_while_read():
    read = []

    async def must_not_run(scope, receive, send):
        read.append(1)

    mw = RequestLimits(must_not_run, lambda: (1024, None, None))
    status, _, body = _call(mw, headers=[(b"content-length", b"5000")])
    assert status == 413 and "1024 bytes" in body["detail"] and "max_body_bytes" in body["detail"] and not read
    mw = RequestLimits(_reading_app, lambda: (1024, None, None))
    assert _call(mw, chunks=(b"x" * 600, b"x" * 600))[0] == 413     # chunked: counted while read
    assert _call(mw, chunks=(b"x" * 600, b"x" * 400)) == (200, {}, {"size": 1000})


def test_rate_limit_applies_to_recommend_only_with_retry_after():
    lim = RateLimiter(per_s=0.25, burst=1)
    mw = RequestLimits(_reading_app, lambda: (1024, lim, None))
    assert _call(mw, path="/v1/recommend")[0] == 200
    status, headers, body = _call(mw, path="/v1/recommend")
    assert status == 429 and headers[b"retry-after"] == b"4" and "retry after 4 s" in body["detail"]
    assert _call(mw, path="/v1/events")[0] == 200
    # before the replica is ready nothing is limited
    assert _call(RequestLimits(_reading_app, lambda: None), headers=[(b"content-length", b"9999999")])[0] == 200
