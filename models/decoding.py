"""Constrained decoding of semantic IDs: logits processors, greedy / beam session generation, top-N.

Generation is *constrained by the catalog trie*: at every step the only codes
allowed are those that extend the current partial SID towards at least one
live item, so every generated SID is an existing item — zero invalid IDs by
construction (TIGER, Rajput et al. 2023, and constrained beam search as in
De Cao et al. 2021, "Autoregressive Entity Retrieval"). A session is generated
item after item (OneRec, Deng et al. 2025): after the last level of an item
the trie walk restarts at the root.

Constraints are small composable *logits processors* ``p(logits [N, K_max],
state) -> logits``:

* :class:`TrieConstraint` — only codes that are children of the current trie node;
* :class:`ItemBanConstraint` — items may be banned per row by *ban sources*
  (:class:`ExcludeSeen` — what the user already interacted with;
  :class:`NoRepeat` — items already in this session). A code is allowed only
  if its subtree still holds an un-banned item, so a search can never walk
  into a prefix whose items are all banned (no dead ends, even for greedy).

Searches (all count the *target* decoder forwards in ``stats``):

* :func:`greedy_session` — argmax at every step;
* :func:`beam_session` — beam search over the whole session (score = sum of
  log-probabilities of all codes); width 1 equals greedy;
* :func:`beam_topn` — beam search over ONE item, returning the ``n`` best
  distinct items with scores (ranking / offline evaluation; beam ≥ n).

Scores are log-probabilities under the *constrained* distribution (softmax
renormalised over the allowed codes at each step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from models.generator import BOS, GenerativeRecommender, HistoryBatch, Memory

NEG_INF = float("-inf")


# ---- the state processors see ----------------------------------------------------------------

@dataclass
class DecodeState:
    """What a logits processor may read at one decoding step (N rows = requests × beams)."""

    level: int              # SID level being predicted (same for every row)
    nodes: Tensor           # [N] trie node of each row's partial item (-1 = dead path)
    prefix_key: Tensor      # [N] mixed-radix key of the partial item's codes so far
    request: Tensor         # [N] request (batch row of the input) each row belongs to
    generated: Tensor | None  # [N, n_items] bool: items already emitted in this row's session


class LogitsProcessor(Protocol):
    def __call__(self, logits: Tensor, state: DecodeState) -> Tensor:  # [N, K_max] -> [N, K_max]
        ...


class TrieConstraint:
    """Mask every code that is not a child of the row's current trie node."""

    def __init__(self, trie) -> None:
        self.trie = trie

    def __call__(self, logits: Tensor, state: DecodeState) -> Tensor:
        allowed = self.trie.next_mask(state.nodes).to(logits.device)        # [N, K_max]
        return logits.masked_fill(~allowed, NEG_INF)


class SidRangeIndex:
    """Live items sorted by SID, so that each SID prefix is a contiguous range of ranks.

    With mixed-radix keys ``key(sid) = sum_l sid_l * prod(level_sizes[l+1:])``,
    the items under a prefix of length ``l+1`` are exactly those whose key
    lies in ``[base + c * mult_l, base + (c+1) * mult_l)``; two
    ``searchsorted`` calls give that range for all rows and codes at once.
    """

    def __init__(self, level_sizes: Sequence[int], sids: np.ndarray, items: np.ndarray,
                 n_items: int | None = None, device: str | torch.device = "cpu") -> None:
        sizes = np.asarray(level_sizes, dtype=np.int64)
        self.level_sizes = tuple(int(x) for x in sizes)
        self.k_max = int(sizes.max())
        mult = np.ones(len(sizes), dtype=np.int64)
        for l in range(len(sizes) - 2, -1, -1):
            mult[l] = mult[l + 1] * sizes[l + 1]
        sids = np.asarray(sids, dtype=np.int64).reshape(-1, len(sizes))
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        keys = (sids * mult[None, :]).sum(1)
        order = np.argsort(keys, kind="stable")
        self.n_items = int(n_items if n_items is not None else (items.max() + 1 if items.size else 0))
        self.mult = torch.as_tensor(mult, device=device)                    # [D]
        self.keys = torch.as_tensor(keys[order], device=device)             # [M] sorted
        self.items = torch.as_tensor(items[order], device=device)           # [M] item at each rank

    @classmethod
    def from_trie(cls, trie, n_items: int | None = None) -> "SidRangeIndex":
        sids, items = trie.entries()
        return cls(trie.level_sizes, sids, items, n_items)

    def child_ranges(self, prefix_key: Tensor, level: int) -> tuple[Tensor, Tensor]:
        """Rank ranges [N, K_max] (lo, hi) of the items under ``prefix + c`` for every code c."""
        codes = torch.arange(self.k_max, device=prefix_key.device)
        m = self.mult[level]
        lo_key = prefix_key[:, None] + codes[None, :] * m
        lo = torch.searchsorted(self.keys, lo_key.contiguous())
        hi = torch.searchsorted(self.keys, (lo_key + m).contiguous())
        return lo, hi


