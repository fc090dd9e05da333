"""An object in the ingress's own process behind the surface of a Serve deployment handle.

The ingress calls ``self.rec.<method>.remote(...)`` and awaits the result in both topologies: a
deployment handle in ``split``, and in ``colocated`` a :class:`LocalHandle` around the replica's
:class:`serving.decode_process.RecommenderProcess`. ``.remote()`` of a coroutine method returns the
coroutine; of a plain method it runs it now and returns a finished future.
"""

from __future__ import annotations

import asyncio
import inspect


class _LocalMethod:
    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args, **kwargs):
        """An awaitable of ``fn(*args, **kwargs)`` (a coroutine, or a done future for a plain method)."""
        if inspect.iscoroutinefunction(self.fn):
            return self.fn(*args, **kwargs)
        fut = asyncio.get_running_loop().create_future()
        try:
            fut.set_result(self.fn(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - raised where the caller awaits, as from a handle
            fut.set_exception(e)
        return fut


class LocalHandle:
    """``handle.method.remote(...)`` → awaitable, for an object living in this process."""

    def __init__(self, target):
        self.target = target

    def __getattr__(self, name: str) -> _LocalMethod:
        fn = getattr(self.target, name)
        if not callable(fn):
            raise AttributeError(f"{type(self.target).__name__}.{name} is not a method")
        return _LocalMethod(fn)

    def options(self, **_kwargs) -> "LocalHandle":
        """Handle options (transport, routing) mean nothing in-process: the same handle."""
        return self
