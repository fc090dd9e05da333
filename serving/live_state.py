"""What a recommender replica keeps live: the servable catalog and where histories come from.

* :class:`LiveCatalog` — the item indexer's catalog type
  (:class:`models.sid.catalog.Catalog`: item id ↔ item index ↔ semantic ID,
  dedup, the prefix trie that constrains decoding) without embeddings, plus
  the lock that orders the feeds' writes against decoding; items are added
  and retired in place while requests are decoded, and an item's SID is
  stable once assigned.
* :class:`ItemFeed` — a thread that follows ``item-events`` (from the
  beginning) and applies them to the catalog, giving new items a SID with a
  :class:`SidAssigner` (the tokenizer in production, a hash in tests). This is
  what makes an item posted to ``/v1/items`` recommendable within a second.
* :class:`DeltaFeed` — instead of :class:`ItemFeed` when an item indexer runs:
  follows the indexer's versioned catalog deltas (:meth:`models.sid.catalog.Catalog.apply`),
  so the replica's catalog equals the indexer's: its SIDs (the tokenizer's codes) and item indices.
* History sources — :class:`ShardHistory` reads the sequence shard actors
  (batched, one Ray call per shard, docs/architecture.md §4); :class:`KafkaHistory` folds
  ``user-events`` in-process for a stand-alone serving process.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from ingest.contract import EVENT_TYPES, ITEM_EVENTS, USER_EVENTS, ItemEvent, UserEvent
from models.sid.catalog import Catalog, CatalogConfig

log = logging.getLogger(__name__)

_TYPE_INDEX = {t: i for i, t in enumerate(EVENT_TYPES)}


# ---- SID assignment for new items ------------------------------------------------------------

class SidAssigner(Protocol):
    """Codes of the non-dedup levels for new items: ``events -> [N, D-1]`` int64."""

    def __call__(self, events: Sequence[ItemEvent]) -> np.ndarray: ...


@dataclass(frozen=True)
class HashSidAssigner:
    """Deterministic codes from a hash of the item id (tests, ID-only catalogs without a tokenizer)."""

    level_sizes: tuple[int, ...]  # without the dedup level

    def __call__(self, events: Sequence[ItemEvent]) -> np.ndarray:
        out = np.zeros((len(events), len(self.level_sizes)), np.int64)
        for i, e in enumerate(events):
            h = hashlib.blake2b(e.item_id.encode("utf-8"), digest_size=16).digest()
            for l, k in enumerate(self.level_sizes):
                out[i, l] = int.from_bytes(h[2 * l:2 * l + 2], "big") % k
        return out


# ---- the catalog -----------------------------------------------------------------------------

class LiveCatalog(Catalog):
    """A replica's catalog: the indexer's :class:`models.sid.catalog.Catalog` without embeddings, plus ``lock``.

    Ids ↔ indices ↔ SIDs, smallest-free dedup codes, rejections (``state_of``), the decoding trie,
    deltas and snapshots are all the models catalog's, so a replica fed by the indexer's deltas is the
    indexer's catalog (same fingerprint). Serving adds only ``lock``: the feed threads write under it
    and decoding reads under it (models stay free of threads).
    """

    def __init__(self, level_sizes: Sequence[int]):
        super().__init__(CatalogConfig(level_sizes=tuple(int(k) for k in level_sizes), dim=0))
        self.lock = threading.RLock()


# ---- following item-events -------------------------------------------------------------------

#: How long the broker may hold a feed's fetch (and so how often an idle feed thread wakes). tansu
#: answers a fetch only when this wait ends, even when data arrived meanwhile, so it bounds how stale
#: a feed is; but every wake-up takes the GIL from decoding. 100 ms keeps freshness well inside its 1 s
#: target (BENCHMARKS.md, ``serving``) at a small fraction of the CPU that shorter polls cost.
FEED_POLL_MS = 100


def _follow_topic(feed, topic: str, what: str) -> None:
    """The loop of a feed thread: consume ``topic`` into ``feed.apply`` until ``feed._stop`` is set.

    ``feed._ready`` is set once the feed has caught up with the log end seen at start; ``feed.lag``
    is refreshed every second. The broker may hold a fetch only ``poll_timeout_ms`` (:data:`FEED_POLL_MS`),
    not kafka-python's default 500 ms, which would show up directly in event/item freshness. A broker
    hiccup must not kill serving: errors are logged in ``feed.last_error`` and the consumer is
    rebuilt after a second.
    """
    from ingest.consumer_loop import ConsumerConfig, ContractConsumer

    while not feed._stop.is_set():
        try:
            with ContractConsumer(feed.kafka, topic,
                                  config=ConsumerConfig(max_batch=5000, poll_timeout_ms=feed.poll_timeout_ms,
                                                        fetch_max_wait_ms=feed.poll_timeout_ms)) as c:
                ends, last_lag = c.end_offsets(), 0.0
                while not feed._stop.is_set():
                    b = c.poll()
                    if b.messages:
                        feed.apply(b.records())
                    pos = c.positions()
                    if not feed._ready.is_set() and all(pos.get(p, 0) >= e for p, e in ends.items()):
                        feed._ready.set()
                    if time.monotonic() - last_lag > 1.0:
                        feed.lag, last_lag = sum(c.lag(pos).values()), time.monotonic()
        except Exception as e:  # noqa: BLE001 - retry after broker hiccups
            feed.last_error = f"{type(e).__name__}: {e}"
            log.warning("%s: %s; retrying", what, feed.last_error)
            feed._stop.wait(1.0)


class _FeedThread:
    """What every feed shares: a daemon thread running ``_run``, a stop flag, a caught-up flag,
    and the counters serving reports (``applied``, ``lag``, ``last_error``)."""

    def __init__(self, name: str) -> None:
        self.applied = 0
        self.lag = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self):
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float = 30.0) -> bool:
        return self._ready.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class ItemFeed(_FeedThread):
    """Thread that applies ``item-events`` to a :class:`LiveCatalog` (from the beginning)."""

    def __init__(self, kafka, catalog: LiveCatalog, assigner: SidAssigner, poll_timeout_ms: int = FEED_POLL_MS):
        super().__init__("item-feed")
        self.kafka, self.catalog, self.assigner = kafka, catalog, assigner
        self.poll_timeout_ms = poll_timeout_ms

    def apply(self, events: Sequence[ItemEvent]) -> None:
        ups = [e for e in events if e.op == "upsert"]
        ret = [e.item_id for e in events if e.op == "retire"]
        codes = self.assigner(ups) if ups else None     # [N, D-1], outside the lock (a tokenizer may be slow)
        with self.catalog.lock:
            if ups:
                self.catalog.upsert([e.item_id for e in ups], codes)
            if ret:
                self.catalog.retire(ret)
        self.applied += len(events)

    def _run(self) -> None:
        _follow_topic(self, ITEM_EVENTS, "item feed")


class DeltaFeed(_FeedThread):
    """Thread that keeps a :class:`LiveCatalog` equal to the item indexer's catalog (ids, indices, SIDs, live).

    The indexer (:mod:`actors.item_indexer`) publishes versioned catalog deltas;
    this feed asks ``source.delta_since(catalog.version)`` every ``poll_s`` and
    applies what came (:meth:`models.sid.catalog.Catalog.apply`), so an item
    posted to ``/v1/items`` is served under the SID the tokenizer gave it, not a
    hash. ``source`` is the indexer itself (in-process) or its Ray actor handle.
    The catalog is loaded from a ``snapshot()`` instead when deltas cannot
    bring it up to date: it holds items of its own at start (a seed), the
    indexer dropped the ops since its version from the log, or the indexer is
    behind it (restarted from an older checkpoint). Same surface as
    :class:`ItemFeed` (``start``, ``wait_caught_up``, ``lag`` in versions,
    ``applied``, ``last_error``, ``stop``).
    """

    def __init__(self, source, catalog: LiveCatalog, poll_s: float = 0.02):
        super().__init__("delta-feed")
        self.source, self.catalog, self.poll_s = source, catalog, poll_s
        self._from_snapshot = catalog.num_indexed > 0   # items not from this indexer: deltas cannot apply
        self.version = 0 if self._from_snapshot else catalog.version   # the indexer version the catalog reflects

    def _call(self, method: str, *args):
        fn = getattr(self.source, method)
        if hasattr(fn, "remote"):            # a Ray actor handle
            import ray

            return ray.get(fn.remote(*args), timeout=30)
        return fn(*args)

    def step(self) -> int:
        """Fetch and apply one delta (or a snapshot, see the class); returns how many ops or items it held."""
        if self._from_snapshot:
            return self._load_snapshot()
        try:
            delta = self._call("delta_since", self.catalog.version)
            with self.catalog.lock:
                self.catalog.apply(delta)
        except ValueError as e:              # "... reload a snapshot": deltas cannot bring this catalog up to date
            if "snapshot" not in str(e):
                raise
            return self._load_snapshot()
        self.applied += len(delta)
        self.version = self.catalog.version
        self.lag = 0
        return len(delta)

    def _load_snapshot(self) -> int:
        blob = self._call("snapshot")
        with self.catalog.lock:
            self.catalog.load_snapshot(blob)
            n = self.catalog.num_indexed
        self._from_snapshot = False
        self.version = self.catalog.version
        self.applied += n
        return n

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
                self._ready.set()
            except Exception as e:  # noqa: BLE001 - indexer restarting / unreachable: retry, keep serving
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("delta feed: %s; retrying", self.last_error)
                self._stop.wait(1.0)
                continue
            self._stop.wait(self.poll_s)


# ---- histories -------------------------------------------------------------------------------

@dataclass
class UserHistory:
    """One user's recent events, oldest first."""

    item_ids: list[str] = field(default_factory=list)
    types: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # EVENT_TYPES index
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))     # ms


