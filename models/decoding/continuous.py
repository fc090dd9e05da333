"""Continuous batching of greedy session generation: requests join and leave a running batch.

Why: with static batches, a request that arrives while a batch decodes waits
for that whole batch and then decodes in the next one — about two batch
decodes. Under overload that doubles the latency of every admitted request.
Orca (Yu et al., OSDI 2022, "Orca: A Distributed Serving System for
Transformer-Based Generative Models") schedules at the granularity of one
decoding iteration instead: new requests join the running batch between
steps and finished ones leave at once, so a request waits at most one step.

What: :class:`ContinuousGreedy` keeps the rows of every request in flight —
the decoder cache (ragged: each row at its own position, see
:meth:`models.generator.kv_cache.KVCache.concat_rows`) and each row's
constraint state (:mod:`models.decoding.constraint`: the items it generated
and the items it must not recommend). Rows join with :meth:`admit` and
advance by one whole item per :meth:`step` (``D`` decoder forwards), so every
row is at an item boundary between steps — the caller may update the catalog
between two steps, never during one (each step takes the constraint of the
catalog as it is then; the rows' exclusions follow it). A row leaves as soon
as it has its ``session_len`` items.

Each row's session is exactly what :func:`models.decoding.search.greedy_session`
generates for it alone: padding columns are masked out of attention, the
constraints (trie, no repeats, seen items) are per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from models.decoding.constraint import ConstraintState, SidConstraint, initial_state
from models.decoding.search import greedy_item
from models.generator.model import BOS, GenerativeRecommender, Memory
from models.generator.kv_cache import KVCache


@dataclass
class FinishedSession:
    """One request's generated session (``-1`` items where nothing valid was left)."""

    tag: object                 # what the caller passed to admit() for this request
    items: list[int]            # [K] item indices
    sids: list[list[int]]       # [K][D] codes
    scores: list[float]         # [K] log-probability of each item (sum over its codes)
    steps: int                  # item steps this request took part in (= K)
    max_rows: int               # most rows decoded together while it ran


@dataclass
class _Rows:
    """Host bookkeeping of the running batch (N rows), kept in step with the cache's rows. Everything here
    is known on the host without reading a tensor (a row gains one item per step)."""

    tags: list = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)     # items still to generate
    done: list[int] = field(default_factory=list)          # items generated so far
    max_rows: list[int] = field(default_factory=list)
    owner: "ContinuousGreedy | None" = field(default=None, repr=False)

    @property
    def items(self) -> list[list[int]]:
        """Items each row generated so far (reads the device buffers: for inspection, never inside a step)."""
        gen = self.owner.gen if self.owner is not None else None
        if gen is None:
            return [[] for _ in self.tags]
        return [row[:k] for row, k in zip(gen.items.tolist(), self.done)]


@dataclass
class _Generated:
    """Device buffers of what each row generated so far (read to the host once, when the row leaves)."""

    items: Tensor    # [N, C] long item of each step (C = the longest session in flight)
    sids: Tensor     # [N, C, D] long codes
    scores: Tensor   # [N, C] float log-probability
    col: Tensor      # [N] long next free column of each row

    @classmethod
    def empty(cls, n: int, cap: int, depth: int, device) -> "_Generated":
        return cls(torch.full((n, cap), -1, dtype=torch.long, device=device),
                   torch.zeros(n, cap, depth, dtype=torch.long, device=device),
                   torch.zeros(n, cap, device=device), torch.zeros(n, dtype=torch.long, device=device))

    def widen(self, cap: int) -> "_Generated":
        extra = cap - self.items.shape[1]
        if extra <= 0:
            return self
        n, _, d = self.sids.shape
        return _Generated(torch.cat([self.items, self.items.new_full((n, extra), -1)], 1),
                          torch.cat([self.sids, self.sids.new_zeros(n, extra, d)], 1),
                          torch.cat([self.scores, self.scores.new_zeros(n, extra)], 1), self.col)

    @staticmethod
    def cat(a: "_Generated", b: "_Generated") -> "_Generated":
        cap = max(a.items.shape[1], b.items.shape[1])
        a, b = a.widen(cap), b.widen(cap)
        return _Generated(torch.cat([a.items, b.items]), torch.cat([a.sids, b.sids]),
                          torch.cat([a.scores, b.scores]), torch.cat([a.col, b.col]))

    def select(self, idx: Tensor) -> "_Generated":
        return _Generated(self.items.index_select(0, idx), self.sids.index_select(0, idx),
                          self.scores.index_select(0, idx), self.col.index_select(0, idx))

    def record(self, item: Tensor, item_lp: Tensor, codes: Tensor) -> None:
        """Write one step's ``item`` [N], ``item_lp`` [N], ``codes`` [N, D] at each row's next column."""
        col = self.col[:, None]
        self.items.scatter_(1, col, item[:, None])
        self.scores.scatter_(1, col, item_lp[:, None].to(self.scores.dtype))
        self.sids.scatter_(1, col[:, :, None].expand(-1, 1, codes.shape[1]), codes[:, None, :])
        self.col += 1


