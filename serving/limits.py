"""Request limits of the HTTP API: body size (413) and a per-client rate limit on ``/v1/recommend`` (429).

:class:`RequestLimits` is an ASGI middleware, so both answers come before FastAPI routes, reads or
validates the body: a body announced larger than the limit (``Content-Length``) is refused without
reading a byte of it; a body without a length (chunked) is counted while it is read and refused
when it passes the limit. The rate limit is a token bucket per client (:class:`TokenBucket`,
:class:`RateLimiter`): ``burst`` requests at once, then ``per_s`` a second, answered ``429`` with
``Retry-After`` (whole seconds until a token is back). A client is its address, or the value of a key
header when one is configured and sent (only meaningful behind a gateway that authenticates the
key: genrec does not check keys). The limits live in each ingress replica (N replicas: N times the
rate in all); the ingress is found through a callable because Serve builds the middleware before
the replica's constructor runs.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import msgspec
from starlette.exceptions import HTTPException

_JSON = msgspec.json.Encoder()


@dataclass
class TokenBucket:
    """``burst`` tokens, refilled at ``per_s`` a second; :meth:`take` spends one or says how long to wait."""

    per_s: float
    burst: int
    tokens: float = -1.0
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if self.per_s <= 0 or self.burst < 1:
            raise ValueError(f"TokenBucket: per_s={self.per_s} must be > 0 and burst={self.burst} >= 1")
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        """Spend a token at time ``now`` (seconds, monotonic): 0.0 when allowed, else the seconds until one is back."""
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.stamp) * self.per_s)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.per_s


class RateLimiter:
    """A :class:`TokenBucket` per client key; at most ``max_clients`` buckets (least recently seen dropped:
    a dropped client starts again with a full bucket)."""

    def __init__(self, per_s: float, burst: int, max_clients: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        if per_s <= 0 or burst < 1 or max_clients < 1:
            raise ValueError(f"RateLimiter: per_s={per_s} must be > 0, burst={burst} >= 1, "
                             f"max_clients={max_clients} >= 1")
        self.per_s, self.burst, self.max_clients, self.clock = per_s, burst, max_clients, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def retry_after(self, key: str) -> Optional[int]:
        """None when ``key`` may go on (a token spent), else the ``Retry-After`` seconds (>= 1)."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.per_s, self.burst, stamp=now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now)
        return None if wait == 0.0 else max(1, math.ceil(wait))

    def __len__(self) -> int:
        return len(self._buckets)


def client_key(scope, key_header: Optional[str]) -> str:
    """The rate-limit key of an ASGI request: ``key:<value of key_header>`` when configured and sent, else
    ``addr:<client address>``."""
    if key_header:
        name = key_header.lower().encode()
        for k, v in scope.get("headers") or ():
            if k == name and v:
                return "key:" + v.decode("latin-1")[:256]
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


def _content_length(scope) -> Optional[int]:
    for k, v in scope.get("headers") or ():
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


class BodyTooLarge(HTTPException):
    """The request body passed the limit while it was read (no Content-Length was sent). An HTTPException:
    FastAPI turns other errors raised while reading a body into a 400, and lets this one answer 413."""

    def __init__(self, limit: int):
        super().__init__(413, too_large_detail(limit))


async def _answer(send, status: int, detail: str, headers: tuple = ()) -> None:
    body = _JSON.encode({"detail": detail})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def too_large_detail(limit: int) -> str:
    return (f"request body exceeds the limit of {limit} bytes (serving.max_body_bytes); send smaller batches "
            f"(at most serving.max_batch_records records per request)")


class RequestLimits:
    """ASGI middleware: 413 for bodies over ``max_body_bytes``, 429 + Retry-After beyond a client's rate on
    ``POST /v1/recommend``. ``limits()`` returns ``(max_body_bytes, RateLimiter or None, key_header)``, or
    None before the replica is ready (nothing is limited then)."""

    def __init__(self, app, limits: Callable[[], Optional[tuple]]):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        current = self.limits() if scope["type"] == "http" else None
        if current is None:
            return await self.app(scope, receive, send)
        max_body, limiter, key_header = current
        if limiter is not None and scope["method"] == "POST" and scope["path"] == "/v1/recommend":
            wait = limiter.retry_after(client_key(scope, key_header))
            if wait is not None:
                return await _answer(send, 429, f"rate limit: at most {limiter.burst} requests at once and "
                                                f"{limiter.per_s:g}/s per client; retry after {wait} s",
                                     ((b"retry-after", str(wait).encode()),))
        length = _content_length(scope)
        if length is not None and length > max_body:
            return await _answer(send, 413, too_large_detail(max_body))
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_body:
                    raise BodyTooLarge(max_body)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await _answer(send, 413, too_large_detail(max_body))