class HistorySource(Protocol):
    def histories(self, user_ids: Sequence[str]) -> list[UserHistory]: ...

    def status(self) -> dict: ...


class ShardHistory:
    """Histories from the sequence shard actors, found by name; batched per shard.

    Invariant: a read never waits longer than ``timeout_s``. A shard that has not answered by then (killed
    and restarting, its node lost) leaves its users with an empty history, so their request is answered
    with a cold-start session instead of timing out; ``status()`` counts such reads (``degraded_reads``,
    ``degraded_users``) and a warning is logged at most every ``WARN_EVERY_S``.
    """

    WARN_EVERY_S = 10.0

    def __init__(self, shard_names: Sequence[str], num_partitions: int, namespace: str | None = None,
                 max_len: int = 50, timeout_s: float = 1.0):
        self.shard_names, self.num_partitions = list(shard_names), num_partitions
        self.namespace, self.max_len, self.timeout_s = namespace, max_len, timeout_s
        self._router = None
        self.degraded_reads = self.degraded_users = 0
        self._warned_at = -1e18

    def _get_router(self):
        if self._router is None:
            from actors.router import SequenceRouter

            self._router = SequenceRouter.from_spec({"names": self.shard_names, "namespace": self.namespace,
                                                     "num_partitions": self.num_partitions})
        return self._router

    def histories(self, user_ids: Sequence[str]) -> list[UserHistory]:
        h = self._get_router().histories(list(user_ids), self.max_len, timeout_s=self.timeout_s, partial=True)
        if len(h["missing"]):
            self.degraded_reads += 1
            self.degraded_users += len(h["missing"])
            now = time.monotonic()
            if now - self._warned_at >= self.WARN_EVERY_S:
                self._warned_at = now
                log.warning("%d of %d users served without history: a sequence shard did not answer in %.1f s "
                            "(%d degraded reads so far)", len(h["missing"]), len(user_ids), self.timeout_s,
                            self.degraded_reads)
        vocab = h["item_ids"]
        out = []
        for b in range(len(user_ids)):
            m = h["mask"][b]
            out.append(UserHistory([vocab[i] for i in h["items"][b][m].tolist()],
                                   h["event_type"][b][m].astype(np.int64), h["ts"][b][m].astype(np.int64)))
        return out

    def status(self) -> dict:
        import ray

        counts = {"degraded_reads": self.degraded_reads, "degraded_users": self.degraded_users}
        try:
            rows = ray.get([s.status.remote() for s in self._get_router().shards], timeout=5)
            return {"source": "shards", "lag": int(sum(r.get("lag", 0) for r in rows)),
                    "users": int(sum(r.get("users", 0) for r in rows)), **counts}
        except Exception as e:  # noqa: BLE001 - status must never fail a scrape
            return {"source": "shards", "error": f"{type(e).__name__}: {e}", **counts}


