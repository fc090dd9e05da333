"""THE catalog constraint of every decoding mode: which codes may come next, where a code leads.

Rule (TIGER, Rajput et al. 2023; constrained beam search as in De Cao et al.
2021): a row may only emit catalog SIDs, never an item it already emitted in
this session (``no_repeat``) nor one it was told to exclude (``seen``), and it
never enters a prefix whose every item is excluded (look-ahead: no dead
ends, even for greedy). Greedy, beam, sampling, top-N, MTP, speculative
greedy / sampling / beam and continuous batching all ask the same three
questions through :class:`Constraint` — ``mask``, ``advance`` and the state's
``select`` — so their lossless variants give exactly plain decoding's output.

Engine (:class:`SidConstraint`): the catalog as sorted mixed-radix keys
(:class:`models.sid.catalog_keys.CatalogKeys`, a flattened trie in which each
SID prefix is a contiguous key range). A row's state is its prefix key and
level (per row, so rows need not be in lock-step) plus its excluded items and
their live keys, distinct, ``[B, E]`` padded with :data:`SENTINEL`. Then

    allowed[b, c] = live(prefix_b + c·mult_l) − banned_b(prefix_b + c·mult_l) > 0

``live`` is one ``searchsorted`` of the row's K+1 child-range bounds in the
catalog's keys, ``banned`` a scatter of the row's banned keys into the child
they fall under: O(B·(K·log N + E)) per step, independent of the catalog
size, no host sync, no Python loop over rows.
Completing an item is one exact-key lookup; with ``no_repeat`` the item joins
the row's exclusions. The catalog may change between steps: a state records
which tables its banned keys were derived for and is re-derived from its
excluded *items* against new tables (:meth:`SidConstraint.rebase`), so a
retired item no longer blocks a prefix and a returning one is excluded again.
:mod:`models.decoding.constraint_reference` is the slow, obviously correct
twin the property tests compare it with.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from models.sid.catalog_keys import CatalogKeys, radix_multipliers

#: padding of the banned keys: above every real key, so never under any prefix
SENTINEL = torch.iinfo(torch.long).max
#: prefix key of a row that took a code outside its level's codebook: every range under it is empty
DEAD = -(1 << 62)
NEG_INF = float("-inf")


@dataclass(frozen=True)
class ConstraintConfig:
    """``no_repeat``: an emitted item is excluded for the rest of its row's session."""

    no_repeat: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.no_repeat, bool):
            raise ValueError(f"ConstraintConfig.no_repeat={self.no_repeat!r} must be True (no item twice in a "
                             "session) or False")


class Constraint(Protocol):
    """What every decoding loop asks of the catalog (``S`` is the engine's state type, with ``select``)."""

    depth: int
    k_max: int
    device: torch.device

    def check_levels(self, level_sizes) -> None: ...               # raise unless the model's are the catalog's
    def init(self, batch: int, seen=None): ...                    # -> S at an item boundary
    def mask(self, state) -> Tensor: ...                           # -> [B, K_max] bool allowed codes
    def advance(self, state, codes: Tensor, completes=None): ...   # [B] -> (S, item [B], -1 = none completed)
    def logprobs(self, logits: Tensor, state) -> Tensor: ...       # [B, K] -> constrained float32 log-probs
    def logprobs_along(self, logits: Tensor, states: list) -> Tensor: ...  # [B, P, K], P states
    def masked_logits(self, logits: Tensor, state) -> Tensor: ...  # [B, K], disallowed codes at -inf
    def lookup(self, codes: Tensor) -> Tensor: ...                 # [..., D] -> item [...], -1 not live


# ---- per-row state ----------------------------------------------------------------------------

