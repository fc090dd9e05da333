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
:meth:`models.kv_cache.KVCache.concat_rows`), the items each row generated and
the items it must not recommend. Rows join with :meth:`admit` and advance
by one whole item per :meth:`step` (``D`` decoder forwards), so every row
is at an item boundary between steps: all rows predict the same SID level at
each forward, and between steps no row holds a trie node — the caller may
update the catalog (trie, items) between two steps, never during one. A row
leaves as soon as it has its ``session_len`` items.

Each row's session is exactly what :func:`models.decoding.greedy_session`
generates for it alone: padding columns are masked out of attention, the
constraints (trie, no repeats, seen items) are per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from models.decoding import ExcludeSeen, ItemBanConstraint, NoRepeat, SidRangeIndex, TrieConstraint, _mult, greedy_item
from models.generator import BOS, GenerativeRecommender, Memory
from models.kv_cache import KVCache


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
    """Per-row state of the running batch (N rows), kept in step with the cache's rows."""

    tags: list = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)     # items still to generate
    items: list[list[int]] = field(default_factory=list)
    sids: list[list[list[int]]] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    max_rows: list[int] = field(default_factory=list)


class ContinuousGreedy:
    """Greedy session generation over a changing set of requests (see module docstring).

    ``model``: the generator (eval mode is set). One instance serves one model version.
    """

    def __init__(self, model: GenerativeRecommender) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.cache: KVCache | None = None
        self.token: Tensor | None = None          # [N, 1] next decoder input of each row
        self.generated: Tensor | None = None      # [N, n] bool: items already in the row's session
        self.seen: Tensor | None = None           # [N, n] bool: items the row must not recommend
        self.rows = _Rows()

    def __len__(self) -> int:
        return len(self.rows.tags)

    @torch.no_grad()
    def admit(self, memory: Memory, session_len: Sequence[int], tags: Sequence, seen: Tensor | None = None) -> None:
        """Add B requests: their encoder ``memory`` [B, 1+S, d], items wanted, tags, banned items [B, n] (or None).

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
        n = 0 if seen is None else int(seen.shape[1])
        new_seen = seen.to(self.device) if seen is not None else torch.zeros(b, 0, dtype=torch.bool, device=self.device)
        if self.cache is None or len(self) == 0:
            self.cache, self.token, self.seen = new, token, new_seen
            self.generated = torch.zeros(b, n, dtype=torch.bool, device=self.device)
        else:
            self.cache = KVCache.concat_rows(self.cache, new)
            self.token = torch.cat([self.token, token])
            self.seen = torch.cat(_same_width(self.seen, new_seen))
            self.generated = torch.cat(_same_width(self.generated,
                                                   torch.zeros(b, n, dtype=torch.bool, device=self.device)))
        r = self.rows
        r.tags += list(tags)
        r.remaining += [int(k) for k in session_len]
        r.items += [[] for _ in range(b)]
        r.sids += [[] for _ in range(b)]
        r.scores += [[] for _ in range(b)]
        r.max_rows += [0] * b

    @torch.no_grad()
    def step(self, trie, index: SidRangeIndex) -> list[FinishedSession]:
        """Generate one more item for every row (``D`` forwards); return and remove the finished rows.

        ``trie`` / ``index``: the catalog's constraint structures *now* (they may
        have changed since the last step; every row starts this item at the root).
        """
        n_rows = len(self)
        if n_rows == 0:
            return []
        model, dev = self.model, self.device
        if tuple(trie.level_sizes) != tuple(model.cfg.level_sizes):
            raise ValueError(f"trie level_sizes {tuple(trie.level_sizes)} != model's {model.cfg.level_sizes}")
        n_items = index.n_items
        self.generated = _width(self.generated, n_items)
        self.seen = _width(self.seen, n_items)
        processors = [TrieConstraint(trie), ItemBanConstraint(index, [ExcludeSeen(self.seen), NoRepeat()])]
        rows = torch.arange(n_rows, device=dev)

        def forward(tok: Tensor) -> Tensor:
            return model.decode_ragged(tok, self.cache).logits[:, -1]

        item, item_lp, codes = greedy_item(forward, self.token, trie, processors, rows, self.generated,
                                           _mult(trie, dev))
        self.token = codes[-1][:, None]
        ok = item >= 0
        self.generated[ok.nonzero(as_tuple=True)[0], item[ok]] = True
        item_l, lp_l = item.tolist(), item_lp.tolist()
        code_l = torch.stack(codes, 1).tolist()                                # [N, D]
        r = self.rows
        done = []
        for i in range(n_rows):
            r.items[i].append(item_l[i])
            r.sids[i].append(code_l[i])
            r.scores[i].append(lp_l[i])
            r.remaining[i] -= 1
            r.max_rows[i] = max(r.max_rows[i], n_rows)
            if r.remaining[i] == 0:
                done.append(i)
        if not done:
            return []
        finished = [FinishedSession(r.tags[i], r.items[i], r.sids[i], r.scores[i], len(r.items[i]), r.max_rows[i])
                    for i in done]
        self._keep([i for i in range(n_rows) if r.remaining[i] > 0])
        return finished

    def _keep(self, keep: list[int]) -> None:
        """Retain only rows ``keep`` (in order); the cache sheds the columns nobody needs."""
        r = self.rows
        for name in ("tags", "remaining", "items", "sids", "scores", "max_rows"):
            vals = getattr(r, name)
            setattr(r, name, [vals[i] for i in keep])
        if not keep:
            self.cache = self.token = self.generated = self.seen = None
            return
        idx = torch.as_tensor(keep, dtype=torch.long, device=self.device)
        self.cache = self.cache.index_select(idx).trim()
        self.token = self.token.index_select(0, idx)
        self.generated = self.generated.index_select(0, idx)
        self.seen = self.seen.index_select(0, idx)


def _width(x: Tensor, n: int) -> Tensor:
    """Pad a [N, m] bool matrix with False columns up to n (the catalog grew)."""
    return x if x.shape[1] >= n else torch.nn.functional.pad(x, (0, n - x.shape[1]), value=False)


def _same_width(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    n = max(a.shape[1], b.shape[1])
    return _width(a, n), _width(b, n)