class KafkaHistory(_FeedThread):
    """In-process histories folded from ``user-events`` (a stand-alone serving process, tests).

    Keeps the last ``max_len`` events per user in a deque; events are
    de-duplicated by ``event_id`` within that window.
    """

    def __init__(self, kafka, max_len: int = 50, poll_timeout_ms: int = FEED_POLL_MS):
        super().__init__("history-feed")
        self.kafka, self.max_len, self.poll_timeout_ms = kafka, max_len, poll_timeout_ms
        self._users: dict[str, deque] = {}
        self._lock = threading.Lock()

    def apply(self, events: Sequence[UserEvent]) -> None:
        with self._lock:
            for e in events:
                q = self._users.get(e.user_id)
                if q is None:
                    q = self._users[e.user_id] = deque(maxlen=self.max_len)
                if any(x[3] == e.event_id for x in q):
                    continue
                q.append((e.item_id, _TYPE_INDEX[e.type], e.ts, e.event_id))
                self.applied += 1

    def histories(self, user_ids: Sequence[str]) -> list[UserHistory]:
        out = []
        with self._lock:
            for u in user_ids:
                q = list(self._users.get(u, ()))
                out.append(UserHistory([x[0] for x in q], np.asarray([x[1] for x in q], np.int64),
                                       np.asarray([x[2] for x in q], np.int64)))
        return out

    def _run(self) -> None:
        _follow_topic(self, USER_EVENTS, "history feed")

    def status(self) -> dict:
        return {"source": "kafka", "lag": int(self.lag), "users": len(self._users), "applied": self.applied,
                "last_error": self.last_error}