class ExcludeSeen:
    """Ban source: items each request has already seen. ``seen`` BoolTensor [B, n_items]."""

    def __init__(self, seen: Tensor) -> None:
        self.seen = seen

    def ban(self, state: DecodeState) -> Tensor | None:
        return self.seen.to(state.request.device).index_select(0, state.request)


class NoRepeat:
    """Ban source: items already generated earlier in the same session."""

    def ban(self, state: DecodeState) -> Tensor | None:
        return state.generated


class ItemBanConstraint:
    """Allow a code only if its subtree still holds an item no ban source bans (see module doc)."""

    def __init__(self, index: SidRangeIndex, sources: Sequence) -> None:
        self.index = index
        self.sources = list(sources)

    def __call__(self, logits: Tensor, state: DecodeState) -> Tensor:
        banned = None
        for s in self.sources:
            b = s.ban(state)
            if b is None:
                continue
            n = self.index.n_items
            b = b[:, :n] if b.shape[1] >= n else torch.nn.functional.pad(b, (0, n - b.shape[1]))
            banned = b if banned is None else banned | b
        if banned is None or not bool(banned.any()):
            return logits
        ok_sorted = (~banned).index_select(1, self.index.items).long()           # [N, M]
        cum = torch.cat([ok_sorted.new_zeros(ok_sorted.shape[0], 1), ok_sorted.cumsum(1)], 1)  # [N, M+1]
        lo, hi = self.index.child_ranges(state.prefix_key, state.level)        # [N, K_max]
        free = cum.gather(1, hi) - cum.gather(1, lo)                           # un-banned items under each child
        return logits.masked_fill(free <= 0, NEG_INF)


def default_processors(trie, *, seen: Tensor | None = None, no_repeat: bool = True,
                       index: SidRangeIndex | None = None, n_items: int | None = None) -> list:
    """The standard chain: trie constraint, then (if any) seen-exclusion / no-repeat bans."""
    procs: list = [TrieConstraint(trie)]
    sources: list = []
    if seen is not None:
        sources.append(ExcludeSeen(seen))
    if no_repeat:
        sources.append(NoRepeat())
    if sources:
        if index is None:
            n = n_items if n_items is not None else (seen.shape[1] if seen is not None else None)
            index = SidRangeIndex.from_trie(trie, n)
        procs.append(ItemBanConstraint(index, sources))
    return procs


# ---- results ---------------------------------------------------------------------------------

@dataclass
class SessionOutput:
    """A generated session per request."""

    items: Tensor   # [B, K] item indices (-1 where nothing valid could be generated)
    sids: Tensor    # [B, K, D] codes
    scores: Tensor  # [B, K] log-probability of each item (sum over its D codes)
    stats: dict = field(default_factory=dict)


@dataclass
class TopNOutput:
    items: Tensor   # [B, n] distinct item indices, best first (-1 padding)
    scores: Tensor  # [B, n] log-probabilities (-inf for padding)
    stats: dict = field(default_factory=dict)