@dataclass
class ConstraintState:
    """Per-row decoding state of :class:`SidConstraint` (B rows)."""

    prefix: Tensor              # [B] long key of the current item's codes so far (DEAD < 0: off the catalog)
    level: Tensor               # [B] long SID level of each row's next code
    banned_items: Tensor        # [B, E] long items the row may not emit (seen + emitted), -1 padding
    banned_keys: Tensor         # [B, E] long distinct keys of the live ones in `tables`, SENTINEL padding
    tables: CatalogKeys | None  # the catalog tables banned_keys were derived for (None: not yet)
    shared_level: int | None    # the level of every row when all are known to be equal, else None
    keys_sorted: bool = False   # banned_keys ascending per row (SENTINEL last): mask_at counts them by binary search

    @property
    def batch_size(self) -> int:
        return int(self.prefix.shape[0])

    def select(self, idx: Tensor) -> "ConstraintState":
        """Rows ``idx`` [B'] (beam reorder / expansion / leaving rows)."""
        idx = idx.to(self.prefix.device)
        return ConstraintState(self.prefix.index_select(0, idx), self.level.index_select(0, idx),
                               self.banned_items.index_select(0, idx), self.banned_keys.index_select(0, idx),
                               self.tables, self.shared_level, self.keys_sorted)

    @staticmethod
    def cat(states: Sequence["ConstraintState"]) -> "ConstraintState":
        """Rows of several states stacked (continuous batching admits rows)."""
        e = max(s.banned_items.shape[1] for s in states)
        tables = states[0].tables if all(s.tables is states[0].tables for s in states) else None
        levels = {s.shared_level for s in states}
        return ConstraintState(torch.cat([s.prefix for s in states]), torch.cat([s.level for s in states]),
                               torch.cat([pad_columns(s.banned_items, e, -1) for s in states]),
                               torch.cat([pad_columns(s.banned_keys, e, SENTINEL) for s in states]),
                               tables, levels.pop() if len(levels) == 1 else None)


def pad_columns(x: Tensor, width: int, value: int) -> Tensor:
    """``x`` [B, E] right-padded with ``value`` up to ``width`` columns."""
    if x.shape[1] >= width:
        return x
    return torch.cat([x, x.new_full((x.shape[0], width - x.shape[1]), value)], 1)   # exact for int64 values


def excluded_items(seen, batch: int, device) -> Tensor:
    """``seen`` as a padded item matrix [B, E] (-1 padding, E >= 1).

    ``seen``: None, a bool mask [B, n_items] indexed by item, or B sequences of item indices."""
    if seen is None:
        return torch.full((batch, 1), -1, dtype=torch.long, device=device)
    if isinstance(seen, Tensor) and seen.dtype == torch.bool:
        if seen.dim() != 2 or seen.shape[0] != batch:
            raise ValueError(f"seen mask has shape {tuple(seen.shape)} for a batch of {batch}; pass [B, n_items]")
        rows, cols = seen.to(device).nonzero(as_tuple=True)                    # [M] each, row-major
        counts = torch.bincount(rows, minlength=batch)                          # [B]
        out = torch.full((batch, max(int(counts.max()) if rows.numel() else 0, 1)), -1, dtype=torch.long,
                         device=device)
        start = torch.cumsum(counts, 0) - counts
        out[rows, torch.arange(rows.numel(), device=device) - start[rows]] = cols
        return out
    if len(seen) != batch:
        raise ValueError(f"seen has {len(seen)} lists for a batch of {batch}")
    rows = [np.asarray(s, dtype=np.int64).reshape(-1) for s in seen]
    e = max([r.size for r in rows] + [1])
    out = np.full((batch, e), -1, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, :r.size] = r
    return torch.from_numpy(out).to(device)


def initial_state(batch: int, seen=None, device="cpu") -> ConstraintState:
    """Every row at an item boundary, excluding ``seen`` (see :func:`excluded_items`); catalog-free."""
    dev = torch.device(device)
    items = excluded_items(seen, batch, dev)
    zero = torch.zeros(batch, dtype=torch.long, device=dev)
    return ConstraintState(zero, zero.clone(), items, torch.full_like(items, SENTINEL), None, 0)


def _free_children(live_below: Tensor, banned_keys: Tensor, bounds: Tensor) -> Tensor:
    """Live, not banned items per child [B, K] from the live keys below each child bound [B, K+1]: with the
    row's banned keys sorted [B, E], the banned ones below each bound are one binary search too."""
    return torch.diff(live_below - torch.searchsorted(banned_keys, bounds), dim=1)


def masked_log_softmax(masked: Tensor) -> Tensor:
    """log_softmax over the last dim; rows that are all -inf stay all -inf (no NaN)."""
    none = ~torch.isfinite(masked).any(dim=-1, keepdim=True)
    logp = torch.log_softmax(torch.where(none, torch.zeros_like(masked), masked), dim=-1)
    return logp.masked_fill(none, NEG_INF)


