"""The recommender in a child process: decoding with a GIL of its own, batched continuously.

Why a process: in the ingress replica's process, decoding would share one GIL with the event loop
(HTTP, 503s), the ``served``-log producer and the feeds, and every batch would stretch under load.

What: :class:`RecommenderProcess` spawns a child that builds a :class:`serving.recommender.Recommender`
and serves it over a ``multiprocessing`` pipe. Requests whose decode mode can join at item
boundaries (greedy) join the running rows between two items, up to ``max_batch_size`` rows
(:mod:`serving.session_streams`), and are answered when their session is complete; the other modes
decode in static batches in the same loop. Every other method runs in the child between two steps.
In the parent every method is a coroutine, so :class:`serving.local_handle.LocalHandle` gives the
ingress the surface of a Serve deployment handle.

Failure: the parent holds no state the child needs. If the child dies, every waiting call fails with
:class:`RecommenderProcessDied` (503, no ``served`` record), :attr:`RecommenderProcess.alive` turns
false and the replica's health check fails, so Serve replaces it. If the parent dies, the child reads
end-of-file on its pipe and exits.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import threading
import time

#: What the parent may call in the child (the public surface of serving.recommender.Recommender).
METHODS = ("recommend", "status", "is_recommendable", "item_state", "model_versions", "load_model", "pid")


class RecommenderProcessDied(RuntimeError):
    """The recommender's child process is gone; the call was not answered."""


# ---- the child --------------------------------------------------------------------------------

def _connect_ray(ray_address: str | None, cfg) -> None:
    """Join the parent's Ray cluster when the backend needs actors (sequence shards, item indexer)."""
    if ray_address and (cfg.history == "shards" or cfg.indexer_actor):
        import ray

        ray.init(address=ray_address, log_to_driver=False, configure_logging=False,
                 namespace=cfg.shard_namespace or cfg.indexer_namespace)


def _raise_priority(niceness: int) -> None:
    """Run at ``niceness`` when it is below this process's (needs CAP_SYS_NICE; otherwise unchanged)."""
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if niceness < current:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:   # not permitted: keep the replica's priority
        pass


def _child_main(conn, cfg_blob: bytes, ray_address: str | None) -> None:
    """Build the recommender, say ready (or why not), then serve calls until the pipe closes."""
    from serving.startup import StartupLog

    startup = StartupLog()
    try:
        with startup.stage("recommender: imports (torch, Ray)"):
            from ray import cloudpickle  # Ray's own copy: a declared dependency

            from serving.recommender import Recommender

            cfg = cloudpickle.loads(cfg_blob)
        _raise_priority(cfg.process_niceness)
        _connect_ray(ray_address, cfg)
        rec = Recommender(cfg, startup)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it in the replica
        conn.send([(0, False, RuntimeError(f"recommender process could not start: {type(e).__name__}: {e}"))])
        return
    conn.send([(0, True, (os.getpid(), startup.stages))])
    _serve(conn, rec, cfg.max_batch_size, cfg.batch_wait_timeout_s)


def _serve(conn, rec, max_batch: int, batch_wait_s: float) -> None:
    """The child's loop: take every message that is there, answer plain calls, decode pending requests.

    Requests that can join between items (:meth:`serving.session_streams.SessionStreams.accepts`) join
    the running rows, up to ``max_batch`` rows, and leave when their session is complete; the others
    decode in static batches of up to ``max_batch``, between two items.
    """
    from serving.session_streams import SessionStreams

    pending: list[tuple[int, object, float]] = []   # (call id, RecRequest, perf_counter when sent)
    streams = SessionStreams(rec.backend)

    def take(msg) -> None:
        cid, method, args = msg
        if method == "recommend":   # args: (request, perf_counter when the parent sent it: one clock system-wide)
            pending.append((cid, args[0], args[1]))
            return
        try:
            if method not in METHODS:
                raise AttributeError(f"the recommender process has no method {method!r}; it serves {METHODS}")
            out = getattr(rec, method)(*args)
            if method == "status":
                out = {**out, "max_batch_size": max_batch, **streams.status()}
            reply = (cid, True, out)
        except Exception as e:  # noqa: BLE001 - raised in the parent, where the caller awaits
            reply = (cid, False, _picklable(e))
        _send(conn, [reply])

    try:
        while True:
            if not pending and not len(streams):
                take(conn.recv())                      # idle: block for the next call
            while conn.poll():
                take(conn.recv())                      # everything that arrived meanwhile
            if pending and not len(streams) and batch_wait_s > 0 and len(pending) < max_batch:
                deadline = time.perf_counter() + batch_wait_s
                while len(pending) < max_batch and conn.poll(max(0.0, deadline - time.perf_counter())):
                    take(conn.recv())
            joining, batch = _take(pending, streams, max_batch)
            if joining:
                _admit(conn, rec, streams, joining)
            if batch:
                _static_batch(conn, rec, batch)
            if len(streams):
                _stream_step(conn, streams)
    except (EOFError, OSError):   # the parent is gone (its end of the pipe closed): nothing to answer
        return