class ContinuousGreedy:
    """Greedy session generation over a changing set of requests (see module docstring).

    ``model``: the generator (eval mode is set). One instance serves one model version. A :meth:`step`
    reads nothing back from the device except the sessions of the rows that finish in it.
    """

    def __init__(self, model: GenerativeRecommender) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.cache: KVCache | None = None
        self.token: Tensor | None = None          # [N, 1] next decoder input of each row
        self.state: ConstraintState | None = None  # N rows: emitted and excluded items of each row
        self.gen: _Generated | None = None         # N rows: what they generated so far
        self.rows = _Rows(owner=self)

    def __len__(self) -> int:
        return len(self.rows.tags)

    @torch.no_grad()
    def admit(self, memory: Memory, session_len: Sequence[int], tags: Sequence, seen: Tensor | None = None) -> None:
        """Add B requests: their encoder ``memory`` [B, 1+S, d], items wanted, tags, items to exclude (a bool
        mask [B, n], B lists of item indices, or None).

        The rows decode from position 0 at the next :meth:`step`.
        """
        b = int(memory.states.shape[0])
        if not (len(session_len) == len(tags) == b):
            raise ValueError(f"admit: memory has {b} rows but {len(session_len)} session lengths "
                             f"and {len(tags)} tags")
        if any(int(k) < 1 for k in session_len):
            raise ValueError(f"session_len must be >= 1 per request, got {list(session_len)}")
        new = self.model.start_cache(memory)
        new.self_pad = torch.zeros(b, dtype=torch.long, device=self.device)
        token = torch.full((b, 1), BOS, dtype=torch.long, device=self.device)
        state = initial_state(b, seen, self.device)
        gen = _Generated.empty(b, max(int(k) for k in session_len), self.model.cfg.sid_len, self.device)
        if self.cache is None or len(self) == 0:
            self.cache, self.token, self.state, self.gen = new, token, state, gen
        else:
            self.cache = KVCache.concat_rows(self.cache, new)
            self.token = torch.cat([self.token, token])
            self.state = ConstraintState.cat([self.state, state])
            self.gen = _Generated.cat(self.gen, gen)
        r = self.rows
        r.tags += list(tags)
        r.remaining += [int(k) for k in session_len]
        r.done += [0] * b
        r.max_rows += [0] * b

    @torch.no_grad()
    def step(self, constraint: SidConstraint) -> list[FinishedSession]:
        """Generate one more item for every row (``D`` forwards); return and remove the finished rows.

        ``constraint``: the catalog's constraint *now* (``SidConstraint.of(trie)``; the catalog may
        have changed since the last step).
        """
        n_rows = len(self)
        if n_rows == 0:
            return []
        constraint.check_levels(self.model.cfg.level_sizes)
        r = self.rows                                       # host bookkeeping: no tensor is read
        ragged = len(set(r.done)) > 1                       # rows at different items are at different positions
        self.token, self.state = continuous_step(self.model, self.cache, self.token, constraint, self.state,
                                                 self.gen, ragged)
        done = []
        for i in range(n_rows):
            r.remaining[i] -= 1
            r.done[i] += 1
            r.max_rows[i] = max(r.max_rows[i], n_rows)
            if r.remaining[i] == 0:
                done.append(i)
        if not done:
            return []
        finished = self._collect(done)
        self._keep([i for i in range(n_rows) if r.remaining[i] > 0])
        return finished

    def _collect(self, done: list[int]) -> list[FinishedSession]:
        """The finished rows' sessions, read from the device in one transfer per buffer."""
        r = self.rows
        idx = torch.as_tensor(done, dtype=torch.long, device=self.device)
        g = self.gen.select(idx)
        items, sids, scores = g.items.tolist(), g.sids.tolist(), g.scores.tolist()
        out = []
        for j, i in enumerate(done):
            k = r.done[i]
            out.append(FinishedSession(r.tags[i], items[j][:k], sids[j][:k], scores[j][:k], k, r.max_rows[i]))
        return out

    def _keep(self, keep: list[int]) -> None:
        """Retain only rows ``keep`` (in order); the cache sheds the columns nobody needs."""
        r = self.rows
        for name in ("tags", "remaining", "done", "max_rows"):
            vals = getattr(r, name)
            setattr(r, name, [vals[i] for i in keep])
        if not keep:
            self.cache = self.token = self.state = self.gen = None
            return
        idx = torch.as_tensor(keep, dtype=torch.long, device=self.device)
        self.cache = self.cache.index_select(idx).trim()
        self.token = self.token.index_select(0, idx)
        self.state = self.state.select(idx)
        self.gen = self.gen.select(idx)


def continuous_step(model, cache: KVCache, token: Tensor, constraint: SidConstraint, state: ConstraintState,
                    gen: _Generated, ragged: bool | None = None) -> tuple[Tensor, ConstraintState]:
    """One item for every row of a continuous batch (``D`` ragged forwards), written into ``gen``.

    ``token`` [N, 1] each row's next input; ``ragged`` whether the rows are at different positions (known on
    the host; None: the decoder reads it from the cache, one sync). Returns the next tokens [N, 1] and the
    new state. Tensor ops only: no host synchronisation.
    """
    def forward(tok: Tensor) -> Tensor:
        return model.decode_ragged(tok, cache, ragged).logits[:, -1]

    item, item_lp, codes, state = greedy_item(forward, token, constraint, constraint.rebase(state))
    gen.record(item, item_lp, torch.stack(codes, 1))
    return codes[-1][:, None], state
