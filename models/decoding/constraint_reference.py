"""The slow, obviously correct twin of :class:`models.decoding.constraint.SidConstraint`.

Same rule, same questions (``init`` / ``mask`` / ``advance`` / ``select``),
answered by brute force: a row is its partial SID as a list of codes and its
excluded items as a set; a code is allowed iff some catalog row whose SID
starts with ``codes + [c]`` holds an item not in that set. O(B · N) per step
with a Python loop over rows — for property tests and as the baseline of the
constraint micro-benchmark, never for decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.decoding.constraint import ConstraintConfig, excluded_items


@dataclass
class ReferenceState:
    codes: list[list[int]]    # per row: the current item's codes so far
    banned: list[set[int]]    # per row: items it may not emit

    @property
    def batch_size(self) -> int:
        return len(self.codes)

    def select(self, idx: Tensor) -> "ReferenceState":
        rows = [int(i) for i in torch.as_tensor(idx).reshape(-1).tolist()]
        return ReferenceState([list(self.codes[i]) for i in rows], [set(self.banned[i]) for i in rows])


class ReferenceConstraint:
    """Brute-force catalog constraint over ``sids`` [N, D] / ``items`` [N] (the live catalog)."""

    def __init__(self, level_sizes, sids, items, config: ConstraintConfig = ConstraintConfig()) -> None:
        self.level_sizes = tuple(int(k) for k in level_sizes)
        self.depth, self.k_max = len(self.level_sizes), max(self.level_sizes)
        self.sids = torch.as_tensor(np.asarray(sids, dtype=np.int64)).reshape(-1, self.depth)   # [N, D]
        self.items = torch.as_tensor(np.asarray(items, dtype=np.int64)).reshape(-1)             # [N]
        self.config = config
        self.device = torch.device("cpu")

    @classmethod
    def of(cls, trie, config: ConstraintConfig = ConstraintConfig()) -> "ReferenceConstraint":
        return cls(trie.level_sizes, *trie.entries(), config)

    def init(self, batch: int, seen=None) -> ReferenceState:
        ex = excluded_items(seen, batch, "cpu").tolist()
        return ReferenceState([[] for _ in range(batch)], [{i for i in row if i >= 0} for row in ex])

    def _under(self, codes: list[int], banned: set[int]) -> Tensor:
        """[N] bool: catalog rows whose SID starts with ``codes`` and whose item is not banned."""
        ok = torch.ones(self.items.shape[0], dtype=torch.bool)
        for l, c in enumerate(codes):
            ok &= self.sids[:, l] == c
        if banned:
            ok &= ~torch.isin(self.items, torch.tensor(sorted(banned), dtype=torch.long))
        return ok

    def mask(self, state: ReferenceState) -> Tensor:
        out = torch.zeros(state.batch_size, self.k_max, dtype=torch.bool)
        for b, (codes, banned) in enumerate(zip(state.codes, state.banned)):
            under = self._under(codes, banned)
            out[b, self.sids[under, len(codes)]] = True
        return out

    def advance(self, state: ReferenceState, codes: Tensor) -> tuple[ReferenceState, Tensor]:
        new = ReferenceState([list(c) for c in state.codes], [set(s) for s in state.banned])
        item = torch.full((state.batch_size,), -1, dtype=torch.long)
        for b, c in enumerate(torch.as_tensor(codes).reshape(-1).tolist()):
            new.codes[b].append(int(c))
            if len(new.codes[b]) < self.depth:
                continue
            hit = self._under(new.codes[b], new.banned[b]).nonzero().flatten()
            if hit.numel():
                item[b] = self.items[hit[0]]
                if self.config.no_repeat:
                    new.banned[b].add(int(item[b]))
            new.codes[b] = []
        return new, item