def _take(pending: list, streams, max_batch: int) -> tuple[list, list]:
    """Split the pending requests, oldest first, into those that join the running rows now (streamable
    ones, up to the free rows) and the next static batch (the others, up to ``max_batch``). The rest stay
    pending, in order."""
    room = max_batch - len(streams)
    joining, batch, rest = [], [], []
    for p in pending:
        if streams.accepts(p[1]):
            (joining if len(joining) < room else rest).append(p)
        else:
            (batch if len(batch) < max_batch else rest).append(p)
    pending[:] = rest
    return joining, batch


def _admit(conn, rec, streams, joining: list) -> None:
    """Add ``joining`` (call id, request, sent at) to the running rows; answer at once those that fail."""
    rec.batches += 1
    rec.batched_requests += len(joining)
    try:
        errors = streams.admit([r for _, r, _ in joining], [cid for cid, _, _ in joining],
                               sent=[sent for _, _, sent in joining])
        replies = [(cid, True, res) for cid, res in errors]
    except Exception as e:  # noqa: BLE001 - every joining caller gets the error
        err = _picklable(e)
        replies = [(cid, False, err) for cid, _, _ in joining]
    if replies:
        _send(conn, replies)


def _stream_step(conn, streams) -> None:
    """One item for every running row; answer the requests whose session is complete."""
    try:
        done = streams.step()
    except Exception as e:  # noqa: BLE001 - the rows' state is unknown: fail them all
        err = _picklable(e)
        _send(conn, [(cid, False, err) for cid in streams.abandon()])
        return
    if done:
        _send(conn, [(cid, True, res) for cid, res in done])


def _static_batch(conn, rec, batch: list) -> None:
    """Decode ``batch`` (call id, request, sent at) as one static batch and answer each caller."""
    started = time.perf_counter()
    rec.batches += 1
    rec.batched_requests += len(batch)
    try:
        outs = rec.backend.recommend([r for _, r, _ in batch])
        replies = []
        for (cid, _, arrived), out in zip(batch, outs):
            out.stats["batch_wait_ms"] = (started - arrived) * 1e3
            replies.append((cid, True, out))
    except Exception as e:  # noqa: BLE001 - every caller of this batch gets the error
        err = _picklable(e)
        replies = [(cid, False, err) for cid, _, _ in batch]
    _send(conn, replies)


def _send(conn, replies: list) -> None:
    """Send replies; one whose value cannot be pickled is answered with that error instead of killing the child."""
    try:
        conn.send(replies)
    except (TypeError, AttributeError, ValueError) as e:   # pickling failed: nothing was written
        import pickle

        fixed = []
        for cid, ok, val in replies:
            try:
                pickle.dumps(val)
                fixed.append((cid, ok, val))
            except Exception:  # noqa: BLE001
                fixed.append((cid, False, RuntimeError(f"the recommender's answer could not be sent: {e}")))
        conn.send(fixed)


def _picklable(e: BaseException) -> BaseException:
    import pickle

    try:
        pickle.dumps(e)
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


# ---- the parent -------------------------------------------------------------------------------

