"""What a recommender replica keeps live: the servable catalog and where histories come from.

* :class:`LiveCatalog` — item id ↔ item index ↔ semantic ID, the prefix trie
  that constrains decoding (:class:`models.sid_trie.SidTrie`) and the SID range
  index used for bans. Items are added and retired in place while requests
  are decoded (a lock orders them); an item's SID is stable once assigned.
* :class:`ItemFeed` — a thread that follows ``item-events`` (from the
  beginning) and applies them to the catalog, giving new items a SID with a
  :class:`SidAssigner` (the tokenizer in production, a hash in tests). This is
  what makes an item posted to ``/v1/items`` recommendable within a second.
* :class:`DeltaFeed` — instead of :class:`ItemFeed` when an item indexer runs:
  follows the indexer's versioned catalog deltas, so serving uses the
  indexer's SIDs (the tokenizer's codes), applied with :meth:`LiveCatalog.apply_delta`.
* History sources — :class:`ShardHistory` reads the sequence shard actors
  (batched, one Ray call per shard, DESIGN §4); :class:`KafkaHistory` folds
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

class LiveCatalog:
    """Servable items with their SIDs, the decoding trie and a ban index; thread-safe.

    ``level_sizes`` include the de-duplication level (D = len(level_sizes)).
    New items get the smallest free dedup code under their prefix (as
    :func:`models.sid_dedup.assign_unique` does offline); an item whose prefix
    is full is rejected with a reason instead of colliding.
    """

    def __init__(self, level_sizes: Sequence[int]):
        from models.sid_trie import SidTrie

        self.level_sizes = tuple(int(k) for k in level_sizes)
        self.D = len(self.level_sizes)
        self.lock = threading.RLock()
        self.trie = SidTrie(self.level_sizes)
        self.item_ids: list[str] = []
        self.index: dict[str, int] = {}
        self.sids = np.zeros((0, self.D), np.int64)     # [N, D]
        self.live = np.zeros(0, bool)                   # [N]
        self._next_dedup: dict[tuple, int] = {}
        self._taken: set[tuple] = set()
        self.version = 0
        self._range_index = None
        self._range_version = -1
        self.rejected = 0
        self.rejections: dict[str, str] = {}   # item_id -> reason (bounded)

    def __len__(self) -> int:
        return int(self.live.sum())

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def _grow(self, n: int) -> None:
        if n > len(self.sids):
            cap = max(n, 2 * len(self.sids), 1024)
            s = np.full((cap, self.D), -1, np.int64)
            s[:len(self.sids)] = self.sids
            lv = np.zeros(cap, bool)
            lv[:len(self.live)] = self.live
            self.sids, self.live = s, lv

    def add_with_sids(self, item_ids: Sequence[str], sids: np.ndarray) -> list[str]:
        """Add items whose full SIDs [N, D] are already known (a tokenizer's catalog, a delta)."""
        sids = np.asarray(sids, np.int64).reshape(-1, self.D)
        added = []
        with self.lock:
            new_idx, new_sids = [], []
            for iid, sid in zip(item_ids, sids):
                idx = self.index.get(iid)
                if idx is not None and self.live[idx]:
                    continue
                if idx is None:
                    idx = len(self.item_ids)
                    self._grow(idx + 1)
                    self.item_ids.append(iid)
                    self.index[iid] = idx
                    self.sids[idx] = sid
                    key = tuple(sid.tolist())
                    self._taken.add(key)
                    p = key[:-1]
                    self._next_dedup[p] = max(self._next_dedup.get(p, 0), key[-1] + 1)
                self.live[idx] = True
                new_idx.append(idx)
                new_sids.append(self.sids[idx])
                added.append(iid)
            if new_idx:
                self.trie.add(np.stack(new_sids), np.asarray(new_idx, np.int64))
                self.version += 1
        return added

    def upsert(self, item_ids: Sequence[str], codes: np.ndarray) -> tuple[list[str], dict[str, str]]:
        """Add new items from their non-dedup ``codes`` [N, D-1]; known items keep their SID.

        Returns ``(added, rejected {item_id: reason})``.
        """
        codes = np.asarray(codes, np.int64).reshape(-1, self.D - 1)
        ids, full, rejected = [], [], {}
        with self.lock:
            for iid, c in zip(item_ids, codes):
                idx = self.index.get(iid)
                if idx is not None:
                    if not self.live[idx]:  # un-retire: same SID as before
                        ids.append(iid)
                        full.append(self.sids[idx])
                    continue
                p = tuple(c.tolist())
                d = self._next_dedup.get(p, 0)
                while d < self.level_sizes[-1] and p + (d,) in self._taken:
                    d += 1
                if d >= self.level_sizes[-1]:
                    rejected[iid] = (f"SID prefix {p} already holds {self.level_sizes[-1]} items "
                                     "(dedup level full); widen the last level")
                    self.rejected += 1
                    if len(self.rejections) < 100_000:
                        self.rejections[iid] = rejected[iid]
                    continue
                self._next_dedup[p] = d + 1
                ids.append(iid)
                full.append(np.asarray(p + (d,), np.int64))
            added = self.add_with_sids(ids, np.stack(full)) if ids else []
        return added, rejected

    def retire(self, item_ids: Sequence[str]) -> list[str]:
        """Remove items from what can be recommended (their SID stays reserved)."""
        gone = []
        with self.lock:
            idx = [self.index[i] for i in item_ids if i in self.index and self.live[self.index[i]]]
            if idx:
                self.trie.remove(np.asarray(idx, np.int64))
                self.live[idx] = False
                self.version += 1
                gone = [self.item_ids[i] for i in idx]
        return gone

    def apply_delta(self, delta) -> None:
        """Apply a :class:`models.catalog.CatalogDelta` (ops add/update/retire) from the item indexer.

        Ops apply in their order (an item retired and re-added within one delta ends live), in runs
        of adds and runs of retires. The SIDs are the indexer's: an add (or un-retire) puts the item
        into the trie under exactly that SID; an update keeps it (SIDs are stable).
        """
        from models.catalog import OP_RETIRE

        ops = np.asarray(delta.ops)
        sids = np.asarray(delta.sids, np.int64).reshape(-1, self.D)
        with self.lock:
            start = 0
            for j in range(1, len(ops) + 1):
                if j < len(ops) and (ops[j] == OP_RETIRE) == (ops[start] == OP_RETIRE):
                    continue
                ids = list(delta.item_ids[start:j])
                if ops[start] == OP_RETIRE:
                    self.retire(ids)
                else:
                    self.add_with_sids(ids, sids[start:j])
                start = j

    def state_of(self, item_id: str) -> tuple[str, str | None]:
        """``("live" | "retired" | "rejected" | "unknown", reason)`` of an item."""
        idx = self.index.get(item_id)
        if idx is not None:
            return ("live" if self.live[idx] else "retired"), None
        if item_id in self.rejections:
            return "rejected", self.rejections[item_id]
        return "unknown", None

    def is_live(self, item_id: str) -> bool:
        idx = self.index.get(item_id)
        return idx is not None and bool(self.live[idx])

    def indices_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Item indices of ids (-1 for unknown)."""
        return np.asarray([self.index.get(i, -1) for i in item_ids], np.int64)

    def item_sids(self) -> np.ndarray:
        """SID of every item index [N, D] (retired items included: histories may hold them)."""
        return self.sids[:len(self.item_ids)]

    def range_index(self):
        """The :class:`models.decoding.SidRangeIndex` of the live items (cached per version)."""
        from models.decoding import SidRangeIndex

        with self.lock:
            if self._range_version != self.version:
                live = np.flatnonzero(self.live[:self.n_items])
                self._range_index = SidRangeIndex(self.level_sizes, self.sids[live], live, self.n_items)
                self._range_version = self.version
            return self._range_index


# ---- following item-events -------------------------------------------------------------------

#: How long the broker may hold a feed's fetch (and so how often an idle feed thread wakes). tansu
#: answers a fetch only when this wait ends, even when data arrived meanwhile, so it bounds how stale
#: a feed is; but every wake-up takes the GIL in the serving replica. Measured there (one script, idle
#: replica): 20 ms polls cost each of the two feeds ~10 % of a core and made a trivial call to the replica
#: 10 ms instead of 5.7 ms and the same decode 70 ms instead of 28 ms; 100 ms polls keep event → next
#: recommendation p99 at ~120-140 ms (target 1 s, benchmark ``serving``).
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
        if ups:
            self.catalog.upsert([e.item_id for e in ups], self.assigner(ups))
        if ret:
            self.catalog.retire(ret)
        self.applied += len(events)

    def _run(self) -> None:
        _follow_topic(self, ITEM_EVENTS, "item feed")


class DeltaFeed(_FeedThread):
    """Thread that keeps a :class:`LiveCatalog` equal to the item indexer's catalog (its SIDs, live).

    The indexer (:mod:`actors.item_indexer`) publishes versioned catalog deltas;
    this feed asks ``source.delta_since(version)`` every ``poll_s`` and applies
    what came (:meth:`LiveCatalog.apply_delta`), so an item posted to
    ``/v1/items`` is served under the SID the tokenizer gave it, not a hash.
    ``source`` is the indexer itself (in-process) or its Ray actor handle; when
    the indexer has dropped the ops since our version from its log, the feed
    restarts from a ``snapshot()``. Same surface as :class:`ItemFeed`
    (``start``, ``wait_caught_up``, ``lag`` in versions, ``applied``, ``last_error``, ``stop``).
    """

    def __init__(self, source, catalog: LiveCatalog, poll_s: float = 0.02):
        super().__init__("delta-feed")
        self.source, self.catalog, self.poll_s = source, catalog, poll_s
        self.version = 0          # the indexer version this catalog reflects

    def _call(self, method: str, *args):
        fn = getattr(self.source, method)
        if hasattr(fn, "remote"):            # a Ray actor handle
            import ray

            return ray.get(fn.remote(*args), timeout=30)
        return fn(*args)

    def step(self) -> int:
        """Fetch and apply one delta; returns how many ops it held."""
        try:
            delta = self._call("delta_since", self.version)
        except ValueError as e:              # ops dropped from the indexer's log: start from a snapshot
            if "snapshot" not in str(e):
                raise
            return self._load_snapshot()
        if len(delta):
            width = np.asarray(delta.sids).reshape(len(delta), -1).shape[1]
            if width != self.catalog.D:
                raise ValueError(f"the indexer's SIDs have {width} levels but this catalog has level_sizes "
                                 f"{self.catalog.level_sizes}; serve with the indexer tokenizer's level sizes")
            self.catalog.apply_delta(delta)
            self.applied += len(delta)
        self.version = int(delta.to_version)
        self.lag = 0
        return len(delta)

    def _load_snapshot(self) -> int:
        from models.catalog import Catalog

        cat = Catalog.from_bytes(self._call("snapshot"))
        ids = cat.item_ids(np.arange(cat.num_indexed))
        live = [i for i in ids if cat.is_live(i)]
        gone = [i for i in ids if not cat.is_live(i)]
        if live:
            self.catalog.add_with_sids(live, np.stack([cat.sid_of(i) for i in live]))
        if gone:
            self.catalog.retire(gone)
        self.version = int(cat.version)
        self.applied += len(ids)
        return len(ids)

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
    """Histories from the sequence shard actors (issue 3), found by name; batched per shard."""

    def __init__(self, shard_names: Sequence[str], num_partitions: int, namespace: str | None = None,
                 max_len: int = 50):
        self.shard_names, self.num_partitions = list(shard_names), num_partitions
        self.namespace, self.max_len = namespace, max_len
        self._router = None

    def _get_router(self):
        if self._router is None:
            from actors.router import SequenceRouter

            self._router = SequenceRouter.from_spec({"names": self.shard_names, "namespace": self.namespace,
                                                     "num_partitions": self.num_partitions})
        return self._router

    def histories(self, user_ids: Sequence[str]) -> list[UserHistory]:
        h = self._get_router().histories(list(user_ids), self.max_len)
        vocab = h["item_ids"]
        out = []
        for b in range(len(user_ids)):
            m = h["mask"][b]
            out.append(UserHistory([vocab[i] for i in h["items"][b][m].tolist()],
                                   h["event_type"][b][m].astype(np.int64), h["ts"][b][m].astype(np.int64)))
        return out

    def status(self) -> dict:
        import ray

        try:
            rows = ray.get([s.status.remote() for s in self._get_router().shards], timeout=5)
            return {"source": "shards", "lag": int(sum(r.get("lag", 0) for r in rows)),
                    "users": int(sum(r.get("users", 0) for r in rows))}
        except Exception as e:  # noqa: BLE001 - status must never fail a scrape
            return {"source": "shards", "error": f"{type(e).__name__}: {e}"}


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
