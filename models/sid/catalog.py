"""The item catalog: item_id ↔ item index ↔ semantic ID, the SID trie, and a faiss index.

One object answers everything the recommender needs to know about items:

* **tables** — dense item indices (never reused), their string ids, SIDs
  ``[N, D]`` and embeddings ``[N, E]``;
* **trie** (models/sid/trie.py) over the SIDs of *live* items, for
  constrained decoding;
* **faiss index** over the live items' (L2-normalised) embeddings, inner
  product = cosine, for dense retrieval and nearest neighbours (none when
  ``CatalogConfig.dim`` is 0: a serving replica holds SIDs only); with
  ``CatalogConfig.use_gpu`` and a GPU faiss build, searches run on a GPU copy
  refreshed lazily after changes (the CPU index stays the source of truth,
  since GPU flat indexes cannot remove ids);
* **stable SID assignment** — an item keeps its SID for as long as the
  catalog lives (a retired item that comes back gets the same one); a new
  item takes the first of its candidate prefixes (tokenizer's
  ``encode_candidates``) with a free de-duplication slot (models/sid/dedup.py),
  or is rejected with a reason (``state_of``) when all of them are full;
* **versioned deltas** — every change is an op in a log; ``delta_since(v)``
  gives the ops after version ``v`` and ``apply(delta)`` replays them
  (idempotently), so a serving replica that applies every delta is identical
  to the writer (``fingerprint()`` proves it); one that starts late or falls
  behind the log first takes a snapshot (``load_snapshot``).

The indexer (actors/item_indexer.py) writes one; every serving replica
(serving/live_state.py) holds another, fed by the indexer's deltas or by its
own upserts: one implementation of id ↔ index ↔ SID, dedup and trie upkeep.

Pure: no files or sockets. ``to_bytes()/from_bytes()`` give a snapshot in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np

from models.sid.dedup import DedupAllocator, SidSpaceFull
from models.sid.trie import SidTrie

OP_ADD, OP_UPDATE, OP_RETIRE = 0, 1, 2
_OP_NAMES = {OP_ADD: "add", OP_UPDATE: "update", OP_RETIRE: "retire"}

#: Rejection reasons kept for ``state_of`` (a flood of bad items must not grow memory without bound;
#: ``Catalog.rejected`` keeps counting past it).
MAX_REJECTIONS = 100_000


@dataclass(frozen=True)
class CatalogConfig:
    """``level_sizes`` are the SID's codes per level *including* the de-duplication level.

    ``dim`` is the embedding dimension; 0 makes a catalog without embeddings (SIDs only, no faiss
    index): a serving replica, whose new items come with codes but no embedding.
    """

    level_sizes: tuple[int, ...]
    dim: int
    use_gpu: bool = False
    max_log: int = 1_000_000     # ops kept for delta_since; older replicas reload a snapshot

    def __post_init__(self) -> None:
        if len(self.level_sizes) < 2 or any(int(k) < 1 for k in self.level_sizes):
            raise ValueError(f"CatalogConfig.level_sizes={self.level_sizes!r}: need >= 2 positive sizes "
                             "(L codebook levels + the de-duplication level), e.g. tokenizer.sid_level_sizes")
        if self.dim < 0:
            raise ValueError(f"CatalogConfig.dim={self.dim} must be the embedding dimension (e.g. 384), "
                             "or 0 for a catalog without embeddings")
        if self.max_log < 1:
            raise ValueError(f"CatalogConfig.max_log={self.max_log} must be >= 1")


@dataclass
class CatalogDelta:
    """Ops that take a catalog from ``from_version`` to ``to_version`` (one op = one version)."""

    from_version: int
    to_version: int
    ops: np.ndarray                         # [M] int8: OP_ADD / OP_UPDATE / OP_RETIRE
    item_ids: list[str]                     # [M]
    idx: np.ndarray                         # [M] int64 item index
    sids: np.ndarray                        # [M, D] int64 (-1 rows for retire)
    emb: np.ndarray                         # [M, E] float32 (zeros for retire)
    content_keys: list[str] = field(default_factory=list)   # [M]

    def __len__(self) -> int:
        return int(self.ops.shape[0])

    def counts(self) -> dict[str, int]:
        return {name: int((self.ops == op).sum()) for op, name in _OP_NAMES.items()}


@dataclass
class UpsertResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)   # item_id -> reason


class Catalog:
    """Items, their SIDs, the trie and the embedding index, with a versioned change log.

    Not thread-safe: a caller that reads while another thread writes holds its own lock
    (the indexer's ``lock``, serving's ``LiveCatalog.lock``).
    """

    def __init__(self, config: CatalogConfig):
        self.config = config
        self.level_sizes = tuple(int(k) for k in config.level_sizes)
        self.depth = len(self.level_sizes)
        self.dim = int(config.dim)
        self.trie = SidTrie(self.level_sizes)
        self._alloc = DedupAllocator(self.level_sizes[-1])
        self._ids: list[str] = []
        self._index_of: dict[str, int] = {}
        self._sids = np.full((0, self.depth), -1, dtype=np.int64)
        self._emb = np.zeros((0, self.dim), dtype=np.float32)
        self._live = np.zeros(0, dtype=bool)
        self._content: list[str] = []
        self.version = 0
        self._log: list[tuple] = []        # (op, item_id, idx, sid, emb, content_key)
        self._log_start = 0                # version of the first op in _log
        self._faiss = self._new_index()
        self.rejected = 0                  # items ever rejected (no free SID); not replicated by deltas
        self.rejections: dict[str, str] = {}   # item_id -> reason, at most MAX_REJECTIONS

    # ---------------------------------------------------------------- basics
    def _new_index(self):
        """CPU index (supports remove/reconstruct); a GPU copy serves searches when configured.

        None without embeddings (``dim`` 0).
        """
        self._gpu_index = None
        self._gpu_dirty = True
        if not self.dim:
            return None
        import faiss   # here, not at the top: a catalog without embeddings (serving) never loads it

        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _search_index(self):
        if self._faiss is None:
            raise ValueError("this catalog holds no embeddings (CatalogConfig.dim=0): nothing to search; "
                             "ask the item indexer's catalog")
        import faiss

        if not self.config.use_gpu or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
            return self._faiss
        if self._gpu_index is None or self._gpu_dirty:     # rebuilt lazily after changes
            if not hasattr(self, "_gpu_res"):
                self._gpu_res = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, self._faiss)
            self._gpu_dirty = False
        return self._gpu_index

    def __len__(self) -> int:
        """Number of live items."""
        return int(self._live.sum())

    @property
    def num_indexed(self) -> int:
        """Items ever seen (live or retired): the size of the item-index space."""
        return len(self._ids)

    def index_of(self, item_id: str) -> int | None:
        return self._index_of.get(item_id)

    def item_id(self, idx: int) -> str:
        return self._ids[int(idx)]

    def item_ids(self, idx) -> list[str]:
        return [self._ids[int(i)] for i in np.asarray(idx).reshape(-1)]

    def indices_of(self, item_ids) -> np.ndarray:
        """Item index of each id [N] -> [N] int64, -1 for ids this catalog never indexed."""
        return np.asarray([self._index_of.get(i, -1) for i in item_ids], dtype=np.int64)

    def is_live(self, item_id: str) -> bool:
        i = self._index_of.get(item_id)
        return i is not None and bool(self._live[i])

    def state_of(self, item_id: str) -> tuple[str, str | None]:
        """``("live" | "retired" | "rejected" | "unknown", reason)``; a reason only for a rejected item."""
        i = self._index_of.get(item_id)
        if i is not None:
            return ("live" if self._live[i] else "retired"), None
        if item_id in self.rejections:
            return "rejected", self.rejections[item_id]
        return "unknown", None

    def live_indices(self) -> np.ndarray:
        return np.flatnonzero(self._live).astype(np.int64)

    def content_key(self, idx: int) -> str:
        """The content hash stored with item ``idx`` (what makes re-sends idempotent)."""
        return self._content[int(idx)]

    def sid_of(self, item_id: str) -> np.ndarray | None:
        i = self._index_of.get(item_id)
        return None if i is None else self._sids[i].copy()

    def sids(self, idx=None) -> np.ndarray:
        """SIDs of item indices [N] -> [N, D]; all indexed items (retired too) when ``idx`` is None.

        The whole table comes as a read-only view, not a copy (serving reads it per request): rows never
        change once assigned, since SIDs are stable.
        """
        if idx is not None:
            return self._sids[np.asarray(idx, dtype=np.int64)]
        view = self._sids[:len(self._ids)]
        view.flags.writeable = False
        return view

    def embeddings(self, idx=None) -> np.ndarray:
        n = len(self._ids)
        return self._emb[:n].copy() if idx is None else self._emb[np.asarray(idx, dtype=np.int64)]

    def lookup_sids(self, sids: np.ndarray) -> np.ndarray:
        """Live item index of each full SID [N, D] -> [N], -1 where none."""
        return self.trie.lookup(sids)

    # ---------------------------------------------------------------- writes
    def _grow(self, n_new: int) -> None:
        need = len(self._ids) + n_new
        cap = self._sids.shape[0]
        if need <= cap:
            return
        new = max(need, 2 * cap, 64)
        sids = np.full((new, self.depth), -1, dtype=np.int64)
        sids[:cap] = self._sids
        emb = np.zeros((new, self.dim), dtype=np.float32)
        emb[:cap] = self._emb
        live = np.zeros(new, dtype=bool)
        live[:cap] = self._live
        self._sids, self._emb, self._live = sids, emb, live

    def _record(self, op: int, item_id: str, idx: int, sid, emb, key: str) -> None:
        self._log.append((op, item_id, idx, sid, emb, key))
        self.version += 1
        if len(self._log) > self.config.max_log:
            drop = len(self._log) - self.config.max_log
            del self._log[:drop]
            self._log_start += drop

    def upsert(self, item_ids: list[str], candidates: np.ndarray, emb: np.ndarray | None = None,
               content_keys: list[str] | None = None) -> UpsertResult:
        """Add new items, refresh changed ones, re-activate returning ones.

        ``candidates`` [N, C, L] are each item's preferred L-code prefixes in
        order (the tokenizer's ``encode_candidates``; [N, L] means one each);
        ``emb`` [N, E] its embedding (None in a catalog without embeddings);
        ``content_keys`` a content hash: an upsert whose key matches the stored
        one is a no-op (idempotent re-delivery). A known item keeps its SID
        whatever the candidates say; a new one whose candidate prefixes are all
        full is rejected with a reason (``res.rejected``, ``state_of``).
        """
        cands = np.asarray(candidates, dtype=np.int64)
        if cands.ndim == 2:
            cands = cands[:, None, :]
        n = len(item_ids)
        if cands.ndim != 3 or cands.shape[0] != n or cands.shape[2] != self.depth - 1:
            raise ValueError(f"upsert of {n} items got candidates {cands.shape} (want [N, C, {self.depth - 1}])")
        emb, keys = self._checked_emb(emb, n, content_keys)
        res = UpsertResult()
        add_idx, upd_idx = [], []
        for i, iid in enumerate(item_ids):
            idx = self._index_of.get(iid)
            if idx is not None and self._live[idx] and self._content[idx] == keys[i]:
                res.unchanged.append(iid)
                continue
            if idx is not None and self._live[idx]:                 # changed content: same SID
                self._emb[idx] = emb[i]
                self._content[idx] = keys[i]
                upd_idx.append(idx)
                self._record(OP_UPDATE, iid, idx, self._sids[idx].copy(), emb[i].copy(), keys[i])
                res.updated.append(iid)
                continue
            if idx is None:                                         # brand new: allocate a SID
                free = [c for c in cands[i] if self._alloc.free_slots(c) > 0]
                if not free:
                    self._reject(res, iid, f"no free de-duplication slot in any of its {cands.shape[1]} candidate "
                                           f"SID prefixes {cands[i].tolist()} (dedup level full: "
                                           f"{self.level_sizes[-1]} codes); widen the last level")
                    continue
                idx = self._append(iid, self._alloc.allocate(free[0][None, :])[0])
            self._activate(idx, emb[i], keys[i])
            add_idx.append(idx)
            res.added.append(iid)
        self._apply_index(add_idx, upd_idx)
        return res

    def add_with_sids(self, item_ids: list[str], sids: np.ndarray, emb: np.ndarray | None = None,
                      content_keys: list[str] | None = None) -> UpsertResult:
        """Add items whose full SIDs ``sids`` [N, D] are already known (a tokenizer's catalog, a seed).

        Their de-duplication slots are reserved, so later upserts allocate after them. A known item
        keeps its own SID (SIDs are stable): a retired one comes back under it, a live one is
        ``unchanged``; a new item whose SID another live item holds is rejected.
        """
        sids = np.asarray(sids, dtype=np.int64).reshape(-1, self.depth)
        n = len(item_ids)
        if sids.shape[0] != n:
            raise ValueError(f"add_with_sids of {n} items got {sids.shape[0]} SID rows")
        lim = np.asarray(self.level_sizes, dtype=np.int64)
        if ((sids < 0) | (sids >= lim)).any():
            raise ValueError(f"add_with_sids: a SID lies outside level_sizes={self.level_sizes}; "
                             "fix the tokenizer or level_sizes")
        emb, keys = self._checked_emb(emb, n, content_keys)
        holder = self.trie.lookup(sids) if n else np.zeros(0, dtype=np.int64)   # [N] live item at each SID
        claimed: set[tuple] = set()
        res = UpsertResult()
        add_idx = []
        for i, iid in enumerate(item_ids):
            idx = self._index_of.get(iid)
            if idx is not None and self._live[idx]:
                res.unchanged.append(iid)
                continue
            if idx is None:
                sid = tuple(sids[i].tolist())
                if holder[i] >= 0 or sid in claimed:
                    self._reject(res, iid, f"SID {list(sid)} is already held by another live item; "
                                           "SIDs must be unique (resolve with the de-duplication level)")
                    continue
                claimed.add(sid)
                self._alloc.reserve(sids[i][None, :])
                idx = self._append(iid, sids[i])
            self._activate(idx, emb[i], keys[i])
            add_idx.append(idx)
            res.added.append(iid)
        self._apply_index(add_idx, [])
        return res

    def _checked_emb(self, emb, n: int, content_keys) -> tuple[np.ndarray, list[str]]:
        """(unit-norm embeddings [N, E], content keys [N]) of an upsert; ``emb`` None only when ``dim`` is 0."""
        if emb is None and self.dim:
            raise ValueError(f"this catalog indexes {self.dim}-d embeddings: pass emb [N, {self.dim}]")
        emb = np.zeros((n, 0), dtype=np.float32) if emb is None else np.asarray(emb, dtype=np.float32)
        if emb.shape != (n, self.dim):
            raise ValueError(f"{n} items got emb {emb.shape} (want [N, {self.dim}])")
        keys = list(content_keys) if content_keys is not None else [_emb_key(e) for e in emb]
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12), keys

    def _append(self, item_id: str, sid: np.ndarray) -> int:
        """A new item index for ``item_id`` under ``sid`` [D] (not live yet); indices are never reused."""
        self._grow(1)
        idx = len(self._ids)
        self._ids.append(item_id)
        self._content.append("")
        self._index_of[item_id] = idx
        self._sids[idx] = sid
        self.rejections.pop(item_id, None)   # rejected earlier, placed now (e.g. under another candidate)
        return idx

    def _activate(self, idx: int, emb: np.ndarray, key: str) -> None:
        """Make item ``idx`` live with embedding ``emb`` [E] and log the add (the caller indexes it)."""
        self._emb[idx] = emb
        self._content[idx] = key
        self._live[idx] = True
        self._record(OP_ADD, self._ids[idx], idx, self._sids[idx].copy(), emb.copy(), key)

    def _reject(self, res: UpsertResult, item_id: str, reason: str) -> None:
        res.rejected[item_id] = reason
        self.rejected += 1
        if len(self.rejections) < MAX_REJECTIONS or item_id in self.rejections:
            self.rejections[item_id] = reason

    def _apply_index(self, add_idx: list[int], upd_idx: list[int]) -> None:
        self._gpu_dirty = True
        upd_idx = sorted(set(upd_idx) - set(add_idx))   # an item added in this batch is indexed once, below
        if upd_idx and self._faiss is not None:
            ids = np.asarray(upd_idx, dtype=np.int64)
            self._faiss.remove_ids(ids)
            self._faiss.add_with_ids(self._emb[ids], ids)
        if add_idx:
            ids = np.asarray(sorted(set(add_idx)), dtype=np.int64)
            self.trie.add(self._sids[ids], ids)
            if self._faiss is not None:
                self._faiss.add_with_ids(self._emb[ids], ids)

    def retire(self, item_ids: list[str]) -> list[str]:
        """Take items out of the trie and the index (their SIDs stay reserved). Returns those retired."""
        gone = []
        for iid in item_ids:
            idx = self._index_of.get(iid)
            if idx is None or not self._live[idx]:
                continue
            self._live[idx] = False
            gone.append(idx)
            self._record(OP_RETIRE, iid, idx, np.full(self.depth, -1, dtype=np.int64),
                         np.zeros(self.dim, dtype=np.float32), "")
        self._remove_index(gone)
        return [self._ids[i] for i in gone]

    def _remove_index(self, idx: list[int]) -> None:
        self._gpu_dirty = True
        if idx:
            ids = np.asarray(idx, dtype=np.int64)
            self.trie.remove(ids)
            if self._faiss is not None:
                self._faiss.remove_ids(ids)

    # ---------------------------------------------------------------- deltas
    def delta_since(self, version: int) -> CatalogDelta:
        """Ops after ``version``; ValueError when they have left the log (reload a snapshot)."""
        if version > self.version or version < 0:
            raise ValueError(f"version {version} is not in [0, {self.version}] (the reader is ahead, e.g. the "
                             "writer restarted from an older checkpoint); reload a snapshot")
        if version < self._log_start:
            raise ValueError(f"ops since version {version} were dropped from the log (it starts at "
                             f"{self._log_start}); reload a snapshot with Catalog.load_snapshot")
        ops = self._log[version - self._log_start:]
        return CatalogDelta(
            from_version=version, to_version=self.version,
            ops=np.asarray([o[0] for o in ops], dtype=np.int8),
            item_ids=[o[1] for o in ops],
            idx=np.asarray([o[2] for o in ops], dtype=np.int64),
            sids=np.asarray([o[3] for o in ops], dtype=np.int64).reshape(len(ops), self.depth),
            emb=np.asarray([o[4] for o in ops], dtype=np.float32).reshape(len(ops), self.dim),
            content_keys=[o[5] for o in ops])

    def apply(self, delta: CatalogDelta) -> None:
        """Replay a writer's delta; afterwards this catalog equals the writer at ``to_version``.

        Idempotent: the ops this catalog already holds (versions up to ``self.version``) are skipped,
        so a delta fetched twice, or one overlapping the last, changes nothing twice. A delta that
        starts after ``self.version`` would leave a gap and raises. The writer's item indices are
        kept (a replica's indices equal the writer's); a catalog without embeddings drops the delta's.
        """
        if delta.from_version > self.version:
            raise ValueError(f"delta starts at version {delta.from_version} but this catalog is at "
                             f"{self.version}; ask for delta_since({self.version})")
        width = np.asarray(delta.sids).reshape(len(delta), -1).shape[1] if len(delta) else self.depth
        e_width = np.asarray(delta.emb).reshape(len(delta), -1).shape[1] if len(delta) else self.dim
        if width != self.depth or (self.dim and e_width != self.dim):
            raise ValueError(f"delta has {width}-level SIDs and {e_width}-d embeddings but this catalog has "
                             f"level_sizes={self.level_sizes} and dim={self.dim}; a replica needs the writer's "
                             "level_sizes (its tokenizer's sid_level_sizes)")
        add_idx: list[int] = []
        upd_idx: list[int] = []
        for j in range(self.version - delta.from_version, len(delta)):
            op, iid, idx = int(delta.ops[j]), delta.item_ids[j], int(delta.idx[j])
            key = delta.content_keys[j] if delta.content_keys else ""
            if op == OP_RETIRE:
                self._apply_index(add_idx, upd_idx)        # keep order: flush pending adds first
                add_idx, upd_idx = [], []
                self._live[idx] = False
                self._remove_index([idx])
            else:
                if idx == len(self._ids):
                    self._alloc.reserve(delta.sids[j][None, :])
                    self._append(iid, delta.sids[j])
                elif idx > len(self._ids) or self._ids[idx] != iid:
                    raise ValueError(f"delta op {j} puts {iid!r} at index {idx}, which does not match "
                                     "this catalog; it has diverged — reload a snapshot")
                if self.dim:
                    self._emb[idx] = delta.emb[j]
                self._content[idx] = key
                if op == OP_UPDATE:
                    upd_idx.append(idx)
                else:
                    self._live[idx] = True
                    add_idx.append(idx)
            e = np.zeros(self.dim, dtype=np.float32) if op == OP_RETIRE else self._emb[idx].copy()
            self._record(op, iid, idx, np.asarray(delta.sids[j], dtype=np.int64), e, key)
        self._apply_index(add_idx, upd_idx)

    # ---------------------------------------------------------------- queries
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top-k over live items.  queries [Q, E] -> (scores [Q, k], item idx [Q, k]; -1 pads)."""
        q = np.asarray(queries, dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = max(1, min(int(k), max(len(self), 1)))
        scores, idx = self._search_index().search(q, k)
        return scores, idx.astype(np.int64)

    def neighbours(self, item_id: str, k: int = 5) -> list[tuple[str, float]]:
        """Nearest live items to ``item_id`` by embedding (itself excluded)."""
        idx = self._index_of[item_id]
        scores, nn = self.search(self._emb[idx][None, :], k + 1)
        return [(self._ids[j], float(s)) for s, j in zip(scores[0], nn[0]) if j >= 0 and j != idx][:k]

    def in_index(self, item_id: str) -> bool:
        """True when the item is live in both the trie and the faiss index (the trie alone without embeddings)."""
        idx = self._index_of.get(item_id)
        if idx is None or idx not in self.trie:
            return False
        if self._faiss is None:
            return True
        try:
            self._faiss.reconstruct(int(idx))
            return True
        except RuntimeError:
            return False

    # ---------------------------------------------------------------- identity
    def fingerprint(self) -> str:
        """Hash of the semantic state (ids, SIDs, liveness, version); embeddings are compared separately."""
        n = len(self._ids)
        h = hashlib.sha1()
        h.update(json.dumps([self.version, self._ids, self.level_sizes]).encode())
        h.update(self._sids[:n].tobytes())
        h.update(self._live[:n].tobytes())
        return h.hexdigest()

    def to_bytes(self) -> bytes:
        """Snapshot (tables + allocator + version; the trie and faiss index are rebuilt on load)."""
        n = len(self._ids)
        meta = {"level_sizes": list(self.level_sizes), "dim": self.dim, "version": self.version,
                "ids": self._ids, "content": self._content, "alloc": self._alloc.state()}
        buf = io.BytesIO()
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
                 sids=self._sids[:n], emb=self._emb[:n], live=self._live[:n])
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes, config: CatalogConfig | None = None) -> "Catalog":
        """A new catalog from a ``to_bytes()`` snapshot (the config defaults to the snapshot's)."""
        snap = _read_snapshot(blob)
        meta = snap[0]
        cfg = config or CatalogConfig(level_sizes=tuple(meta["level_sizes"]), dim=meta["dim"])
        if tuple(cfg.level_sizes) != tuple(meta["level_sizes"]) or cfg.dim != meta["dim"]:
            raise ValueError(f"snapshot has level_sizes={meta['level_sizes']}, dim={meta['dim']} but the config "
                             f"says {cfg.level_sizes}, {cfg.dim}")
        cat = cls(cfg)
        cat._restore(*snap)
        return cat

    def load_snapshot(self, blob: bytes) -> None:
        """Become the catalog of a ``to_bytes()`` snapshot in place, version included.

        For a replica that starts late or fell behind the writer's log; holders of this object (and of
        its trie, refilled rather than replaced) see the new state. A catalog without embeddings drops
        the snapshot's; rejection bookkeeping stays (it is local).
        """
        meta, sids, emb, live = _read_snapshot(blob)
        if tuple(meta["level_sizes"]) != self.level_sizes or (self.dim and meta["dim"] != self.dim):
            raise ValueError(f"snapshot has level_sizes={meta['level_sizes']}, dim={meta['dim']} but this catalog "
                             f"has {self.level_sizes}, {self.dim}")
        self.trie.remove(self.trie.items())
        self._faiss = self._new_index()
        self._ids, self._index_of, self._content, self._log = [], {}, [], []
        self._sids = np.full((0, self.depth), -1, dtype=np.int64)
        self._emb = np.zeros((0, self.dim), dtype=np.float32)
        self._live = np.zeros(0, dtype=bool)
        self._restore(meta, sids, emb if self.dim else np.zeros((len(sids), 0), np.float32), live)

    def _restore(self, meta: dict, sids: np.ndarray, emb: np.ndarray, live: np.ndarray) -> None:
        """Fill an empty catalog from snapshot tables: sids [N, D], emb [N, E], live [N]."""
        n = len(meta["ids"])
        self._grow(n)
        self._ids = list(meta["ids"])
        self._content = list(meta["content"])
        self._index_of = {iid: i for i, iid in enumerate(self._ids)}
        self._sids[:n], self._emb[:n], self._live[:n] = sids, emb, live
        self._alloc = DedupAllocator.from_state(meta["alloc"])
        self.version = self._log_start = int(meta["version"])
        self._apply_index(np.flatnonzero(live).tolist(), [])


def _read_snapshot(blob: bytes) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(meta, sids [N, D], emb [N, E], live [N]) of a ``Catalog.to_bytes()`` snapshot."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return json.loads(bytes(z["meta"]).decode("utf-8")), z["sids"], z["emb"], z["live"]


def _emb_key(e: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(e, dtype=np.float32).tobytes()).hexdigest()[:16]


__all__ = ["Catalog", "CatalogConfig", "CatalogDelta", "UpsertResult", "SidSpaceFull",
           "OP_ADD", "OP_UPDATE", "OP_RETIRE", "MAX_REJECTIONS"]
