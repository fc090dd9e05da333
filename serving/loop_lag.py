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

    Why: that heap (Ray, FastAPI, pydantic, torch, the model, the catalog) lives
    forever, yet every full collection walks it again, a pause of a quarter second
    in the ingress that every request in flight waits for. ``gc.freeze()`` takes it
    out of later collections (Serve does the same for its proxy); new cycles are
    still collected. Returns the number of frozen objects.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


#: A serving replica's thread switch interval (s) and young-generation GC threshold (see below).
SWITCH_INTERVAL_S = 0.001
GC_GEN0_THRESHOLD = 20_000


def tune_replica_process(switch_interval_s: float = SWITCH_INTERVAL_S, gen0_threshold: int = GC_GEN0_THRESHOLD) -> int:
    """A serving replica's process settings, applied at the end of its start-up; returns the frozen count.

    * :func:`freeze_startup_heap`.
    * ``sys.setswitchinterval(1 ms)`` instead of CPython's 5 ms: a replica runs
      its event loop beside the Kafka producer's I/O thread (the ``served``-log
      acks), the pipe reader and the feed threads; a thread that wants the GIL
      while another computes waits up to one interval.
    * gen-0 collections every 20,000 allocations instead of 700: a request
      allocates thousands of short-lived objects (HTTP, pydantic, tensors'
      Python wrappers), and each young collection is a pause on whatever
      thread triggers it.
    """
    import sys

    frozen = freeze_startup_heap()
    sys.setswitchinterval(switch_interval_s)
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, g1, g2)
    return frozen


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
