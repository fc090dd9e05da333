"""LocalHandle: an in-process object behind the surface the ingress uses on a Serve deployment handle."""

from __future__ import annotations

import asyncio

import pytest

from serving.local_handle import LocalHandle


class _Target:
    size = 3

    async def double(self, x):
        await asyncio.sleep(0)
        return 2 * x

    def status(self):
        return {"ok": True}

    def broken(self):
        raise ValueError("nope")


def test_coroutine_and_plain_methods_are_awaitable_like_handle_calls():
    h = LocalHandle(_Target())

    async def main():
        return await h.double.remote(21), await h.status.remote(), await h.options(stream=False).double.remote(1)

    assert asyncio.run(main()) == (42, {"ok": True}, 2)


def test_errors_are_raised_where_the_caller_awaits():
    h = LocalHandle(_Target())

    async def main():
        fut = h.broken.remote()   # no raise here: as with a handle, the error comes with the result
        with pytest.raises(ValueError, match="nope"):
            await fut

    asyncio.run(main())


def test_attributes_that_are_not_methods_are_refused():
    with pytest.raises(AttributeError, match="not a method"):
        LocalHandle(_Target()).size
