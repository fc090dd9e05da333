"""Prefix trie over semantic IDs, vectorised for batched constrained decoding.

A semantic ID (SID) is a tuple of ``D`` codes, code ``l`` drawn from
``level_sizes[l]`` values (TIGER, Rajput et al. 2023; OneRec, Deng et al.
2025). The trie holds the live catalog: adds, retirements, SID lookups and
"where does this code lead?" for a whole batch of partial SIDs at once. A
per-prefix Python dict walk answers that one prefix at a time; here every
query is a couple of ``searchsorted`` calls over one sorted array, so a batch
of B prefixes costs O(B log E) tensor work and no Python loop over B.

Representation
--------------
Nodes are integers (root = 0). Every edge ``parent --code--> child`` is stored
as a key ``parent * K_max + code`` in one sorted int64 array ``keys`` with the
child id at the same position in ``vals``. Since keys sort by parent first,
the children of one node are a contiguous run, so

* ``step(nodes, codes)`` = ``searchsorted(keys, nodes*K+codes)`` + equality test.

Constrained decoding does not walk nodes: it uses the flattened form of the
same trie, :meth:`SidTrie.keys` (:mod:`models.sid.catalog_keys`), built from
the leaves once and then kept up to date from the trie's own change log
(:meth:`SidTrie.keys`: the net delta since the cached version, merged into
the device tables; a full rebuild only when the delta is large).

Leaves sit at depth ``D`` and carry an item index (``leaf_item``). Adds and
removals are batched, vectorised level by level, and keep the arrays sorted
with ``np.insert`` / ``np.delete`` (an O(E) copy, milliseconds even for
millions of edges); torch copies for the hot path are rebuilt lazily after a
change. Empty interior nodes are pruned on removal, so a prefix is valid iff
at least one live item lies under it.
"""

from __future__ import annotations

import numpy as np
import torch

from models.sid.catalog_keys import CatalogKeys, radix_multipliers

ROOT = 0