# ---- helpers ---------------------------------------------------------------------------------

def _memory(model: GenerativeRecommender, memory_or_hist) -> Memory:
    if isinstance(memory_or_hist, Memory):
        return memory_or_hist
    if isinstance(memory_or_hist, HistoryBatch):
        return model.encode(memory_or_hist.to(next(model.parameters()).device))
    raise TypeError(f"expected a Memory or HistoryBatch, got {type(memory_or_hist).__name__}")


def _mult(trie, device) -> Tensor:
    sizes = list(trie.level_sizes)
    mult = [1] * len(sizes)
    for l in range(len(sizes) - 2, -1, -1):
        mult[l] = mult[l + 1] * sizes[l + 1]
    return torch.tensor(mult, dtype=torch.long, device=device)


def _n_items(trie, processors) -> int:
    for p in processors:
        if isinstance(p, ItemBanConstraint):
            return p.index.n_items
    items = trie.items()
    return int(items.max() + 1) if len(items) else 0


def _constrained_logp(logits: Tensor, processors, state: DecodeState) -> Tensor:
    """Apply processors, then log-softmax; rows with nothing allowed become all -inf."""
    logits = logits.float()
    for p in processors:
        logits = p(logits, state)
    none = ~torch.isfinite(logits).any(dim=-1)                               # [N]
    logits = torch.where(none[:, None], torch.zeros_like(logits), logits)
    logp = torch.log_softmax(logits, dim=-1)
    return logp.masked_fill(none[:, None], NEG_INF)


# ---- searches --------------------------------------------------------------------------------

