"""How late the ingress replica's event loop runs its callbacks: the probe behind ``loop_lag_ms``.

Why: under overload, admitted requests can wait outside every stage the
ingress times — in the event loop's ready queue, behind the parsing, routing
and 503s of hundreds of other connections (with Serve's direct ingress the
HTTP server runs on this same loop). A timer that asks to wake every
``interval_s`` and measures how late it woke is the standard way to see that
(Node.js ``monitorEventLoopDelay``, asyncio debug mode's slow-callback
warning); every recommend answer carries the current value in its
``timings`` and ``/metrics`` exports it.

What: a task sleeping ``interval_s`` in a loop; ``lag_ms`` is a decaying
maximum of the overshoot (each new sample, or 0.8× the previous value), so a
stall stays visible for a few intervals. Cost: one wake-up per interval.
"""

from __future__ import annotations

import asyncio
import gc
import time


def freeze_startup_heap() -> int:
    """Move everything alive after a replica's start-up into CPython's permanent generation.

    Why: a replica's heap after start-up (Ray, FastAPI, pydantic, torch, the
    model, the catalog) is large and lives forever, yet every full (gen-2)
    collection walks it again. Measured in the ingress replica under overload:
    one gen-2 pass of 259 ms, i.e. every admitted request in flight stalled a
    quarter second, which alone set the admitted p99. ``gc.freeze()`` (Python
    ≥ 3.7, introduced for pre-fork servers; the same remedy Ray Serve applies
    to its proxy with ``RAY_SERVE_FREEZE_GC_ON_STARTUP``) takes those objects
    out of every later collection; cycles created afterwards are still
    collected as usual. Returns the number of frozen objects.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class LoopLagProbe:
    """Start with :meth:`ensure_started` from inside the loop to watch (idempotent)."""

    def __init__(self, interval_s: float = 0.02):
        if interval_s <= 0:
            raise ValueError(f"LoopLagProbe.interval_s={interval_s} must be > 0")
        self.interval_s = interval_s
        self.lag_ms = 0.0
        self.max_ms = 0.0
        self._task: asyncio.Task | None = None

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            late = max(0.0, (time.perf_counter() - t - self.interval_s) * 1e3)
            self.lag_ms = max(late, 0.8 * self.lag_ms)
            self.max_ms = max(self.max_ms, late)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