class SidTrie:
    """Prefix trie over SIDs of length ``D = len(level_sizes)``.

    ``level_sizes[l]`` is the number of codes at level ``l`` (the
    de-duplication level included, as the last one). ``K_max`` is the width
    of every mask the decoder sees.
    """

    def __init__(self, level_sizes: tuple[int, ...] | list[int]):
        sizes = tuple(int(k) for k in level_sizes)
        if not sizes or any(k < 1 for k in sizes):
            raise ValueError(f"level_sizes={level_sizes!r}: need a non-empty tuple of positive code counts, "
                             "e.g. (256, 256, 256, 64)")
        self.level_sizes = sizes
        self.depth = len(sizes)
        self.k_max = max(sizes)
        self._mult = radix_multipliers(sizes)               # a SID's key in the decoding tables
        self._keys = np.zeros(0, dtype=np.int64)    # sorted parent*K_max + code
        self._vals = np.zeros(0, dtype=np.int64)    # child node at the same position
        # Per-node arrays (grown geometrically). Node ids are never reused.
        cap = 64
        self._parent = np.full(cap, -1, dtype=np.int64)
        self._code = np.full(cap, -1, dtype=np.int64)       # code on the edge into the node
        self._nchild = np.zeros(cap, dtype=np.int64)
        self._leaf_item = np.full(cap, -1, dtype=np.int64)
        self._depth = np.zeros(cap, dtype=np.int64)
        self._n_nodes = 1                                   # the root
        self._item_leaf: dict[int, int] = {}                # item index -> leaf node
        self._device = torch.device("cpu")
        self._cache: dict[str, torch.Tensor] | None = None
        self._keys_cache: dict[str, CatalogKeys] = {}       # device -> the decoding tables of `version`
        #: bumped by every add/remove: caches built from the trie (decode constraints) compare it
        self.version = 0
        # (version after the change, added keys [A], added items [A], removed items [R]) since the oldest
        # cached decoding table: what keys() merges into it instead of rebuilding
        self._changes: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        #: how the decoding tables were brought up to date (full builds vs delta updates), for tests/benchmarks
        self.table_builds = 0
        self.table_updates = 0

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        """Number of live items (leaves)."""
        return len(self._item_leaf)

    def __contains__(self, item_idx: int) -> bool:
        return int(item_idx) in self._item_leaf

    @property
    def num_nodes(self) -> int:
        return self._n_nodes

    @property
    def num_edges(self) -> int:
        return int(self._keys.size)

    def to(self, device: str | torch.device) -> "SidTrie":
        """Keep the hot-path tensors on ``device`` (e.g. the decoder's GPU)."""
        self._device = torch.device(device)
        self._cache = None
        return self

    # ---------------------------------------------------------------- mutation
    def _grow(self, need: int) -> None:
        cap = self._parent.size
        if need <= cap:
            return
        new = max(need, cap * 2)
        for name, fill in (("_parent", -1), ("_code", -1), ("_nchild", 0), ("_leaf_item", -1), ("_depth", 0)):
            old = getattr(self, name)
            arr = np.full(new, fill, dtype=np.int64)
            arr[:cap] = old
            setattr(self, name, arr)

    def _lookup(self, keys: np.ndarray) -> np.ndarray:
        """Child node for each edge key, -1 where the edge is absent."""
        pos = np.searchsorted(self._keys, keys)
        ok = pos < self._keys.size
        ok[ok] = self._keys[pos[ok]] == keys[ok]
        out = np.full(keys.shape, -1, dtype=np.int64)
        out[ok] = self._vals[pos[ok]]
        return out

    def _check_sids(self, sids: np.ndarray) -> np.ndarray:
        sids = np.asarray(sids, dtype=np.int64)
        if sids.ndim != 2 or sids.shape[1] != self.depth:
            raise ValueError(f"sids shape {sids.shape}: expected [N, {self.depth}] (one code per level of "
                             f"level_sizes={self.level_sizes})")
        if sids.size:
            lim = np.asarray(self.level_sizes, dtype=np.int64)
            bad = (sids < 0) | (sids >= lim[None, :])
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise ValueError(f"sids[{r}, {c}]={sids[r, c]} is outside level {c}'s codebook "
                                 f"[0, {lim[c]}); fix the tokenizer or level_sizes")
        return sids

    def add(self, sids: np.ndarray, item_idx: np.ndarray) -> None:
        """Insert items with their SIDs.  sids [N, D], item_idx [N].

        Re-adding an item with the same SID is a no-op (idempotent); a SID
        already held by another live item, or a new SID for a live item,
        raises ValueError (SIDs are unique and stable; remove first).
        """
        sids = self._check_sids(sids)
        items = np.asarray(item_idx, dtype=np.int64).reshape(-1)
        if items.shape[0] != sids.shape[0]:
            raise ValueError(f"item_idx has {items.shape[0]} entries but sids has {sids.shape[0]} rows")
        if items.size == 0:
            return
        if np.unique(items).size != items.size:
            raise ValueError("item_idx contains duplicates within one add() call")
        if (items < 0).any():
            raise ValueError(f"item_idx must be >= 0, got {items[items < 0][:3].tolist()}")
        # Drop items already present with the same SID; reject re-keyed ones.
        keep = np.ones(items.size, dtype=bool)
        for i, it in enumerate(items.tolist()):
            leaf = self._item_leaf.get(it)
            if leaf is not None:
                if not np.array_equal(self.sid_of_leaf(leaf), sids[i]):
                    raise ValueError(f"item {it} already has SID {self.sid_of_leaf(leaf).tolist()}; "
                                     f"refusing to move it to {sids[i].tolist()} (remove it first)")
                keep[i] = False
        sids, items = sids[keep], items[keep]
        if items.size == 0:
            return
        uniq = np.unique(sids, axis=0)
        if uniq.shape[0] != sids.shape[0]:
            raise ValueError("two items in one add() call share a SID; run models.sid.dedup.assign_unique first")

        nodes = np.zeros(items.size, dtype=np.int64)  # all start at the root
        for lvl in range(self.depth):
            codes = sids[:, lvl]
            keys = nodes * self.k_max + codes
            child = self._lookup(keys)
            missing = child < 0
            if missing.any():
                new_keys, inverse = np.unique(keys[missing], return_inverse=True)
                start = self._n_nodes
                self._grow(start + new_keys.size)
                new_ids = np.arange(start, start + new_keys.size, dtype=np.int64)
                self._n_nodes += new_keys.size
                par = new_keys // self.k_max
                self._parent[new_ids] = par
                self._code[new_ids] = new_keys % self.k_max
                self._depth[new_ids] = lvl + 1
                np.add.at(self._nchild, par, 1)
                pos = np.searchsorted(self._keys, new_keys)
                self._keys = np.insert(self._keys, pos, new_keys)
                self._vals = np.insert(self._vals, pos, new_ids)
                child[missing] = new_ids[inverse]
            nodes = child
        # nodes are leaves now
        taken = self._leaf_item[nodes] >= 0
        if taken.any():
            i = int(np.flatnonzero(taken)[0])
            raise ValueError(f"SID {sids[i].tolist()} is already held by item {self._leaf_item[nodes[i]]}; "
                             "SIDs must be unique (resolve with the de-duplication level)")
        self._leaf_item[nodes] = items
        self._item_leaf.update(zip(items.tolist(), nodes.tolist()))
        self._cache = None
        self.version += 1
        self._log_change(sids @ self._mult, items, np.zeros(0, dtype=np.int64))

    def remove(self, item_idx: np.ndarray | list[int] | int) -> int:
        """Remove items (unknown ones are ignored); prune empty prefixes. Returns how many were removed."""
        items = np.atleast_1d(np.asarray(item_idx, dtype=np.int64))
        gone = list(dict.fromkeys(int(i) for i in items.tolist() if int(i) in self._item_leaf))
        leaves = [self._item_leaf.pop(i) for i in gone]
        if not leaves:
            return 0
        nodes = np.asarray(leaves, dtype=np.int64)
        self._leaf_item[nodes] = -1
        dead_keys = []
        # Walk up level by level: a node dies when it has no children left (leaves always die).
        while nodes.size:
            par = self._parent[nodes]
            dead_keys.append(par * self.k_max + self._code[nodes])
            np.subtract.at(self._nchild, par, 1)
            par = np.unique(par)
            nodes = par[(self._nchild[par] == 0) & (par != ROOT)]
        keys = np.concatenate(dead_keys)
        pos = np.searchsorted(self._keys, keys)
        self._keys = np.delete(self._keys, pos)
        self._vals = np.delete(self._vals, pos)
        self._cache = None
        self.version += 1
        self._log_change(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.asarray(gone, dtype=np.int64))
        return len(leaves)

    def _log_change(self, added_keys: np.ndarray, added_items: np.ndarray, removed: np.ndarray) -> None:
        if not self._keys_cache:
            return                                  # no decoding table to bring up to date
        self._changes.append((self.version, added_keys.astype(np.int64), added_items.astype(np.int64), removed))
        if sum(c[1].size + c[3].size for c in self._changes) > max(4096, len(self) // 2):
            self._changes, self._keys_cache = [], {}   # a rebuild is cheaper than replaying this much

    def _net_delta(self, since: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The change from version ``since`` to now as (added keys, added items, removed items), or None when
        the log does not reach back to ``since``."""
        log = [c for c in self._changes if c[0] > since]
        if len(log) != self.version - since:
            return None
        added: dict[int, int] = {}
        removed: set[int] = set()
        for _, keys, items, gone in log:
            for i in gone.tolist():
                if added.pop(i, None) is None:
                    removed.add(i)                  # live at `since`
            added.update(zip(items.tolist(), keys.tolist()))
        return (np.fromiter(added.values(), np.int64, len(added)), np.fromiter(added.keys(), np.int64, len(added)),
                np.fromiter(removed, np.int64, len(removed)))

    # ----------------------------------------------------------- host queries
    def sid_of_leaf(self, leaf: int) -> np.ndarray:
        out = np.empty(self.depth, dtype=np.int64)
        n = int(leaf)
        for lvl in range(self.depth - 1, -1, -1):
            out[lvl] = self._code[n]
            n = int(self._parent[n])
        return out

    def sid_of(self, item_idx: int) -> np.ndarray | None:
        leaf = self._item_leaf.get(int(item_idx))
        return None if leaf is None else self.sid_of_leaf(leaf)

    def items(self) -> np.ndarray:
        """Live item indices, sorted."""
        return np.asarray(sorted(self._item_leaf), dtype=np.int64)

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """All (sids [N, D], item_idx [N]) pairs, sorted by item index."""
        sids, items = self._leaf_sids()
        order = np.argsort(items, kind="stable")
        return sids[order], items[order]

    def lookup(self, sids: np.ndarray) -> np.ndarray:
        """Item index for each full SID [N, D] -> [N], -1 where no live item has it."""
        sids = np.asarray(sids, dtype=np.int64)
        nodes = torch.zeros(sids.shape[0], dtype=torch.long, device=self._device)
        t = torch.as_tensor(sids, device=self._device)
        for lvl in range(self.depth):
            nodes = self.step(nodes, t[:, lvl])
        return self.leaf_item(nodes).cpu().numpy()

    # ---------------------------------------------------- vectorised hot path
    def _tensors(self) -> dict[str, torch.Tensor]:
        if self._cache is None:
            n = self._n_nodes
            self._cache = {
                "keys": torch.from_numpy(self._keys.copy()).to(self._device),
                "vals": torch.from_numpy(self._vals.copy()).to(self._device),
                "leaf": torch.from_numpy(self._leaf_item[:n].copy()).to(self._device),
            }
        return self._cache

    def keys(self, device: str | torch.device | None = None) -> CatalogKeys:
        """The live items as sorted mixed-radix keys (:class:`models.sid.catalog_keys.CatalogKeys`), the
        tables of the decoding constraint. Built once per trie version and device: the one cache of them."""
        dev = torch.device(device) if device is not None else self._device
        hit = self._keys_cache.get(str(dev))
        if hit is not None and hit.version == self.version:
            return hit
        delta = self._net_delta(hit.version) if hit is not None else None
        if delta is not None:
            hit = hit.updated(*delta, version=self.version)
            self.table_updates += 1
        else:
            sids, items = self._leaf_sids()
            hit = CatalogKeys.build(self.level_sizes, sids, items, self.version, dev)
            self.table_builds += 1
        self._keys_cache[str(dev)] = hit
        oldest = min(t.version for t in self._keys_cache.values())
        self._changes = [c for c in self._changes if c[0] > oldest]
        return hit

    def _leaf_sids(self) -> tuple[np.ndarray, np.ndarray]:
        """(sids [N, D], item_idx [N]) of every live leaf, by a vectorised walk up the parents."""
        leaves = np.flatnonzero(self._leaf_item[:self._n_nodes] >= 0)
        sids = np.empty((leaves.size, self.depth), dtype=np.int64)
        n = leaves
        for lvl in range(self.depth - 1, -1, -1):
            sids[:, lvl] = self._code[n]
            n = self._parent[n]
        return sids, self._leaf_item[leaves]

    def root(self, batch_size: int) -> torch.Tensor:
        """Root node for a batch: LongTensor [B] of zeros."""
        return torch.zeros(int(batch_size), dtype=torch.long, device=self._device)

    def step(self, nodes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Follow one code from each node.  nodes [B], codes [B] -> child [B], -1 where invalid.

        A node of -1 (an already invalid path) stays -1.
        """
        t = self._tensors()
        keys, vals = t["keys"], t["vals"]
        nodes = nodes.to(self._device, torch.long)
        codes = codes.to(self._device, torch.long)
        ok = (nodes >= 0) & (codes >= 0) & (codes < self.k_max)
        q = nodes.clamp_min(0) * self.k_max + codes.clamp(0, self.k_max - 1)
        if keys.numel() == 0:
            return torch.full_like(nodes, -1)
        pos = torch.searchsorted(keys, q).clamp_max(keys.numel() - 1)
        hit = ok & (keys[pos] == q)
        return torch.where(hit, vals[pos], torch.full_like(nodes, -1))

    def leaf_item(self, nodes: torch.Tensor) -> torch.Tensor:
        """Item index at each node.  nodes [B] -> LongTensor [B], -1 for non-leaves / invalid."""
        leaf = self._tensors()["leaf"]
        nodes = nodes.to(self._device, torch.long)
        ok = (nodes >= 0) & (nodes < leaf.numel())
        return torch.where(ok, leaf[nodes.clamp(0, max(leaf.numel() - 1, 0))], torch.full_like(nodes, -1))

    def walk(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Node reached by each prefix.  prefixes LongTensor [B, P] (P <= D) -> nodes [B], -1 if invalid."""
        prefixes = torch.as_tensor(prefixes, dtype=torch.long, device=self._device)
        nodes = self.root(prefixes.shape[0])
        for p in range(prefixes.shape[1]):
            nodes = self.step(nodes, prefixes[:, p])
        return nodes