@torch.no_grad()
def beam_session(model: GenerativeRecommender, memory_or_hist, trie, *, session_len: int | None = None,
                 beam_width: int = 4, processors: list | None = None) -> SessionOutput:
    """Beam search over a whole session of ``session_len`` items (best beam returned).

    ``processors`` default to :func:`default_processors` (trie + no-repeat).
    Beam width 1 is exactly :func:`greedy_session`.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width={beam_width} must be >= 1")
    model.eval()
    K = session_len or model.cfg.session_len
    D = model.cfg.sid_len
    if tuple(trie.level_sizes) != tuple(model.cfg.level_sizes):
        raise ValueError(f"trie level_sizes {tuple(trie.level_sizes)} != model's {model.cfg.level_sizes}; "
                         "use the tokenizer the model was trained with")
    processors = default_processors(trie) if processors is None else processors
    memory = _memory(model, memory_or_hist)
    B, W, dev = memory.states.shape[0], beam_width, memory.states.device
    n_items = max(_n_items(trie, processors), 1)
    mult = _mult(trie, dev)
    rows = torch.arange(B, device=dev).repeat_interleave(W)                  # [N] request of each beam
    cache = model.start_cache(memory).index_select(rows)
    N = B * W
    score = torch.full((N,), NEG_INF, device=dev)
    score[::W] = 0.0                                                         # one live beam per request at start
    nodes = trie.root(N).to(dev)
    prefix = torch.zeros(N, dtype=torch.long, device=dev)
    generated = torch.zeros(N, n_items, dtype=torch.bool, device=dev)
    codes_so_far = torch.zeros(N, 0, dtype=torch.long, device=dev)           # [N, t]
    item_scores = torch.zeros(N, 0, device=dev)
    items_so_far = torch.zeros(N, 0, dtype=torch.long, device=dev)
    cur_item_score = torch.zeros(N, device=dev)
    token = torch.full((N, 1), BOS, dtype=torch.long, device=dev)
    forwards, pos = 0, 0
    for k in range(K):
        for l in range(D):
            out = model.decode(token, None, cache, pos)
            forwards += 1
            pos += 1
            state = DecodeState(l, nodes, prefix, rows, generated)
            logp = _constrained_logp(out.logits[:, -1], processors, state)   # [N, K_max]
            Km = logp.shape[1]
            cand = (score[:, None] + logp).view(B, W * Km)
            top, flat = cand.topk(W, dim=1)                                  # [B, W]
            parent = (flat // Km) + torch.arange(B, device=dev)[:, None] * W
            parent, code = parent.reshape(-1), (flat % Km).reshape(-1)
            step_lp = logp[parent, code]
            score = top.reshape(-1)
            cache = out.cache.index_select(parent) if W > 1 else out.cache
            nodes = trie.step(nodes[parent], code).to(dev)
            prefix = prefix[parent] + code * mult[l]
            generated = generated[parent]
            codes_so_far = torch.cat([codes_so_far[parent], code[:, None]], 1)
            item_scores, items_so_far = item_scores[parent], items_so_far[parent]
            cur_item_score = cur_item_score[parent] + step_lp
            token = code[:, None]
        item = trie.leaf_item(nodes).to(dev)
        item = torch.where(torch.isfinite(score) & (nodes >= 0), item, torch.full_like(item, -1))
        ok = item >= 0
        generated[ok.nonzero(as_tuple=True)[0], item[ok]] = True
        items_so_far = torch.cat([items_so_far, item[:, None]], 1)
        item_scores = torch.cat([item_scores, cur_item_score[:, None]], 1)
        cur_item_score = torch.zeros(N, device=dev)
        nodes = trie.root(N).to(dev)
        prefix = torch.zeros_like(prefix)
    best = score.view(B, W).argmax(1) + torch.arange(B, device=dev) * W      # [B]
    sids = codes_so_far[best].view(B, K, D)
    return SessionOutput(items_so_far[best], sids, item_scores[best],
                         {"forwards": forwards, "beam_width": W, "mode": "beam" if W > 1 else "greedy"})


@torch.no_grad()
def greedy_session(model: GenerativeRecommender, memory_or_hist, trie, *, session_len: int | None = None,
                   processors: list | None = None) -> SessionOutput:
    """Greedy session generation: the most likely allowed code at every step.

    Written separately from :func:`beam_session` (not as width 1 of it) so that
    the two can check each other.
    """
    model.eval()
    K = session_len or model.cfg.session_len
    D = model.cfg.sid_len
    processors = default_processors(trie) if processors is None else processors
    memory = _memory(model, memory_or_hist)
    B, dev = memory.states.shape[0], memory.states.device
    n_items = max(_n_items(trie, processors), 1)
    mult = _mult(trie, dev)
    rows = torch.arange(B, device=dev)
    cache = model.start_cache(memory)
    generated = torch.zeros(B, n_items, dtype=torch.bool, device=dev)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=dev)
    items, sids, scores = [], [], []
    pos = 0

    def forward(tok: Tensor) -> Tensor:
        nonlocal cache, pos
        out = model.decode(tok, None, cache, pos)
        cache, pos = out.cache, pos + 1
        return out.logits[:, -1]

    for _ in range(K):
        item, item_lp, codes = greedy_item(forward, token, trie, processors, rows, generated, mult)
        token = codes[-1][:, None]
        ok = item >= 0
        generated[ok.nonzero(as_tuple=True)[0], item[ok]] = True
        items.append(item)
        sids += codes
        scores.append(item_lp)
    return SessionOutput(torch.stack(items, 1), torch.stack(sids, 1).view(B, K, D), torch.stack(scores, 1),
                         {"forwards": K * D, "beam_width": 1, "mode": "greedy"})


def greedy_item(forward, token: Tensor, trie, processors, rows: Tensor, generated: Tensor | None,
                mult: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One item for every row by greedy decoding: ``D`` forwards, each row starting at the trie root.

    ``forward(tokens [N, 1]) -> logits [N, K_max]`` runs the decoder one position on
    (and keeps its cache); ``token`` [N, 1] is each row's next input. Returns the
    item of each row [N] (-1 where nothing valid was left), its log-probability [N]
    and the ``D`` codes ([N] each). Shared by :func:`greedy_session` and continuous
    batching (:mod:`models.continuous_batching`).
    """
    n, dev = token.shape[0], token.device
    nodes, prefix = trie.root(n).to(dev), torch.zeros(n, dtype=torch.long, device=dev)
    item_lp = torch.zeros(n, device=dev)
    codes = []
    for level in range(len(trie.level_sizes)):
        logp = _constrained_logp(forward(token), processors, DecodeState(level, nodes, prefix, rows, generated))
        best_lp, code = logp.max(dim=-1)
        item_lp = item_lp + best_lp
        nodes = trie.step(nodes, code).to(dev)
        prefix = prefix + code * mult[level]
        codes.append(code)
        token = code[:, None]
    item = trie.leaf_item(nodes).to(dev)
    item = torch.where(torch.isfinite(item_lp) & (item >= 0), item, torch.full_like(item, -1))
    return item, item_lp, codes


