"""Constrained decoding of semantic IDs: greedy / beam session generation, top-N.

Generation is *constrained by the catalog*: at every step the only codes
allowed are those that extend the current partial SID towards at least one
live item the row may still emit, so every generated SID is an existing item
— zero invalid IDs by construction (TIGER, Rajput et al. 2023, and
constrained beam search as in De Cao et al. 2021, "Autoregressive Entity
Retrieval"). A session is generated item after item (OneRec, Deng et al.
2025). The rule (catalog, no repeats, seen items, look-ahead) is the one
engine of :mod:`models.decoding.constraint`, passed in as ``constraint``.

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

import torch
from torch import Tensor

from models.decoding.constraint import NEG_INF, Constraint, SidConstraint, masked_logprobs
from models.generator.kv_cache import KVCache
from models.generator.model import BOS, GenerativeRecommender, HistoryBatch, Memory


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


def reorder_beams(cache: KVCache, parent: Tensor, width: int) -> KVCache:
    """The decoder cache with row ``j`` = row ``parent[j]`` [B*width], every beam staying in its request.

    Cross-attention K/V stay shared (one row per request, ``group = width``), so unlike
    :meth:`KVCache.index_select` nothing is compared on the host: a beam step never synchronises.
    Needs the cache's cross rows to be the B requests (``start_cache``, or an earlier reorder).
    """
    if cache.cross_mask.shape[0] * width != parent.shape[0]:            # shapes only: no device read
        raise ValueError(f"reorder_beams: {parent.shape[0]} rows are not {cache.cross_mask.shape[0]} requests x "
                         f"width {width}; the cache's cross rows must be the requests")
    self_k = [k.index_select(0, parent) for k in cache.self_k]
    self_v = [v.index_select(0, parent) for v in cache.self_v]
    return KVCache(cross_k=list(cache.cross_k), cross_v=list(cache.cross_v), cross_mask=cache.cross_mask,
                   self_k=self_k, self_v=self_v, group=width, self_pad=None)


def _logprobs(constraint: Constraint, logits: Tensor, state, level: int | None) -> Tensor:
    """Constrained float32 log-probs ``[N, K_max]``; rows all at SID ``level`` (a host int, known to a beam
    that advances in lock-step) take :meth:`SidConstraint.mask_at`, the same mask in about half the ops."""
    if level is not None and isinstance(constraint, SidConstraint):
        return masked_logprobs(logits, constraint.mask_at(state, level))
    return constraint.logprobs(logits, state)


def _advance(constraint: Constraint, state, code: Tensor, level: int | None):
    """``constraint.advance`` -> (state, item [N] or None); below the last SID level (no item can complete)
    rows all at ``level`` take :meth:`SidConstraint.advance_at` and the item is None."""
    if level is not None and isinstance(constraint, SidConstraint) and level + 1 < constraint.depth:
        return constraint.advance_at(state, code, level), None
    return constraint.advance(state, code)


def beam_step(model, constraint: Constraint, cache: KVCache, pos: int, token: Tensor, state, score: Tensor,
              b: int, w: int, level: int | None = None):
    """One step of session beam search: a target forward, the constrained top-``w`` of every request.

    ``token`` [N, 1] (N = b*w) inputs at position ``pos``; ``score`` [N] beam scores; ``level``: the SID
    level every row is at (a host int; None: read it from the state). Returns the new cache, state and
    scores, each beam's ``parent`` [N] and ``code`` [N], the code's log-prob [N] and the item each beam
    completed [N] (-1: none; None below the last level when ``level`` is given). Tensor ops only: no host
    synchronisation.
    """
    out = model.decode(token, None, cache, pos)
    logp = _logprobs(constraint, out.logits[:, -1], state, level).to(score.device)   # [N, K_max]
    km = logp.shape[1]
    cand = (score[:, None] + logp).view(b, w * km)
    top, flat = cand.topk(w, dim=1)                                          # [B, W]
    parent = (flat // km) + torch.arange(b, device=score.device)[:, None] * w
    parent, code = parent.reshape(-1), (flat % km).reshape(-1)
    step_lp = logp[parent, code]
    cache = reorder_beams(out.cache, parent, w) if w > 1 else out.cache
    state, item = _advance(constraint, state.select(parent), code, level)
    return cache, state, top.reshape(-1), parent, code, step_lp, item


# ---- searches --------------------------------------------------------------------------------

@dataclass
class FinalBeam:
    """The W beams per request a session beam search ends with (N = B·W rows, request-major)."""

    score: Tensor        # [N] session log-probability under the constrained distribution (-inf: dead beam)
    codes: Tensor        # [N, K·D] SID codes
    items: Tensor        # [N, K] item indices (-1 where a beam found no valid item)
    item_scores: Tensor  # [N, K] log-probability of each item
    batch: int
    width: int
    forwards: int


@torch.no_grad()
def beam_search(model: GenerativeRecommender, memory_or_hist, constraint: Constraint, *,
                session_len: int | None = None, beam_width: int = 4, seen=None) -> FinalBeam:
    """The steps of a constrained session beam search (:func:`beam_step` per SID token), every final beam
    kept: :func:`beam_session` takes the best, :func:`models.decoding.beam_all.beam_candidates` all of them."""
    if beam_width < 1:
        raise ValueError(f"beam_width={beam_width} must be >= 1")
    model.eval()
    K = session_len or model.cfg.session_len
    D = model.cfg.sid_len
    constraint.check_levels(model.cfg.level_sizes)
    memory = _memory(model, memory_or_hist)
    B, W, dev = memory.states.shape[0], beam_width, memory.states.device
    rows = torch.arange(B, device=dev).repeat_interleave(W)                  # [N] request of each beam
    cache = model.start_cache(memory).index_select(rows)
    N = B * W
    state = constraint.init(B, seen).select(rows)
    score = torch.full((N,), NEG_INF, device=dev)
    score[::W] = 0.0                                                         # one live beam per request at start
    codes_so_far = torch.zeros(N, 0, dtype=torch.long, device=dev)           # [N, t]
    item_scores = torch.zeros(N, 0, device=dev)
    items_so_far = torch.zeros(N, 0, dtype=torch.long, device=dev)
    cur_item_score = torch.zeros(N, device=dev)
    token = torch.full((N, 1), BOS, dtype=torch.long, device=dev)
    forwards, pos = 0, 0
    for k in range(K):
        for l in range(D):
            cache, state, score, parent, code, step_lp, item = beam_step(model, constraint, cache, pos, token,
                                                                         state, score, B, W, level=l)
            forwards += 1
            pos += 1
            codes_so_far = torch.cat([codes_so_far[parent], code[:, None]], 1)
            item_scores, items_so_far = item_scores[parent], items_so_far[parent]
            cur_item_score = cur_item_score[parent] + step_lp
            token = code[:, None]
        item = torch.where(torch.isfinite(score) & (item >= 0), item.to(dev), torch.full_like(item, -1))
        items_so_far = torch.cat([items_so_far, item[:, None]], 1)
        item_scores = torch.cat([item_scores, cur_item_score[:, None]], 1)
        cur_item_score = torch.zeros(N, device=dev)
    return FinalBeam(score, codes_so_far, items_so_far, item_scores, B, W, forwards)


@torch.no_grad()
def beam_session(model: GenerativeRecommender, memory_or_hist, constraint: Constraint, *,
                 session_len: int | None = None, beam_width: int = 4, seen=None) -> SessionOutput:
    """Beam search over a whole session of ``session_len`` items (best beam returned).

    ``seen``: items to exclude per request (see :func:`models.decoding.constraint.excluded_items`).
    Beam width 1 is exactly :func:`greedy_session`.
    """
    fb = beam_search(model, memory_or_hist, constraint, session_len=session_len, beam_width=beam_width, seen=seen)
    B, W, K = fb.batch, fb.width, fb.items.shape[1]
    best = fb.score.view(B, W).argmax(1) + torch.arange(B, device=fb.score.device) * W      # [B]
    return SessionOutput(fb.items[best], fb.codes[best].view(B, K, -1), fb.item_scores[best],
                         {"forwards": fb.forwards, "beam_width": W, "mode": "beam" if W > 1 else "greedy"})


@torch.no_grad()
def greedy_session(model: GenerativeRecommender, memory_or_hist, constraint: Constraint, *,
                   session_len: int | None = None, seen=None) -> SessionOutput:
    """Greedy session generation: the most likely allowed code at every step.

    Written separately from :func:`beam_session` (not as width 1 of it) so that
    the two can check each other.
    """
    model.eval()
    K = session_len or model.cfg.session_len
    D = model.cfg.sid_len
    constraint.check_levels(model.cfg.level_sizes)
    memory = _memory(model, memory_or_hist)
    B, dev = memory.states.shape[0], memory.states.device
    cache = model.start_cache(memory)
    state = constraint.init(B, seen)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=dev)
    items, sids, scores = [], [], []
    pos = 0

    def forward(tok: Tensor) -> Tensor:
        nonlocal cache, pos
        out = model.decode(tok, None, cache, pos)
        cache, pos = out.cache, pos + 1
        return out.logits[:, -1]

    for _ in range(K):
        item, item_lp, codes, state = greedy_item(forward, token, constraint, state)
        token = codes[-1][:, None]
        items.append(item)
        sids += codes
        scores.append(item_lp)
    return SessionOutput(torch.stack(items, 1), torch.stack(sids, 1).view(B, K, D), torch.stack(scores, 1),
                         {"forwards": K * D, "beam_width": 1, "mode": "greedy"})


def greedy_item(forward, token: Tensor, constraint: Constraint, state) -> tuple[Tensor, Tensor, list[Tensor], object]:
    """One item for every row by greedy decoding: ``D`` forwards, each row starting at an item boundary.

    ``forward(tokens [N, 1]) -> logits [N, K_max]`` runs the decoder one position on
    (and keeps its cache); ``token`` [N, 1] is each row's next input; ``state`` the rows'
    constraint state. Returns the item of each row [N] (-1 where nothing valid was left),
    its log-probability [N], the ``D`` codes ([N] each) and the new state. Shared by
    :func:`greedy_session` and continuous batching (:mod:`models.decoding.continuous`).
    """
    n, dev = token.shape[0], token.device
    item_lp = torch.zeros(n, device=dev)
    codes = []
    for _ in range(constraint.depth):
        logp = constraint.logprobs(forward(token), state).to(dev)           # [N, K_max]
        best_lp, code = logp.max(dim=-1)
        item_lp = item_lp + best_lp
        state, item = constraint.advance(state, code)
        codes.append(code)
        token = code[:, None]
    item = item.to(dev)
    item = torch.where(torch.isfinite(item_lp) & (item >= 0), item, torch.full_like(item, -1))
    return item, item_lp, codes, state


@torch.no_grad()
def beam_topn(model: GenerativeRecommender, memory_or_hist, constraint: Constraint, n: int, *,
              beam_width: int | None = None, seen=None) -> TopNOutput:
    """The ``n`` most likely distinct next items per request, by constrained beam search.

    Beam width ``max(n, beam_width)`` (a beam narrower than ``n`` could not hold
    ``n`` items). Distinct beams end in distinct SIDs, hence distinct items.
    ``seen``: items to exclude per request (none by default).
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    model.eval()
    constraint.check_levels(model.cfg.level_sizes)
    W = max(n, beam_width or n)
    D = model.cfg.sid_len
    memory = _memory(model, memory_or_hist)
    B, dev = memory.states.shape[0], memory.states.device
    cache = model.start_cache(memory)
    score = torch.zeros(B, device=dev)                                       # one live row per request first
    state = constraint.init(B, seen)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=dev)
    width = 1
    for l in range(D):
        new_w = min(W, width * constraint.k_max)
        cache, state, score, parent, code, _, item = topn_step(model, constraint, cache, l, token, state, score,
                                                               B, width, new_w, level=l)
        token = code[:, None]
        width = new_w
    item = item.to(dev)
    item = torch.where(torch.isfinite(score) & (item >= 0), item, torch.full_like(item, -1)).view(B, width)
    score = torch.where(item.view(-1) >= 0, score, torch.full_like(score, NEG_INF)).view(B, width)
    order = score.argsort(dim=1, descending=True, stable=True)
    item, score = item.gather(1, order), score.gather(1, order)
    if width < n:
        pad = n - width
        item = torch.cat([item, item.new_full((B, pad), -1)], 1)
        score = torch.cat([score, score.new_full((B, pad), NEG_INF)], 1)
    return TopNOutput(item[:, :n], score[:, :n], {"forwards": D, "beam_width": W})


def topn_step(model, constraint: Constraint, cache: KVCache, pos: int, token: Tensor, state, score: Tensor,
              b: int, width: int, new_w: int, level: int | None = None):
    """One step of :func:`beam_topn`: ``b*width`` rows in, ``b*new_w`` out (tensor ops only, no host sync);
    ``level`` as in :func:`beam_step`."""
    out = model.decode(token, None, cache, pos)
    logp = _logprobs(constraint, out.logits[:, -1], state, level).to(score.device)   # [B*width, K_max]
    km = logp.shape[1]
    cand = (score[:, None] + logp).view(b, width * km)
    top, flat = cand.topk(new_w, dim=1)                                      # [B, new_w]
    parent = ((flat // km) + torch.arange(b, device=score.device)[:, None] * width).reshape(-1)
    code = (flat % km).reshape(-1)
    cache = reorder_beams(out.cache, parent, new_w)
    state, item = _advance(constraint, state.select(parent), code, level)
    return cache, state, top.reshape(-1), parent, code, None, item