def masked_logprobs(logits: Tensor, allowed: Tensor) -> Tensor:
    """float32 log-softmax of ``logits`` over the ``allowed`` codes (same shape, bool); -inf elsewhere and
    on rows with nothing allowed. Equal to ``masked_log_softmax(logits.float().masked_fill(~allowed, -inf))``
    in three tensor ops (a row of -inf gives NaN in log_softmax, turned back into -inf)."""
    logp = torch.log_softmax(torch.where(allowed, logits.float(), NEG_INF), dim=-1)
    return torch.nan_to_num(logp, nan=NEG_INF, neginf=NEG_INF)


# ---- the engine ---------------------------------------------------------------------------------

class SidConstraint:
    """The catalog constraint over sorted SID keys (see module docstring).

    ``tables``: the catalog's :class:`CatalogKeys` (``trie.keys(device)``; :meth:`of` does that). An empty
    catalog allows nothing: every row completes item -1.
    """

    def __init__(self, tables: CatalogKeys, config: ConstraintConfig = ConstraintConfig()) -> None:
        self.tables = tables
        self.config = config
        self.level_sizes = tables.level_sizes
        self.depth, self.k_max = len(self.level_sizes), max(self.level_sizes)
        self.device = tables.keys.device
        self.codes = torch.arange(self.k_max, device=self.device)              # [K]
        self.edges = torch.arange(self.k_max + 1, device=self.device)          # [K+1] child-range bounds
        # host-side constants of the one-level fast paths (mask_at / advance_at): no device read in a step
        self._mult = [int(m) for m in radix_multipliers(self.level_sizes)]     # [D] radix multipliers
        self._edges_at = [self.edges * m for m in self._mult]                  # D x [K+1] child offsets
        self._in_book = [self.codes < k for k in self.level_sizes]             # D x [K] codes of the level
        self._level_rows: dict = {}                                            # (rows, level) -> [rows] level

    @classmethod
    def of(cls, trie, device=None, config: ConstraintConfig = ConstraintConfig()) -> "SidConstraint":
        """The constraint of a :class:`models.sid.trie.SidTrie` as it is now (its tables are cached per version)."""
        return cls(trie.keys(device), config)

    def check_levels(self, level_sizes) -> None:
        """Raise unless the model's ``level_sizes`` are the catalog's."""
        if tuple(level_sizes) != tuple(self.level_sizes):
            raise ValueError(f"catalog level_sizes {tuple(self.level_sizes)} != model's {tuple(level_sizes)}; "
                             "use the tokenizer the model was trained with")

    # ---- state ------------------------------------------------------------------------------

    def init(self, batch: int, seen=None) -> ConstraintState:
        """Fresh state at an item boundary; ``seen`` as in :func:`excluded_items`."""
        return self.rebase(initial_state(batch, seen, self.device))

    def rebase(self, state: ConstraintState) -> ConstraintState:
        """``state`` with its banned keys derived for this constraint's catalog (a no-op when they are)."""
        if state.tables is self.tables:
            return state
        keys = self.tables.keys_of(state.banned_items.to(self.device))         # [B, E], -1 = not live
        keys = torch.where(keys >= 0, keys, torch.full_like(keys, SENTINEL)).sort(1).values
        dup = torch.zeros_like(keys, dtype=torch.bool)
        dup[:, 1:] = keys[:, 1:] == keys[:, :-1]                               # an item listed twice counts once
        keys = keys.masked_fill(dup, SENTINEL).sort(1).values
        return replace(state, prefix=state.prefix.to(self.device), level=state.level.to(self.device),
                       banned_items=state.banned_items.to(self.device), banned_keys=keys, tables=self.tables,
                       keys_sorted=True)

    # ---- the three questions ----------------------------------------------------------------

    def mask(self, state: ConstraintState) -> Tensor:
        """Allowed next codes [B, K_max] bool (all False for a row with nothing left)."""
        state = self.rebase(state)
        t, K = self.tables, self.k_max
        m = t.mult[state.level][:, None]                                       # [B, 1]
        base = state.prefix[:, None]                                           # [B, 1]
        bounds = base + self.edges[None, :] * m                                # [B, K+1]: child c is [c, c+1)
        in_book = self.codes[None, :] < t.sizes[state.level][:, None]
        live = torch.searchsorted(t.keys, bounds)                              # [B, K+1] live keys below each bound
        if state.keys_sorted:
            return in_book & (base >= 0) & (_free_children(live, state.banned_keys, bounds) > 0)
        live = torch.diff(live, dim=1)                                         # [B, K] live items per child
        bk = state.banned_keys                                                 # [B, E]
        inside = (bk >= base) & (bk < bounds[:, -1:])
        child = torch.where(inside, (bk - base) // m, torch.full_like(bk, K))  # [B, E], K = not under the row
        banned = torch.zeros(bk.shape[0], K + 1, dtype=torch.long, device=self.device).scatter_add_(
            1, child, torch.ones_like(bk))[:, :K]                              # [B, K] banned live items per child
        return in_book & (base >= 0) & (live > banned)

    def advance(self, state: ConstraintState, codes: Tensor, completes: bool | None = None
                ) -> tuple[ConstraintState, Tensor]:
        """Apply ``codes`` [B] at each row's own level (rows need not be in lock-step). Returns the new state
        and the item each row completed [B] (-1 where the row did not finish an item, or finished on no live
        un-excluded item).

        ``completes``: whether a row may be at the last level. None: known from the state (its shared level,
        else yes); False, when the caller knows on the host that none is: the prefixes only extend and no
        exclusion column is added. Sorted banned keys stay sorted: a completed key is inserted at its
        binary-search position (no sort of the row), and the exclusion check reads that one position.
        """
        state = self.rebase(state)
        t, D = self.tables, self.depth
        codes = codes.to(self.device).long()
        lvl = state.level
        ok = (codes >= 0) & (codes < t.sizes[lvl]) & (state.prefix >= 0)
        prefix = torch.where(ok, state.prefix + codes * t.mult[lvl], DEAD)
        shared = None if state.shared_level is None else (state.shared_level + 1) % D
        if completes is None:
            completes = state.shared_level is None or state.shared_level == D - 1
        if not completes:
            return (ConstraintState(prefix, lvl + 1, state.banned_items, state.banned_keys, t, shared,
                                    state.keys_sorted), torch.full_like(prefix, -1))
        done = lvl + 1 == D                                                    # [B]
        bk, e = state.banned_keys, state.banned_keys.shape[1]
        if state.keys_sorted:           # the key equal to the prefix, if any, is at the prefix's search position
            at = torch.searchsorted(bk, prefix[:, None]).clamp_(max=e - 1)                         # [B, 1]
            excluded = (bk.gather(1, at) == prefix[:, None])[:, 0]
        else:
            excluded = (bk == prefix[:, None]).any(1)
        item = torch.where(done & ~excluded, t.item_at(prefix), -1)                             # [B]
        items, keys = state.banned_items, bk
        if self.config.no_repeat:
            items = torch.cat([items, item[:, None]], 1)
            new = torch.where(item >= 0, prefix, SENTINEL)[:, None]                                 # [B, 1]
            if state.keys_sorted:       # insert at the first key >= new: keys before it, new, keys after it
                at = torch.searchsorted(bk, new)                                                   # [B, 1]
                j = torch.arange(e + 1, device=self.device)
                keys = torch.where(j == at, new, bk.gather(1, (j - (j > at).long()).clamp_(max=e - 1)))
            else:
                keys = torch.cat([bk, new], 1)
        zero = torch.zeros_like(prefix)
        return ConstraintState(torch.where(done, zero, prefix), torch.where(done, zero, lvl + 1), items, keys,
                               t, shared, state.keys_sorted), item

    # ---- one-level fast paths (every row at the same SID level, a host int) ---------------------

    def mask_at(self, state: ConstraintState, level: int) -> Tensor:
        """:meth:`mask` of rows that are all at SID ``level`` (the caller knows it on the host: a beam or a
        draft tree advances in lock-step). Same result, about half the tensor ops. -> [B, K_max] bool."""
        state = self.rebase(state)
        K, m = self.k_max, self._mult[level]
        base = state.prefix[:, None]                                           # [B, 1]
        bounds = base + self._edges_at[level]                                  # [B, K+1]: child c is [c, c+1)
        live = torch.searchsorted(self.tables.keys, bounds)                    # [B, K+1] live keys below each bound
        if state.keys_sorted:
            return (_free_children(live, state.banned_keys, bounds) > 0) & self._in_book[level]
        # child of each banned key: -1 below the row's prefix, K above its K children (both dropped)
        child = torch.div(state.banned_keys - base, m, rounding_mode="floor").clamp_(-1, K) + 1      # [B, E]
        banned = torch.zeros(child.shape[0], K + 2, dtype=torch.long, device=self.device).scatter_add_(
            1, child, torch.ones_like(child))[:, 1:K + 1]                     # [B, K] banned live items per child
        return (torch.diff(live, dim=1) > banned) & self._in_book[level]      # a DEAD prefix has no live child

    def advance_at(self, state: ConstraintState, codes: Tensor, level: int) -> ConstraintState:
        """:meth:`advance` of rows that are all at SID ``level`` (host int): the same state (the completed
        items are not returned). ``codes`` [B] long."""
        state = self.rebase(state)
        t, D = self.tables, self.depth
        ok = (codes >= 0) & (codes < self.level_sizes[level]) & (state.prefix >= 0)
        prefix = torch.where(ok, state.prefix + codes * self._mult[level], DEAD)           # [B]
        if level + 1 < D:
            return ConstraintState(prefix, torch.full_like(prefix, level + 1), state.banned_items,
                                   state.banned_keys, t, level + 1, state.keys_sorted)
        bk = state.banned_keys
        item = torch.where((bk == prefix[:, None]).any(1), -1, t.item_at(prefix))          # [B]
        items, keys, ordered = state.banned_items, bk, state.keys_sorted
        if self.config.no_repeat:
            items = torch.cat([items, item[:, None]], 1)
            keys = torch.cat([bk, torch.where(item >= 0, prefix, SENTINEL)[:, None]], 1)
            if ordered:                 # one sort per item keeps the next D masks on the binary-search path
                keys = keys.sort(1).values
        zero = torch.zeros_like(prefix)
        return ConstraintState(zero, zero, items, keys, t, 0, ordered)

    def extend_at(self, state: ConstraintState, rows: Tensor, codes: Tensor, level: int) -> ConstraintState:
        """``advance_at(state.select(rows), codes, level)`` for a draft tree's step, in fewer ops: below the
        last level the prefix is only extended (``prefix + code·mult``, no validity check) and the rows'
        level is a shared constant. Equal to ``advance_at`` on every row whose code ``mask_at`` allowed;
        any other row gets an arbitrary (still well-formed) state, so the caller must treat it as dead (a
        draft node at -inf, as every node with a disallowed code is). ``rows`` [B'], ``codes`` [B'] long."""
        if level + 1 == self.depth:                                            # an item completes: exact path
            return self.advance_at(state.select(rows), codes, level)
        state = self.rebase(state)
        n = int(rows.shape[0])
        lvl = self._level_rows.get((n, level + 1))
        if lvl is None:                 # shape-only constant, never written to
            lvl = self._level_rows[(n, level + 1)] = torch.full((n,), level + 1, dtype=torch.long, device=self.device)
        prefix = state.prefix.index_select(0, rows).add_(codes, alpha=self._mult[level])
        return ConstraintState(prefix, lvl, state.banned_items.index_select(0, rows),
                               state.banned_keys.index_select(0, rows), state.tables, level + 1, state.keys_sorted)

    # ---- shared per-step bookkeeping --------------------------------------------------------

    def masked_logits(self, logits: Tensor, state: ConstraintState) -> Tensor:
        """``logits`` [B, K] with disallowed codes at -inf."""
        return logits.masked_fill(~self.mask(state), NEG_INF)

    def logprobs(self, logits: Tensor, state: ConstraintState) -> Tensor:
        """Constrained log-softmax in float32 (rows with nothing allowed are all -inf). [B, K] -> [B, K]."""
        return masked_log_softmax(self.masked_logits(logits.float(), state))

    def logprobs_along(self, logits: Tensor, states: list[ConstraintState]) -> Tensor:
        """Constrained float32 log-probs at P positions in one pass. ``logits`` [B, P, K], ``states[j]`` the
        state at position j -> [B, P, K] (the verifier's hot path)."""
        b, p, k = logits.shape
        both = ConstraintState.cat([self.rebase(s) for s in states])                  # [P*B] rows
        flat = logits.float().transpose(0, 1).reshape(p * b, k)
        return self.logprobs(flat, both).view(p, b, k).transpose(0, 1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Item of each full SID ``codes`` [..., D] -> [...]; -1 where no live item has it."""
        codes = codes.to(self.device).long()
        ok = ((codes >= 0) & (codes < self.tables.sizes)).all(-1)
        item = self.tables.item_at(self.tables.key(codes.clamp_min(0)))
        return torch.where(ok, item, torch.full_like(item, -1))