@torch.no_grad()
def beam_topn(model: GenerativeRecommender, memory_or_hist, trie, n: int, *, beam_width: int | None = None,
              processors: list | None = None) -> TopNOutput:
    """The ``n`` most likely distinct next items per request, by constrained beam search.

    Beam width ``max(n, beam_width)`` (a beam narrower than ``n`` could not hold
    ``n`` items). Distinct beams end in distinct SIDs, hence distinct items.
    ``processors`` default to the trie constraint only (pass
    ``default_processors(trie, seen=..., no_repeat=False)`` to exclude seen items).
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    model.eval()
    if tuple(trie.level_sizes) != tuple(model.cfg.level_sizes):
        raise ValueError(f"trie level_sizes {tuple(trie.level_sizes)} != model's {model.cfg.level_sizes}; "
                         "use the tokenizer the model was trained with")
    W = max(n, beam_width or n)
    D = model.cfg.sid_len
    processors = [TrieConstraint(trie)] if processors is None else processors
    memory = _memory(model, memory_or_hist)
    B, dev = memory.states.shape[0], memory.states.device
    mult = _mult(trie, dev)
    cache = model.start_cache(memory)
    rows = torch.arange(B, device=dev)                                       # one live row per request first
    score = torch.zeros(B, device=dev)
    nodes = trie.root(B).to(dev)
    prefix = torch.zeros(B, dtype=torch.long, device=dev)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=dev)
    width = 1
    for l in range(D):
        out = model.decode(token, None, cache, l)
        state = DecodeState(l, nodes, prefix, rows, None)
        logp = _constrained_logp(out.logits[:, -1], processors, state)       # [B*width, K_max]
        Km = logp.shape[1]
        cand = (score[:, None] + logp).view(B, width * Km)
        new_w = min(W, width * Km)
        top, flat = cand.topk(new_w, dim=1)                                  # [B, new_w]
        parent = ((flat // Km) + torch.arange(B, device=dev)[:, None] * width).reshape(-1)
        code = (flat % Km).reshape(-1)
        score = top.reshape(-1)
        rows = rows[parent]
        cache = out.cache.index_select(parent)
        nodes = trie.step(nodes[parent], code).to(dev)
        prefix = prefix[parent] + code * mult[l]
        token = code[:, None]
        width = new_w
    item = trie.leaf_item(nodes).to(dev)
    item = torch.where(torch.isfinite(score) & (item >= 0), item, torch.full_like(item, -1)).view(B, width)
    score = torch.where(item.view(-1) >= 0, score, torch.full_like(score, NEG_INF)).view(B, width)
    order = score.argsort(dim=1, descending=True, stable=True)
    item, score = item.gather(1, order), score.gather(1, order)
    if width < n:
        pad = n - width
        item = torch.cat([item, item.new_full((B, pad), -1)], 1)
        score = torch.cat([score, score.new_full((B, pad), NEG_INF)], 1)
    return TopNOutput(item[:, :n], score[:, :n], {"forwards": D, "beam_width": W})
