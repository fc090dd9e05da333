"""What every supervisor of partition-owning streaming actors does the same way (sequence shards, reward joiners).

* :class:`RuntimeActor` — the thin Ray actor's common methods around a
  crash-only engine ``self.runtime`` (``status``, ``pid``, ``ping``, ``stop``).
* :func:`create_named` — create a named actor, waiting while Ray still holds a
  dead predecessor's name (it is released asynchronously).
* :func:`recreate_dead` — find the actors Ray gave up on (``max_restarts``
  exhausted) and re-create them; a re-created actor recovers from its
  checkpoint exactly as a Ray restart does.
* :func:`stop_all` — let every actor write its final checkpoint, then kill it.
* :func:`status_rows` — every actor's ``status()``, or a row saying it is unavailable.
* :class:`Monitor` — the supervisor's thread that calls ``check()`` periodically.

Ray is imported inside the functions so modules using these load without it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class RuntimeActor:
    """Mixin of a Ray actor class whose engine is ``self.runtime`` (``status()`` and ``stop(checkpoint)``)."""

    runtime: Any

    def status(self) -> dict:
        return self.runtime.status()

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> bool:
        return True

    def stop(self, checkpoint: bool = True) -> dict:
        self.runtime.stop(checkpoint=checkpoint)
        return self.runtime.status()


def create_named(actor_class, name: str, *args, attempts: int = 50, **options):
    """``actor_class.options(name=name, **options).remote(*args)``, retrying while the name is still taken."""
    for attempt in range(attempts):
        try:
            return actor_class.options(name=name, **options).remote(*args)
        except ValueError as e:  # the dead actor's name is released asynchronously
            if "already" not in str(e) or attempt == attempts - 1:
                raise
            time.sleep(0.2)


def recreate_dead(handles: list, create: Callable[[int], Any], what: str,
                  timeout_s: float = 10.0) -> tuple[list[int], dict[int, int]]:
    """Re-create (``handles[i] = create(i)``) every actor Ray has given up on.

    Returns the indices re-created and ``{index: pid}`` of the actors that
    answered (a busy or restarting one is left to Ray).
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    redone, pids = [], {}
    for i, h in enumerate(handles):
        try:
            pids[i] = ray.get(h.pid.remote(), timeout=timeout_s)
        except GetTimeoutError:
            continue  # busy or restarting: Ray is on it
        except RayActorError:
            log.warning("%s %d is dead; re-creating it from its checkpoint", what, i)
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            handles[i] = create(i)
            redone.append(i)
    return redone, pids


def stop_all(handles: list, checkpoint: bool = True, timeout_s: float = 30.0) -> None:
    """Ask every actor to stop (final checkpoint), then kill them all."""
    import ray

    try:
        ray.get([h.stop.remote(checkpoint) for h in handles], timeout=timeout_s)
    except Exception:  # noqa: BLE001 - a dead actor has nothing left to flush
        pass
    for h in handles:
        try:
            ray.kill(h, no_restart=True)
        except Exception:  # noqa: BLE001
            pass


def status_rows(handles: list, id_key: str, partitions_of: Callable[[int], Any], timeout_s: float = 10.0) -> list[dict]:
    """Each actor's ``status()`` with ``state: running``, or ``{id_key: i, state: unavailable (...), partitions}``
    for one that does not answer (restarting or dead: reported, not raised)."""
    import ray

    refs = [h.status.remote() for h in handles]
    rows = []
    for i, r in enumerate(refs):
        try:
            st = ray.get(r, timeout=timeout_s)
            st["state"] = "running"
        except Exception as e:  # noqa: BLE001 - restarting or dead: reported, not raised
            st = {id_key: i, "state": f"unavailable ({type(e).__name__})", "partitions": list(partitions_of(i))}
        rows.append(st)
    return rows


class Monitor:
    """A daemon thread calling ``check()`` every ``period_s`` until :meth:`stop`; a failed check is logged."""

    def __init__(self, check: Callable[[], Any], period_s: float, name: str) -> None:
        self.check, self.period_s, self.name = check, period_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Monitor":
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the monitor must outlive hiccups
                log.exception("%s check failed", self.name)

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
