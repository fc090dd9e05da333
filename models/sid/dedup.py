"""De-duplication level and codebook statistics for semantic IDs.

Residual quantization maps near-identical items to the same L codes. TIGER
(Rajput et al. 2023, §3.1) appends one extra code so that every item's SID is
unique: items that share the first L codes get 0, 1, 2, … at level L+1. We do
the same, in item order (deterministic), and keep the occupied slots per
prefix so that items arriving later get the next free slot without touching
anyone else's SID (SIDs are stable once assigned).
"""

from __future__ import annotations

import numpy as np


class SidSpaceFull(ValueError):
    """Every de-duplication slot of a prefix is taken."""


def assign_unique(codes: np.ndarray, dedup_size: int | None = None) -> np.ndarray:
    """Append the de-duplication code.  codes [N, L] -> sids [N, L+1], all rows unique.

    Items sharing an L-code prefix get 0, 1, 2, … in row order. ``dedup_size``
    (if given) is the size of the extra level; a prefix with more items than
    that raises :class:`SidSpaceFull`.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError(f"codes shape {codes.shape}: expected [N, L]")
    n = codes.shape[0]
    if n == 0:
        return np.zeros((0, codes.shape[1] + 1), dtype=np.int64)
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")          # rows grouped by prefix, row order kept
    grouped = inverse[order]
    first = np.r_[0, np.flatnonzero(np.diff(grouped)) + 1]
    run_start = np.repeat(first, np.diff(np.r_[first, n]))
    slot = np.empty(n, dtype=np.int64)
    slot[order] = np.arange(n) - run_start
    if dedup_size is not None and slot.max() >= dedup_size:
        raise SidSpaceFull(f"{int(slot.max()) + 1} items share one {codes.shape[1]}-code prefix but the "
                           f"de-duplication level has only {dedup_size} codes; raise dedup_size")
    return np.concatenate([codes, slot[:, None]], axis=1)


class DedupAllocator:
    """Free de-duplication slots per L-code prefix, for incremental assignment.

    ``allocate(codes [N, L]) -> sids [N, L+1]`` gives each row the smallest free
    slot of its prefix; ``reserve`` marks slots as taken (e.g. when loading a
    catalog). Slots are never released: a retired item keeps its SID so that it
    gets the same one back if it returns.
    """

    def __init__(self, dedup_size: int):
        if dedup_size < 1:
            raise ValueError(f"dedup_size={dedup_size} must be >= 1")
        self.dedup_size = int(dedup_size)
        self._used: dict[tuple, int] = {}   # prefix -> next free slot (slots fill densely)

    def reserve(self, sids: np.ndarray) -> None:
        for row in np.asarray(sids, dtype=np.int64).tolist():
            key, slot = tuple(row[:-1]), row[-1]
            self._used[key] = max(self._used.get(key, 0), slot + 1)

    def free_slots(self, prefix) -> int:
        return self.dedup_size - self._used.get(tuple(int(c) for c in prefix), 0)

    def allocate(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        out = np.empty((codes.shape[0], codes.shape[1] + 1), dtype=np.int64)
        for i, row in enumerate(codes.tolist()):
            key = tuple(row)
            slot = self._used.get(key, 0)
            if slot >= self.dedup_size:
                raise SidSpaceFull(f"prefix {list(key)} already holds {slot} items, the de-duplication "
                                   f"level's size ({self.dedup_size}); raise dedup_size")
            self._used[key] = slot + 1
            out[i, :-1] = row
            out[i, -1] = slot
        return out

    def state(self) -> dict:
        return {"dedup_size": self.dedup_size,
                "prefixes": [list(k) + [v] for k, v in sorted(self._used.items())]}

    @classmethod
    def from_state(cls, state: dict) -> "DedupAllocator":
        a = cls(state["dedup_size"])
        a._used = {tuple(r[:-1]): r[-1] for r in state["prefixes"]}
        return a


def default_dedup_size(codes: np.ndarray, minimum: int = 16) -> int:
    """A de-duplication level size with head-room for items arriving later.

    Twice the largest collision group of the fitted items, rounded up to a power
    of two, and at least ``minimum``: the extra level costs one decoder step and
    a ``dedup_size``-wide softmax, so it stays small, but it must not fill up
    when new items similar to old ones keep arriving.
    """
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape[0] == 0:
        return minimum
    _, counts = np.unique(codes, axis=0, return_counts=True)
    need = 2 * int(counts.max())
    return max(minimum, 1 << (need - 1).bit_length())


def collision_rate(codes: np.ndarray) -> float:
    """Fraction of items whose L-code prefix is shared with an earlier item (before de-duplication)."""
    codes = np.asarray(codes)
    if codes.shape[0] == 0:
        return 0.0
    n_unique = np.unique(codes, axis=0).shape[0]
    return float(1.0 - n_unique / codes.shape[0])


def utilization(codes: np.ndarray, level_sizes: tuple[int, ...]) -> list[float]:
    """Fraction of each level's codebook that at least one item uses.  codes [N, L] -> [L]."""
    codes = np.asarray(codes)
    return [float(np.unique(codes[:, l]).size / level_sizes[l]) for l in range(codes.shape[1])]


def unique_fraction(sids: np.ndarray) -> float:
    """Fraction of distinct rows (1.0 after de-duplication)."""
    sids = np.asarray(sids)
    return 1.0 if sids.shape[0] == 0 else float(np.unique(sids, axis=0).shape[0] / sids.shape[0])
