"""DecodeWorker: batches form when the decode thread is free; the event loop stays free meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from serving.decode_worker import DecodeWorker


def _slow_double(batches: list, delay_s: float = 0.05):
    def fn(batch):
        batches.append(list(batch))
        time.sleep(delay_s)
        return [SimpleNamespace(value=x * 2, stats={}) for x in batch]
    return fn


def test_requests_arriving_while_a_batch_decodes_form_the_next_batch():
    batches: list = []
    w = DecodeWorker(_slow_double(batches), max_batch_size=16)

    async def main():
        first = asyncio.ensure_future(w.submit([0]))
        await asyncio.sleep(0.01)               # the first batch (alone) is decoding now
        rest = await asyncio.gather(*(w.submit([i]) for i in range(1, 11)))
        return await first, rest

    first, rest = asyncio.run(main())
    assert [r.value for r in first] == [0]
    assert [r[0].value for r in rest] == [2 * i for i in range(1, 11)]
    assert batches == [[0], list(range(1, 11))]
    assert all(r[0].stats["batch_wait_ms"] > 20 for r in rest)  # they waited for the first batch
    assert (w.batches, w.requests, w.idle) == (2, 11, True)


def test_max_batch_size_splits_the_pending_requests():
    batches: list = []
    w = DecodeWorker(_slow_double(batches, 0.0), max_batch_size=4)

    async def main():
        return await asyncio.gather(*(w.submit([i]) for i in range(10)))

    out = asyncio.run(main())
    assert [r[0].value for r in out] == [2 * i for i in range(10)]
    assert [len(b) for b in batches] == [4, 4, 2]


def test_the_loop_keeps_running_while_the_thread_decodes():
    w = DecodeWorker(_slow_double([], 0.2), max_batch_size=4)
    ticks = []

    async def main():
        job = asyncio.ensure_future(w.submit([1]))
        t0 = time.perf_counter()
        while not job.done():
            ticks.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)
        return job.result()

    out = asyncio.run(main())
    assert out[0].value == 2
    assert len(ticks) >= 10, "the event loop was blocked while the batch decoded"
    assert any(t.name.startswith("decode") for t in threading.enumerate())
    w.close()


def test_an_error_reaches_every_caller_of_its_batch_and_the_worker_goes_on():
    calls = []

    def fn(batch):
        calls.append(list(batch))
        if -1 in batch:
            raise RuntimeError("bad batch")
        return [SimpleNamespace(value=x, stats={}) for x in batch]

    w = DecodeWorker(fn, max_batch_size=8)

    async def main():
        bad = await asyncio.gather(w.submit([-1]), w.submit([5]), return_exceptions=True)
        good = await w.submit([7])
        return bad, good

    bad, good = asyncio.run(main())
    assert all(isinstance(b, RuntimeError) for b in bad)
    assert good[0].value == 7


def test_configure_validates_and_changes_the_batch_size():
    w = DecodeWorker(lambda b: b, max_batch_size=16)
    w.configure(1)
    assert w.max_batch_size == 1
    with pytest.raises(ValueError, match="max_batch_size"):
        w.configure(0)
    with pytest.raises(ValueError, match="batch_wait_s"):
        w.configure(4, 2.0)
