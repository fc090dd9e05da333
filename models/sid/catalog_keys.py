"""The live catalog as a flattened trie: every item's SID as one sorted mixed-radix key.

With ``mult_l = prod(level_sizes[l+1:])`` an item's key is
``key = sum_l sid_l * mult_l``. Sorting the keys makes every SID prefix a
contiguous key range: the items under ``prefix + c`` at level ``l`` are those
with ``lo <= key < lo + mult_l``, ``lo = prefix_key + c * mult_l``, so "how
many live items lie under this prefix" is two ``searchsorted`` calls,
O(log N), whatever the catalog size (the range-index idea of constrained
decoding over a trie, TIGER, Rajput et al. 2023, without a pointer walk).

Invariant: ``keys`` strictly increasing (SIDs are unique), ``items[i]`` the
item of ``keys[i]``, ``key_of_item[items[i]] == keys[i]`` and -1 for every
item index that is not live. A table describes one catalog ``version``;
:meth:`models.sid.trie.SidTrie.keys` builds it once and then follows the
catalog's deltas with :meth:`CatalogKeys.updated` — a merge of the sorted added
keys into the kept ones and a mask of the retired ones, done on the tables'
device, no sort of the catalog and only the delta sent to it (decision 028).
Tables are immutable: a decode in flight keeps the version it started with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def radix_multipliers(level_sizes) -> np.ndarray:
    """``mult_l = prod(level_sizes[l+1:])`` [D] int64: a SID's key is ``sum_l sid_l * mult_l``."""
    sizes = np.asarray(level_sizes, dtype=np.int64)
    mult = np.ones(len(sizes), dtype=np.int64)
    for l in range(len(sizes) - 2, -1, -1):
        mult[l] = mult[l + 1] * sizes[l + 1]
    return mult


@dataclass(frozen=True)
class CatalogKeys:
    """Sorted live-item keys and their inverse map, on one device (see module docstring)."""

    level_sizes: tuple[int, ...]
    version: int
    mult: Tensor          # [D] long radix multipliers
    sizes: Tensor         # [D] long codes per level
    keys: Tensor          # [N] long, strictly increasing
    items: Tensor         # [N] long item index of each key
    key_of_item: Tensor   # [n_items] long key of each item index, -1 where not live

    @classmethod
    def build(cls, level_sizes, sids, items, version: int = 0, device: str | torch.device = "cpu") -> "CatalogKeys":
        """From the live items' ``sids`` [N, D] and item indices ``items`` [N] (any order, SIDs unique)."""
        sizes = tuple(int(k) for k in level_sizes)
        mult = radix_multipliers(sizes)
        sids = np.asarray(sids, dtype=np.int64).reshape(-1, len(sizes))
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if items.shape[0] != sids.shape[0]:
            raise ValueError(f"CatalogKeys needs one item per SID row; got {sids.shape[0]} SIDs and {items.shape[0]} items")
        keys = sids @ mult if sids.size else np.zeros(0, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        keys, items = keys[order], items[order]
        if keys.size > 1 and not (np.diff(keys) > 0).all():
            raise ValueError("two live items share a SID; resolve with the de-duplication level (models.sid.dedup)")
        key_of_item = np.full(int(items.max()) + 1 if items.size else 0, -1, dtype=np.int64)
        key_of_item[items] = keys
        dev = torch.device(device)
        return cls(sizes, int(version), torch.as_tensor(mult, device=dev),
                   torch.as_tensor(np.asarray(sizes, dtype=np.int64), device=dev),
                   torch.from_numpy(keys).to(dev), torch.from_numpy(items).to(dev),
                   torch.from_numpy(key_of_item).to(dev))

    def updated(self, added_keys, added_items, removed_items, version: int) -> "CatalogKeys":
        """These tables after a delta, as new tables of ``version`` (this one is left as it is).

        ``removed_items`` [R]: live items retired (applied first); ``added_keys`` / ``added_items`` [A]: items
        made live with their keys, none of them live after the removal, keys distinct from every kept key.
        O(N + A log A) tensor work on the tables' device (a merge, not a sort of the catalog); the host
        reads the sizes only, between decoding steps."""
        dev = self.keys.device
        add_k = np.asarray(added_keys, dtype=np.int64).reshape(-1)
        add_i = np.asarray(added_items, dtype=np.int64).reshape(-1)
        gone = torch.as_tensor(np.asarray(removed_items, dtype=np.int64).reshape(-1), device=dev)
        need = int(add_i.max()) + 1 if add_i.size else 0          # on the host: no device read
        order = np.argsort(add_k, kind="stable")
        add_k, add_i = torch.from_numpy(add_k[order]).to(dev), torch.from_numpy(add_i[order]).to(dev)
        keys, items, koi = self.keys, self.items, self.key_of_item
        if gone.numel():                                           # the retired mask
            dead = self.keys_of(gone)
            dead = dead[dead >= 0]
            keep = torch.ones_like(keys, dtype=torch.bool)
            keep[torch.searchsorted(keys, dead)] = False
            keys, items = keys[keep], items[keep]
            koi = koi.clone()
            koi[gone[(gone >= 0) & (gone < koi.shape[0])]] = -1
        if add_k.numel():                                          # merge of two sorted runs
            m, a = keys.shape[0], add_k.shape[0]
            pos_new = torch.searchsorted(keys, add_k) + torch.arange(a, device=dev)   # [A] slots of the added
            old = torch.ones(m + a, dtype=torch.bool, device=dev)
            old[pos_new] = False                                   # the kept fill the other slots, in order
            mk, mi = keys.new_empty(m + a), items.new_empty(m + a)
            mk[pos_new], mi[pos_new] = add_k, add_i
            keys, items = mk.masked_scatter_(old, keys), mi.masked_scatter_(old, items)
            if need > koi.shape[0]:
                koi = torch.cat([koi, koi.new_full((need - koi.shape[0],), -1)])
            elif koi is self.key_of_item:
                koi = koi.clone()
            koi[add_i] = add_k
        return CatalogKeys(self.level_sizes, int(version), self.mult, self.sizes, keys, items, koi)

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables (keys, items, inverse map)."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.items, self.key_of_item, self.mult,
                                                           self.sizes))

    def count(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Live items with ``lo <= key < hi``, elementwise for any shape."""
        return torch.searchsorted(self.keys, hi.contiguous()) - torch.searchsorted(self.keys, lo.contiguous())

    def item_at(self, keys: Tensor) -> Tensor:
        """Item index of each exact key (any shape) -> same shape, -1 where no live item has it."""
        n = self.keys.shape[0]
        if n == 0:
            return torch.full_like(keys, -1)
        pos = torch.searchsorted(self.keys, keys.contiguous()).clamp_max(n - 1)
        return torch.where(self.keys[pos] == keys, self.items[pos], torch.full_like(keys, -1))

    def keys_of(self, items: Tensor) -> Tensor:
        """Key of each item index (any shape; -1 entries allowed) -> same shape, -1 where not live."""
        n = self.key_of_item.shape[0]
        if n == 0:
            return torch.full_like(items, -1)
        ok = (items >= 0) & (items < n)
        return torch.where(ok, self.key_of_item[items.clamp(0, n - 1)], torch.full_like(items, -1))

    def key(self, codes: Tensor) -> Tensor:
        """Key of full SIDs ``codes`` [..., D] -> [...]."""
        return (codes.to(self.keys.device).long() * self.mult).sum(-1)
