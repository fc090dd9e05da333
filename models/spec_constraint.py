"""Catalog constraint for session decoding, shared by plain and speculative decoders.

Every decoder in :mod:`models.speculative`, :mod:`models.spec_beam` and
:mod:`models.decode_modes` asks the same three questions at each SID token:
*which codes may come next* (``mask``), *what does choosing this code lead to*
(``advance``) and *keep only these rows* (``select``, for beams and draft
trees). Plain decoding and its speculative twins must answer them identically
— that is what makes the lossless modes give exactly plain decoding's output
— so the answers live in one place.

The constraint is built from the catalog's ``(sids [N, D], item_idx [N])``
table (``SidTrie.entries()``). Per row it tracks

* ``match [B, N]`` — catalog rows whose SID starts with the codes of the item
  being generated (all True at an item boundary), and
* ``used [B, N]`` — rows that may not be emitted: items already in this
  session (no repeats) and, optionally, the user's seen items.

A code is allowed iff at least one *live* (matching and not used) item lies
under it. This is the trie constraint (TIGER, Rajput et al. 2023) with
exclusions folded in *with look-ahead*: a prefix whose every item is excluded
is never entered, so decoding can never reach a dead end or emit an invalid
or repeated item. Cost per step is O(B · N) vectorised work — a few µs for the
catalog sizes here; a trie walk would be O(B log E) but cannot see exclusions
below the current node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class ConstraintState:
    """Per-row decoding state. ``level`` is shared: all rows sit at the same SID level."""

    match: Tensor   # [B, N] bool: catalog rows matching the current item's prefix
    used: Tensor    # [B, N] bool: catalog rows excluded (emitted in this session, or seen)
    level: int      # SID level of the next code (0 .. D-1)

    def select(self, idx: Tensor) -> "ConstraintState":
        """Rows ``idx`` [B'] of this state (beam reorder / expansion)."""
        return ConstraintState(self.match.index_select(0, idx), self.used.index_select(0, idx), self.level)

    @property
    def batch_size(self) -> int:
        return int(self.match.shape[0])


class CatalogConstraint:
    """Allowed-code masks over a catalog table (see module docstring).

    ``sids`` [N, D] long and ``items`` [N] long (catalog item indices, any order).
    ``k_max`` is the width of the decoder's logits.
    """

    def __init__(self, sids, items, k_max: int, device: str | torch.device = "cpu") -> None:
        sids = torch.as_tensor(np.asarray(sids), dtype=torch.long)
        items = torch.as_tensor(np.asarray(items), dtype=torch.long).reshape(-1)
        if sids.dim() != 2 or sids.shape[0] != items.shape[0] or sids.shape[0] == 0:
            raise ValueError(f"CatalogConstraint needs sids [N, D] and items [N] with N >= 1; got "
                             f"{tuple(sids.shape)} and {tuple(items.shape)} (an empty catalog cannot be decoded)")
        if int(sids.max()) >= k_max or int(sids.min()) < 0:
            raise ValueError(f"sid codes must lie in [0, k_max={k_max}); got range "
                             f"[{int(sids.min())}, {int(sids.max())}] — pass the generator's k_max")
        order = torch.argsort(items)
        self.device = torch.device(device)
        self.sids = sids[order].to(self.device)           # [N, D]
        self.items = items[order].to(self.device)         # [N] sorted item indices
        self.k_max = int(k_max)
        self.depth = int(sids.shape[1])
        self.n = int(sids.shape[0])

    @classmethod
    def from_trie(cls, trie, device: str | torch.device = "cpu") -> "CatalogConstraint":
        """Build from a :class:`models.sid_trie.SidTrie` (its live ``entries()``)."""
        sids, items = trie.entries()
        return cls(sids, items, trie.k_max, device)

    # ---- state ---------------------------------------------------------------------------

    def rows_of(self, item_idx: Tensor) -> Tensor:
        """Catalog rows of item indices [M] (-1 for items not in the catalog)."""
        item_idx = torch.as_tensor(item_idx, dtype=torch.long, device=self.device).reshape(-1)
        pos = torch.searchsorted(self.items, item_idx).clamp_max(self.n - 1)
        return torch.where(self.items[pos] == item_idx, pos, torch.full_like(pos, -1))

    def init(self, batch: int, seen=None) -> ConstraintState:
        """Fresh state at an item boundary. ``seen``: None, a [B, N_items] bool tensor indexed by
        item index, or a list of B item-index sequences to exclude."""
        match = torch.ones(batch, self.n, dtype=torch.bool, device=self.device)
        used = torch.zeros(batch, self.n, dtype=torch.bool, device=self.device)
        if seen is not None:
            if isinstance(seen, Tensor) and seen.dtype == torch.bool and seen.dim() == 2:
                if seen.shape[0] != batch:
                    raise ValueError(f"seen mask has {seen.shape[0]} rows for a batch of {batch}")
                ok = self.items < seen.shape[1]
                used[:, ok] = seen.to(self.device)[:, self.items[ok]]
            else:
                if len(seen) != batch:
                    raise ValueError(f"seen has {len(seen)} lists for a batch of {batch}")
                for b, s in enumerate(seen):
                    r = self.rows_of(torch.as_tensor(np.asarray(s, dtype=np.int64)))
                    used[b, r[r >= 0]] = True
        return ConstraintState(match, used, 0)

    def mask(self, state: ConstraintState) -> Tensor:
        """Allowed next codes [B, K_max] bool. All False for a row whose every item is excluded (as in
        :mod:`models.decoding`, such a row yields item -1 rather than a repeat)."""
        live = state.match & ~state.used                                    # [B, N]
        col = self.sids[:, state.level].expand(live.shape[0], -1)             # [B, N]
        counts = torch.zeros(live.shape[0], self.k_max, device=self.device)
        allowed = counts.scatter_add_(1, col, live.float()) > 0               # [B, K_max]
        return allowed

    def advance(self, state: ConstraintState, codes: Tensor) -> tuple[ConstraintState, Tensor | None]:
        """Apply ``codes`` [B] at ``state.level``. Returns the new state and, when an item was completed,
        its item index per row [B] (-1 for a row whose path is not a catalog item), else None."""
        codes = codes.to(self.device)
        match = state.match & (self.sids[:, state.level][None, :] == codes[:, None])
        level = state.level + 1
        if level < self.depth:
            return ConstraintState(match, state.used, level), None
        found = match.any(1)
        row = match.to(torch.uint8).argmax(1)                                 # SIDs are unique
        item = torch.where(found, self.items[row], torch.full_like(row, -1))
        used = state.used.clone()
        used[found.nonzero(as_tuple=True)[0], row[found]] = True
        return ConstraintState(torch.ones_like(match), used, 0), item

    def masked_logits(self, logits: Tensor, state: ConstraintState) -> Tensor:
        """``logits`` [B, K] with disallowed codes at -inf."""
        return logits.masked_fill(~self.mask(state), float("-inf"))

    def logprobs_along(self, logits: Tensor, states: list[ConstraintState]) -> Tensor:
        """Constrained float32 log-probs at several positions in one vectorised pass.

        ``logits`` [B, P, K]; ``states[j]`` the state at position j (P states). -> [B, P, K]. Same values
        as calling :meth:`logprobs` per position (the verifier's hot path: one scatter, not P)."""
        b, p, k = logits.shape
        match = torch.cat([s.match for s in states], 0)                              # [P*B, N]
        used = torch.cat([s.used for s in states], 0)
        levels = torch.tensor([s.level for s in states], device=self.device).repeat_interleave(b)  # [P*B]
        live = match & ~used
        col = self.sids.t().index_select(0, levels)                                  # [P*B, N]
        allowed = torch.zeros(p * b, self.k_max, device=self.device).scatter_add_(1, col, live.float()) > 0
        flat = logits.float().transpose(0, 1).reshape(p * b, k).masked_fill(~allowed, float("-inf"))
        return safe_log_softmax(flat).view(p, b, k).transpose(0, 1)

    def logprobs(self, logits: Tensor, state: ConstraintState) -> Tensor:
        """Constrained log-softmax in float32, exactly as :mod:`models.decoding` computes it
        (rows with nothing allowed are all -inf). ``logits`` [B, K] -> [B, K]."""
        return safe_log_softmax(self.masked_logits(logits.float(), state))


    # ---- lookups ---------------------------------------------------------------------------

    def _keys(self) -> Tensor:
        if not hasattr(self, "_sorted_keys"):
            radix = self.k_max ** torch.arange(self.depth - 1, -1, -1, device=self.device)
            keys = (self.sids * radix).sum(1)                                # [N] mixed-radix SID key
            order = torch.argsort(keys)
            self._radix, self._sorted_keys, self._key_items = radix, keys[order], self.items[order]
        return self._sorted_keys

    def lookup(self, codes: Tensor) -> Tensor:
        """Item index of each full SID ``codes`` [..., D] -> [...]; -1 where no catalog item has it."""
        keys = self._keys()
        q = (codes.to(self.device).long() * self._radix).sum(-1)
        pos = torch.searchsorted(keys, q.reshape(-1)).clamp_max(self.n - 1).reshape(q.shape)
        return torch.where(keys[pos] == q, self._key_items[pos], torch.full_like(q, -1))


def safe_log_softmax(masked: Tensor) -> Tensor:
    """log_softmax over the last dim; rows that are all -inf stay all -inf (no NaN)."""
    none = ~torch.isfinite(masked).any(dim=-1, keepdim=True)
    logp = torch.log_softmax(torch.where(none, torch.zeros_like(masked), masked), dim=-1)
    return logp.masked_fill(none, float("-inf"))