class RecommenderProcess:
    """A :class:`serving.recommender.Recommender` in a child process; every method is a coroutine here.

    ``cfg.start_timeout_s`` bounds the child's start-up (imports, model loading, feeds catching up).
    """

    def __init__(self, cfg):
        from ray import cloudpickle  # Ray's own copy: a declared dependency

        from serving.recommender_config import for_cluster

        cfg = for_cluster(cfg)   # by-device defaults (batch rows) resolved here, where the cluster is known
        ctx = multiprocessing.get_context("spawn")   # never fork a process that runs Ray's threads
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_child_main, name="genrec-recommender", daemon=True,
                                 args=(child, cloudpickle.dumps(cfg), _ray_address()))
        self._proc.start()
        child.close()
        if not self._conn.poll(cfg.start_timeout_s):
            self._proc.kill()
            raise RuntimeError(f"the recommender process did not start in {cfg.start_timeout_s:.0f} s "
                               "(RecommenderConfig.start_timeout_s)")
        try:
            [(_, ok, val)] = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"the recommender process exited while starting (exit code "
                               f"{self._proc.join(5) or self._proc.exitcode})") from None
        if not ok:
            self._proc.join(5)
            raise val
        self.child_pid: int = val[0]
        self.startup_stages: list[tuple[str, float]] = val[1]   # the child's (stage, seconds)
        self.alive = True
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="recommender-replies", daemon=True)
        self._reader.start()

    # -- transport -------------------------------------------------------------------------

    def _call(self, method: str, *args) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self.alive:
            fut.set_exception(RecommenderProcessDied("the recommender process is gone"))
            return fut
        cid = next(self._ids)
        self._waiting[cid] = (loop, fut)
        try:
            with self._send_lock:
                self._conn.send((cid, method, args))
        except (OSError, ValueError) as e:     # broken pipe: the child died
            self._waiting.pop(cid, None)
            fut.set_exception(RecommenderProcessDied(f"the recommender process is gone ({type(e).__name__})"))
            return fut
        if not self.alive and not fut.done():  # the reader failed the waiting calls while this one was added
            self._waiting.pop(cid, None)
            fut.set_exception(RecommenderProcessDied("the recommender process is gone"))
        return fut

    def _read(self) -> None:
        """Reader thread: resolve the waiting futures on their loop, one hand-off per message."""
        while True:
            try:
                replies = self._conn.recv()
            except (EOFError, OSError):
                break
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for cid, ok, val in replies:
                entry = self._waiting.pop(cid, None)
                if entry is not None:
                    by_loop.setdefault(entry[0], []).append((entry[1], ok, val))
            for loop, items in by_loop.items():
                loop.call_soon_threadsafe(_resolve, items)
        self.alive = False
        dead = RecommenderProcessDied(f"the recommender process (pid {self.child_pid}) died")
        waiting, self._waiting = self._waiting, {}
        for loop, fut in list(waiting.values()):
            try:
                loop.call_soon_threadsafe(_resolve, [(fut, False, dead)])
            except RuntimeError:   # that loop is closed
                pass

    def close(self) -> None:
        """Stop the child (it would also exit on its own when this process ends)."""
        self.alive = False
        try:
            self._conn.close()
        finally:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()

    # -- the Recommender surface (each runs in the child) -------------------------------------

    async def recommend(self, req):
        """One request, batched in the child with whatever else is pending."""
        return await self._call("recommend", req, time.perf_counter())

    async def status(self) -> dict:
        st = await self._call("status")
        st.update({"decode_process": True, "replica_pid": os.getpid()})
        return st

    async def is_recommendable(self, item_id: str) -> bool:
        return await self._call("is_recommendable", item_id)

    async def item_state(self, item_id: str) -> tuple:
        return await self._call("item_state", item_id)

    async def model_versions(self) -> list[str]:
        return await self._call("model_versions")

    async def load_model(self, version: str) -> list[str]:
        return await self._call("load_model", version)

    async def pid(self) -> int:
        return self.child_pid


def _resolve(items) -> None:
    for fut, ok, val in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(val)
        else:
            fut.set_exception(val)


def _ray_address() -> str | None:
    """The GCS address of the Ray cluster this process belongs to (None outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - outside Ray: the child needs none unless its config names actors
        pass
    return None
