"""Speculative constrained beam search over SID sessions (strict = lossless, relaxed = lossy).

Plain session beam search (:func:`models.decoding.search.beam_session`) keeps ``W``
beams per request and, at each of the ``n_items · D`` code steps, expands
every beam by every allowed code and keeps the ``W`` best by summed
log-probability — one target forward per step.

Speculative beam search (AtSpeed, Lin et al., 2024, "Efficient Inference for
Large Language Model-based Generative Recommendation") lets a cheap proposer
run that beam search ahead for ``G`` steps, then checks it:

1. **Propose.** The MTP head chain (:mod:`models.generator.mtp`) runs a constrained
   beam search for ``G`` steps from the current ``W`` beams, keeping ``WD``
   (``draft_width`` >= W) nodes per step, with scores = target score so far +
   draft log-probs. The drafted nodes of all steps form a tree (roots = the
   current beams); drafts outside the catalog trie are never created (the
   constraint masks them before the draft top-WD), and each step's masks are
   kept: verification needs the same ones.
2. **Score.** The whole tree is ONE row per request with a tree attention
   mask (SpecInfer, Miao et al. 2024): every node is a column that sees its
   root beam's cached K/V and its own ancestors, at position ``length +
   step``; one decoder forward (:meth:`GenerativeRecommender.decode_tree`)
   gives every node the target's next-code distribution, at the cost of
   ``W + G·WD`` tokens per request.
3. **Verify, strict.** Replay plain beam search with the target's
   log-probs: at step ``i`` the target's top-W beams (expanding its step
   ``i-1`` beams, candidates in plain search's order so that ties break
   alike) must all be drafted step-``i`` nodes; then their expansions are
   scored too and step ``i+1`` can be checked. A wider tree holds the
   target's beams more often. At the first step where one is not, the
   target's own top-W (computable, since their parents are tree nodes) is
   committed. Every committed step is the plain beam step on the same
   scores, so the output equals plain beam search (AtSpeed's strict top-K
   verification).
4. **Relaxed (lossy).** Accept the drafted step-``i`` beams whenever each of
   them is among the target's top ``relax_factor · W`` candidates, keeping
   the drafted beams (re-scored by the target). More steps per forward, a
   different beam set: the result says ``lossless=False``; the benchmark
   reports its NDCG cost.

Each round commits accepted steps + 1. At batch 1 (and in relaxed mode) the
loop is lock-step; at batch > 1, strict, each request keeps its own committed
length (:func:`_ragged_beam`, decision 034 "Per-row acceptance"): one batched
tree forward, then request ``r`` commits its own ``a_r + 1`` steps, rows sit
at their own positions and SID levels, and finished requests leave the batch. The beams' cache is kept in the tree
layout — per request one row with the ``W`` beams' columns side by side
(``[B, H, W·L, Dh]``) — so the tree forward reads it as it is, and each new
beam's cache is its source beam's columns plus the tree forward's K/V of the
nodes on its committed path, gathered in one index per layer
(:func:`commit_cache`): nothing is recomputed, nothing rolled back. Where
drafting does not pay (rounds at the shortest draft that accept nothing, e.g.
a large lock-step batch) the loop backs off to plain rounds for 1, 2, 4, ...
rounds (``SpecConfig.backoff_max``); a plain round is a tree of the ``W``
roots alone, the plain beam step, so the output is unchanged.

At batch 1 on a CPU core every tensor op costs about the same whatever its
size (decision 034), so a round is written in as few ops as it can be: the
constraint's one-level fast paths (every row of a beam is at the same SID
level, a host int: :meth:`SidConstraint.mask_at` / ``advance_at``; a draft
step and a commit take ``extend_at``: a live node's code is allowed, so its
prefix only extends, and a dead node's state is never read for a live one),
the MTP step with its per-level work in tables (:class:`~models.decoding.proposer_mtp.FusedHeadStep`),
the tree forward's embedding and output lookups built once per decode
(:meth:`GenerativeRecommender.tree_tables`), an additive tree mask, shape-only
index tensors built once (``_const``), and the draft's masks reused by the
verification.

Device residency (decision 028): a round's shapes are fixed by ``W``, ``WD``
and ``G`` alone — the tree is scored as ``B`` rows of ``W + G·WD`` columns
(:func:`tree_layout`), and all ``G`` verification steps are computed with
tensor ops, whether or not an earlier one failed. The number of accepted
steps is the one value read back to the host per round
(:func:`models.decoding.spec_types.accepted_length`; per request at batch
> 1, :func:`~models.decoding.spec_types.accepted_lengths`): the KV cache is
cut to the committed lengths, host integers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
import torch.nn.functional as F

from models.decoding.constraint import NEG_INF, SENTINEL, ConstraintState, SidConstraint, masked_logprobs, pad_columns
from models.decoding.proposer_mtp import FusedHeadStep, head_step
from models.decoding.spec_types import DecodeStats, SpecConfig, accepted_length, accepted_lengths
from models.generator.kv_cache import KVCache
from models.generator.model import BOS


@dataclass
class BeamDraft:
    """Proposer result: a drafted beam tree from the ``W`` beams, ``G`` steps deep, ``WD`` nodes per step."""

    parent: list[Tensor]        # G tensors [B, WD]: each step-i node's parent among step i-1 (step 1: the W beams)
    token: list[Tensor]         # G tensors [B, WD]: code added at step i
    key: list[Tensor]           # G tensors [B, WD]: parent·K + token of each live node, -1 for a dead one
    states: list[ConstraintState]  # G+1 states: states[0] the beams' (B*W rows), states[i] the step-i nodes' (B*WD)
    allowed: list[Tensor]       # G+1 tensors [rows of states[i], K]: each state's allowed next codes


@dataclass
class BeamSession:
    codes: Tensor      # [B, n_items * D] best beam's codes
    cum: Tensor        # [B, n_items * D] its cumulative target score after each code
    score: Tensor      # [B] its final score
    stats: DecodeStats


_CONSTS: dict = {}


def _const(key: tuple, build):
    """Index / mask tensors that depend on shapes only, built once per shape (a round allocates none)."""
    v = _CONSTS.get(key)
    if v is None:
        if len(_CONSTS) > 1024:                        # bounded: sessions of any length, any widths
            _CONSTS.clear()
        v = _CONSTS[key] = build()
    return v


def _offsets(b: int, w: int, dev) -> Tensor:
    """[B, 1] first row of each request when every request has ``w`` rows."""
    return _const(("base", b, w, dev), lambda: (torch.arange(b, device=dev) * w)[:, None])


def _draft_beams(step, constraint: SidConstraint, hidden: Tensor, pending: Tensor, level: int | Tensor,
                 state: ConstraintState, score: Tensor, wd: int, gamma: int,
                 host_levels: list[int] | None = None) -> BeamDraft:
    """Constrained beam search of the MTP chain for ``gamma`` steps from the current ``W`` beams, keeping
    ``wd`` nodes per step (``wd <= W·K_max``).

    ``step(state, code, code_level) -> (state, logits)`` the heads' step (:func:`head_step`); ``hidden``
    [B*W, d] the target state that predicted each beam's ``pending`` code [B*W]; ``level`` the SID level of
    the beams' next code (host int: every row of a beam is at the same level); ``state`` the beams'
    constraint state, ``score`` [B, W] their scores. Each step: the constraint mask of the step's parents
    (kept for verification), the head step, constrained log-probs, top-``wd``, one state advance
    (``extend_at``: exact on every live node, which is all verification reads).
    Ragged requests: ``level`` [B] each request's level and ``host_levels`` the same as host ints (they say
    which steps complete an item somewhere: ``advance`` adds an exclusion column only at those)."""
    b, width = score.shape
    K, D = constraint.k_max, constraint.depth
    s, code, dscore = hidden, pending, score
    out = BeamDraft([], [], [], [state], [])
    ragged = isinstance(level, Tensor)          # per-row levels [B]: the states' own levels, general mask / advance
    for i in range(gamma):
        if ragged:
            ok = constraint.mask(out.states[-1])                                     # [B*width, K]
            out.allowed.append(ok)
            s, logits = step(s, code, ((level + (i - 1)) % D).repeat_interleave(width))
        else:
            lv = (level + i) % D
            ok = constraint.mask_at(out.states[-1], lv)                              # [B*width, K]
            out.allowed.append(ok)
            s, logits = step(s, code, (lv - 1) % D)
        cand = (dscore.reshape(-1, 1) + masked_logprobs(logits, ok)).view(b, width * K)
        dscore, flat = cand.topk(wd, dim=1)                                          # [B, WD]
        parent, tok = flat // K, flat % K
        rows = (parent if b == 1 else parent + _offsets(b, width, score.device)).view(-1)   # one request: no offsets
        out.parent.append(parent)
        out.token.append(tok)
        out.key.append(flat.masked_fill(dscore.isneginf(), -1))                     # parent·K + token
        code = tok.view(-1)
        # live nodes took allowed codes; a dead node's (-inf) state is never read for a live one
        if ragged:
            sel = out.states[-1].select(rows)
            out.states.append(constraint.advance(sel, code, any((x + i) % D == D - 1 for x in host_levels))[0])
        else:
            out.states.append(constraint.extend_at(out.states[-1], rows, code, lv))
        s, width = s.index_select(0, rows), wd
    out.allowed.append(constraint.mask(out.states[-1]) if ragged
                       else constraint.mask_at(out.states[-1], (level + gamma) % D))
    return out


@dataclass
class Tree:
    """A draft tree laid out for one verification forward per request: the ``W`` roots (the current beams)
    at columns ``0..W-1``, node ``j`` of step ``i >= 1`` at column ``W + (i-1)·WD + j``."""

    tokens: Tensor     # [B, Q] each node's code (roots: the beams' pending codes), Q = W + G·WD
    mask: Tensor       # [B, Q, W·L + Q] additive (0 visible, -inf not): its root beam's L cached columns,
                       # its ancestors and itself
    depth: Tensor      # [Q] tree step of each column


def _layout_consts(g: int, wd: int, w: int, length: int, dev) -> tuple[Tensor, list[Tensor], Tensor]:
    """The additive attention rows (0 visible, -inf not) of the roots [W, W·L + Q] (their beam's cached
    columns and themselves), each step's own columns [WD, W·L + Q] (steps 1..G), every column's tree step [Q]."""
    def build():
        c, q = w * length, w + g * wd
        roots = torch.zeros(w, c + q, dtype=torch.bool, device=dev)
        beam_of_col = torch.arange(c, device=dev) // max(length, 1)                  # [W·L]
        roots[:, :c] = beam_of_col[None, :] == torch.arange(w, device=dev)[:, None]
        roots[:, c:c + w] = torch.eye(w, dtype=torch.bool, device=dev)
        own = torch.zeros(g, wd, c + q, dtype=torch.bool, device=dev)
        for i in range(g):
            own[i, :, c + w + i * wd:c + w + (i + 1) * wd] = torch.eye(wd, dtype=torch.bool, device=dev)
        depth = torch.cat([torch.zeros(w, dtype=torch.long, device=dev),
                           torch.arange(1, g + 1, device=dev).repeat_interleave(wd)])
        add = lambda m: torch.zeros(m.shape, device=dev).masked_fill_(~m, float("-inf"))  # noqa: E731
        return add(roots), list(add(own)), depth
    return _const(("layout", g, wd, w, length, dev), build)


def tree_layout(draft: BeamDraft, root_tok: Tensor, b: int, wd: int, g: int, w: int, length: int,
                valid: Tensor | None = None) -> Tree:
    """The tree attention layout of a draft (SpecInfer, Miao et al. 2024): every node is one column of its
    request's row, seeing the ``length`` cached columns of its root beam and its own ancestors only, so the
    target scores all ``W + G·WD`` nodes in one forward without one row per root-to-node path.

    ``root_tok`` [B, W] the beams' pending codes. A step-i node's row is its parent's row plus its own
    column (the max of two additive rows). ``valid`` [B, W·L] bool (ragged rows: each beam's block of ``L``
    columns holds its request's committed positions first, then padding): padding is never seen.
    Fixed shapes, tensor ops only."""
    roots, own, depth = _layout_consts(g, wd, w, length, root_tok.device)
    if valid is None:
        rows = [roots.expand(b, -1, -1)]                                             # [B, W, W·L + Q]
    else:                                                   # padding columns of a shorter row: -inf
        pad = torch.zeros(b, roots.shape[1], device=root_tok.device)
        pad[:, :valid.shape[1]].masked_fill_(~valid, NEG_INF)
        rows = [roots + pad.unsqueeze(1)]
    for i in range(g):
        par = draft.parent[i].unsqueeze(2).expand(-1, -1, roots.shape[1])
        rows.append(torch.maximum(rows[-1].gather(1, par), own[i]))                  # [B, WD, W·L + Q]
    return Tree(torch.cat([root_tok] + draft.token, 1), torch.cat(rows, 1), depth)


def commit_cache(scored: KVCache, src_beam: Tensor, cols: Tensor, w: int, length: int,
                 idx: Tensor | None = None) -> KVCache:
    """Each new beam's cache without recomputation: its source beam's ``length`` cached columns followed by
    the tree-forward K/V of the nodes on its committed path, in the tree layout (beams side by side).

    ``scored`` the tree forward's cache [B rows, W·L + Q columns] (the beams' cache, then the nodes');
    ``src_beam`` [B, W] the beam each new beam descends from; ``cols`` [B, W, A] the tree columns of its
    committed path. Returns [B rows, W·(L + A) columns]: new beam ``j`` at columns ``j·(L+A) ..``.
    ``idx`` [B, M] (ragged rows, :func:`_ragged_commit_index`): the ``scored`` columns to keep, given whole."""
    b, _, a = cols.shape
    if idx is None:
        old = _const(("arange", length, cols.device), lambda: torch.arange(length, device=cols.device))
        idx = torch.cat([(src_beam * length).unsqueeze(2) + old, cols + w * length], 2).view(b, -1)  # [B, W·(L+A)]
    h, c = scored.self_k[0].shape[1], scored.self_k[0].shape[2]
    if b > 1:   # row r = (request, head) of a [B·H·C, Dh] view: one index_select of whole K/V rows, not a gather
        base = _const(("bh", b, h, c, cols.device), lambda: (torch.arange(b * h, device=cols.device) * c)[:, None])
        idx = (idx.repeat_interleave(h, 0) + base).view(-1)
    else:
        idx = idx.view(-1)

    def keep(x: Tensor) -> Tensor:
        if b == 1:
            return x.index_select(2, idx)
        return x.reshape(-1, x.shape[3]).index_select(0, idx).view(b, h, -1, x.shape[3])
    return KVCache(list(scored.cross_k), list(scored.cross_v), scored.cross_mask,
                   [keep(k) for k in scored.self_k], [keep(v) for v in scored.self_v], 1, None)


def verify_tree(draft: BeamDraft, logits: Tensor, score: Tensor, w: int, g: int, relaxed: bool = False,
                relax_factor: float = 2.0, per_row: bool = False
                ) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], Tensor]:
    """All ``g`` verification steps of a scored draft tree, with tensor ops only (see module docstring).

    ``logits`` [B, Q, K] the target's at every tree node (:class:`Tree` columns); ``score`` [B, W] the
    beams' scores. Plain beam search is replayed on the target's log-probs with its candidates in the plain
    search's own order (beam position, then code), so its top-``w`` — ties included — are plain beam
    search's; each of its beams is then looked up among the drafted nodes by the ``parent·K + code`` key.
    Strict: step ``i`` is accepted when every live beam of the target's top-``w`` is a drafted node.
    Relaxed: when every drafted node (re-scored by the target) is within the target's top
    ``relax_factor·w``; the drafted nodes, best first, are then the beams.
    Returns the acceptance flag of each step [G] (a step counts only after every earlier one was accepted;
    ``per_row``, strict only: [G, B], each request's own flags);
    at each position 1..G+1 the target's top-``w`` scores and flat indices over ``[W, K]`` [B, W] and the
    node id of each of its beams before the step [B, W] (position 1: the roots, ``0..W-1``); and every
    node's target score [B, Q] (-inf for a node that is none of the target's beams; roots: ``score``)."""
    b, q, k = logits.shape
    logp = masked_logprobs(logits, torch.cat([a.view(b, -1, k) for a in draft.allowed], 1))   # [B, Q, K]
    roots = _const(("roots", b, w, score.device), lambda: torch.arange(w, device=score.device).expand(b, w))
    cur, cur_score, first = roots, score, 0
    scores, oks, hits, tops, flats, curs = [score], [], [], [], [], []
    for i in range(g + 1):
        lp = logp[:, first:first + w] if i == 0 else logp[:, first:first + draft.key[i - 1].shape[1]]
        if i:                                                     # the target's beams' rows, in beam order
            lp = lp.gather(1, cur.unsqueeze(2).expand(-1, -1, k))                    # [B, W, K]
        cand = (cur_score.unsqueeze(2) + lp).view(b, w * k)
        if relaxed and i < g:
            vals, idx = cand.topk(min(int(relax_factor * w), w * k), dim=1)
            top, flat = vals[:, :w], idx[:, :w]
        else:
            top, flat = cand.topk(w, dim=1)                                          # [B, W]
        tops.append(top)
        flats.append(flat)
        curs.append(cur)
        if i == g:
            break
        key = draft.key[i]                                                           # [B, WD]
        first += lp.shape[1] if i == 0 else key.shape[1]
        if not relaxed:
            tkey = flat                                           # [B, W] node key (parent node·K + code)
            if i:                                                 # of each beam: parent beam -> its node
                codes = _const(("codes", k, score.device), lambda: torch.arange(k, device=score.device))
                tkey = ((cur * k).unsqueeze(2) + codes).view(b, w * k).gather(1, flat)
            eq = tkey.unsqueeze(2) == key.unsqueeze(1)                               # [B, W, WD]
            hits.append(eq)
            node = torch.where(eq, top.unsqueeze(2), NEG_INF).amax(1)                # [B, WD]
            cur = eq.to(torch.uint8).argmax(2)                                       # node id of each beam
        else:                                   # WD = W: every drafted node is a beam, re-scored by the target
            dead = key < 0
            par, tok = draft.parent[i], draft.token[i]
            pos = par if i == 0 else torch.argsort(cur, dim=1).gather(1, par)        # parent's beam position
            node = cand.gather(1, pos * k + tok).masked_fill(dead, NEG_INF)
            thresh = vals[:, -1:]
            oks.append((((node >= thresh) | dead).all() & thresh.isfinite().all())[None])
            cur = node.argsort(dim=1, descending=True, stable=True)
            top = node.gather(1, cur)
        scores.append(node)
        cur_score = top
    if not g:
        flags = score.new_zeros(0, dtype=torch.long)
    elif relaxed:
        flags = torch.cat(oks).long().cumprod(0)
    elif per_row:                       # strict, each request alone: [G, B]
        flags = (torch.stack(hits).any(3) | torch.stack(tops[:g]).isneginf()).all(2).long().cumprod(0)
    else:                               # strict: every live target beam of a step is a drafted node
        flags = (torch.stack(hits).any(3) | torch.stack(tops[:g]).isneginf()).flatten(1).all(1).long().cumprod(0)
    return flags, tops, flats, curs, torch.cat(scores, 1)


class _RowLevelHeadStep:
    """A draft step whose rows are at different SID levels (ragged requests): ``step(state, code, level)`` with
    ``level`` a long tensor [N]. :class:`FusedHeadStep`'s tables stacked over levels (one lookup per row);
    heads with a tensor-level ``step`` use it; any other head is called once per level and the rows picked."""

    def __init__(self, heads, step, depth: int) -> None:
        self.step, self.fused = step, isinstance(step, FusedHeadStep)
        if self.fused:
            f = step
            K, d = max(f.sizes), f.state_in.shape[0]
            table = f.state_in.new_zeros(f.depth * K, d)
            for lv, (rows, k) in enumerate(zip(f.code_in, f.sizes)):
                table[lv * K:lv * K + k] = rows
            self.k, self.table = K, table                                          # [D·K, d]
            self.sizes = torch.tensor(f.sizes, device=table.device)               # [D]
            self.out_bias = torch.stack(f.out_bias)                                # [D, K] by the input's level
        self.tensor_level = not self.fused and hasattr(heads, "level_sizes_t")    # MTPHeads.step takes tensors
        self.depth = depth

    def __call__(self, state: Tensor, code: Tensor, level: Tensor) -> tuple[Tensor, Tensor]:
        """``state`` [N, d], ``code`` [N], ``level`` [N] each code's SID level -> (state [N, d], logits [N, K])."""
        if self.fused:
            f = self.step
            idx = level * self.k + torch.minimum(code.clamp(min=0), self.sizes[level] - 1)
            x = torch.addmm(self.table.index_select(0, idx), state, f.state_in)
            y = F.layer_norm(x, f.norm_shape, f.norm_w, f.norm_b, f.norm_eps)
            x = x + F.linear(F.gelu(F.linear(y, f.up_w, f.up_b)), f.down_w, f.down_b)
            return x, torch.addmm(self.out_bias.index_select(0, level), x, f.out_w)
        if self.tensor_level:
            return self.step(state, code, level)
        outs = [self.step(state, code, lv) for lv in range(self.depth)]            # a head of one level per call
        pick = level.unsqueeze(1)
        s = outs[0][0]
        logits = outs[0][1]
        for lv in range(1, self.depth):
            s = torch.where(pick == lv, outs[lv][0], s)
            logits = torch.where(pick == lv, outs[lv][1], logits)
        return s, logits


def _cat_states(states: list[ConstraintState]) -> ConstraintState:
    """Rows of several states of one catalog stacked (a draft's steps), banned columns padded at the end."""
    e, k = (max(x.banned_items.shape[1] for x in states), max(x.banned_keys.shape[1] for x in states))
    return ConstraintState(torch.cat([x.prefix for x in states]), torch.cat([x.level for x in states]),
                           torch.cat([pad_columns(x.banned_items, e, -1) for x in states]),
                           torch.cat([pad_columns(x.banned_keys, k, SENTINEL) for x in states]),
                           states[0].tables, None, all(x.keys_sorted for x in states))


def _ragged_commit_index(src: Tensor, cols: Tensor, nv: Tensor, w: int, length: int, new_len: int) -> Tensor:
    """The tree-forward cache columns each new beam keeps when requests are at their own lengths: beam ``j``
    of request ``r`` takes its source beam's first ``n_r`` columns (block width ``length``), then its path's
    ``a_r + 1`` tree columns, then padding up to ``new_len``. ``src`` [B, W], ``cols`` [B, W, A+1] (entries
    past ``a_r`` unused), ``nv`` [B] -> [B, W·new_len]."""
    b, _, a1 = cols.shape
    t = _const(("arange", new_len, cols.device), lambda: torch.arange(new_len, device=cols.device))
    nr = nv.view(b, 1, 1)
    old = src.unsqueeze(2) * length + t.clamp(max=max(length - 1, 0))              # [B, W, new_len]
    path = cols.gather(2, (t - nr).clamp(0, a1 - 1).expand(b, w, new_len)) + w * length
    return torch.where(t < nr, old, path).view(b, -1)


def _ragged_beam(model, cache: KVCache, constraint: SidConstraint, n_tok: int, W: int, WD: int, state: ConstraintState,
                 heads, step, spec: SpecConfig, stats: DecodeStats, dtype) -> BeamSession:
    """Strict speculative beam where every request keeps its own committed length (no lock-step).

    After one batched tree forward, request ``r`` commits its own ``a_r + 1`` steps; requests then sit at
    different lengths ``n_r`` — per-row positions (``decode_tree`` with a [B] start), SID levels (the general
    ``mask``, ``advance`` on each row's level, head steps by row level) and beam caches laid side by side
    in blocks of the longest row's width, padding masked in the tree mask (:func:`tree_layout` ``valid``). A
    request that completes its session leaves the batch. Every request's committed steps are plain beam
    search's on the same scores (each one's verification is its own), so the output is plain beam search's.
    The per-row accepted counts [B] are the round's one host read (:func:`accepted_lengths`)."""
    dev, D, K = constraint.device, constraint.depth, constraint.k_max
    b0 = cache.batch_size
    buf = n_tok + spec.gamma_max + 1                     # a round writes up to G + 1 codes past a row's length
    tables = model.tree_tables(buf) if hasattr(model, "tree_tables") else None
    rstep = _RowLevelHeadStep(heads, step, D)
    # rows leave lock-step after the first round; the excluded items are read only to re-derive keys for
    # another catalog (rebase), and this call's catalog is fixed, so rows carry their banned keys alone
    state = replace(state, shared_level=None, banned_items=state.banned_items.new_full((state.batch_size, 1), -1))
    score = torch.full((b0, W), NEG_INF, device=dev)
    score[:, 0] = 0.0
    hist = torch.zeros(b0 * W, buf, dtype=torch.long, device=dev)
    hcum = torch.zeros(b0 * W, buf, device=dev)
    pending = torch.full((b0, W), BOS, dtype=torch.long, device=dev)
    hidden = None
    out_codes = torch.zeros(b0, n_tok, dtype=torch.long, device=dev)
    out_cum = torch.zeros(b0, n_tok, device=dev)
    out_score = torch.zeros(b0, device=dev)
    alive = list(range(b0))                              # original request of each row still decoding
    n = [0] * b0                                         # each row's committed length (host)
    nv = torch.zeros(b0, dtype=torch.long, device=dev)   # the same on the device
    length = 0                                           # block width of each beam in the cache
    gamma, wasted, plain_left, draft_steps = spec.gamma, 0, 0, 0
    while alive:
        b = len(alive)
        nb = b * W
        room = max(n_tok - x - 1 for x in n)
        g = min(gamma, room) if (hidden is not None and not plain_left) else 0
        plain_left = max(plain_left - 1, 0) if g == 0 and hidden is not None else plain_left
        wd = WD if g else W
        if g:
            draft = _draft_beams(rstep, constraint, hidden.view(nb, -1), pending.view(nb), nv % D, state, score, wd, g,
                                 [x % D for x in n])
            draft_steps += g
        else:
            draft = BeamDraft([], [], [], [state], [constraint.mask(state)])
        col = _const(("colpos", W, length, dev), lambda: torch.arange(W * length, device=dev) % max(length, 1))
        tree = tree_layout(draft, pending, b, wd, g, W, length, col.unsqueeze(0) < nv.unsqueeze(1))
        out = (model.decode_tree(tree.tokens, tree.depth, nv, cache, tree.mask) if tables is None
               else model.decode_tree(tree.tokens, tree.depth, nv, cache, tree.mask, tables))
        stats.target_forwards += 1
        flags, tops, flats, curs, node_score = verify_tree(draft, out.logits, score, W, g, per_row=True)
        if g:                                            # a row never accepts past its session's end
            a_vec = torch.minimum(flags.sum(0), (n_tok - 1) - nv)
            a_list = accepted_lengths(a_vec)             # the round's one host read
        else:
            a_vec, a_list = torch.zeros(b, dtype=torch.long, device=dev), [0] * b
        A = max(a_list)
        if A:                                            # each row's own step a_r
            pick = a_vec.view(1, b, 1).expand(1, b, W)
            flat = torch.stack(flats[:A + 1]).gather(0, pick)[0]
            top = torch.stack(tops[:A + 1]).gather(0, pick)[0]
            cur = torch.stack(curs[:A + 1]).gather(0, pick)[0]
        else:
            flat, top, cur = flats[0], tops[0], curs[0]
        start = cur.gather(1, flat // K)                                            # [B, W] step-a_r parents
        node, path = start, [None] * (A + 1)
        for j in range(A, 0, -1):                        # walk up; rows with a_r < j keep their node
            path[j] = node + (W + (j - 1) * wd)
            node = torch.where((a_vec >= j).unsqueeze(1), draft.parent[j - 1].gather(1, node), node)
        path[0] = src = node                                                        # [B, W] source beam
        cols = torch.stack(path, 2)                                                 # [B, W, A+1]
        n2 = [x + a + 1 for x, a in zip(n, a_list)]
        new_len = max(n2)
        cache = commit_cache(out.cache, src, cols, W, length,
                             _ragged_commit_index(src, cols, nv, W, length, new_len))
        last = cols.gather(2, a_vec.view(b, 1, 1).expand(b, W, 1))                  # [B, W, 1]
        hidden = out.hidden.gather(1, last.expand(-1, -1, out.hidden.shape[2])).to(dtype)   # [B, W, d]
        rows = (src + _offsets(b, W, dev)).view(-1)
        code = flat % K
        hist, hcum = hist.index_select(0, rows), hcum.index_select(0, rows)
        where = (nv.unsqueeze(1) + torch.arange(A + 1, device=dev)).repeat_interleave(W, 0)   # [N, A+1]
        if A:                                            # accepted drafts, then the target's own step
            on = cols[..., 1:].reshape(b, -1)
            at = a_vec.view(b, 1, 1).expand(b, W, 1)
            toks = torch.cat([tree.tokens.gather(1, on).view(b, W, A), code.unsqueeze(2)], 2).scatter(
                2, at, code.unsqueeze(2))
            sc = torch.cat([node_score.gather(1, on).view(b, W, A), top.unsqueeze(2)], 2).scatter(
                2, at, top.unsqueeze(2))
            hist.scatter_(1, where, toks.view(nb, A + 1))
            hcum.scatter_(1, where, sc.view(nb, A + 1))
            offs, width = _const(("steprows", b, W, wd, A, dev), lambda: (      # first row / rows per request
                torch.tensor([0] + [b * W + i * b * wd for i in range(A)], device=dev),
                torch.tensor([W] + [wd] * A, device=dev)))
            srow = ((offs[a_vec] + torch.arange(b, device=dev) * width[a_vec]).unsqueeze(1) + start).view(-1)
            parent_state = _cat_states(draft.states[:A + 1]).select(srow)
        else:
            hist.scatter_(1, where, code.view(nb, 1))
            hcum.scatter_(1, where, top.reshape(nb, 1))
            parent_state = draft.states[0].select(rows)
        state, _ = constraint.advance(parent_state, code.view(-1),
                                      any((x + a) % D == D - 1 for x, a in zip(n, a_list)))
        pending, score, n, length, nv = code, top, n2, new_len, nv + a_vec + 1
        stats.rounds += 1
        stats.drafted += g * b
        stats.accepted += sum(a_list)
        stats.row_accepted += sum(a_list)
        if g:
            mid = sorted(a_list)[b // 2]                 # the schedule follows the median row
            gamma = spec.next_gamma(gamma, mid, g)
            wasted = spec.next_wasted(wasted, mid, g)    # wasted: the median row accepted nothing
            plain_left = spec.plain_rounds(wasted)
        done = [i for i, x in enumerate(n) if x >= n_tok]
        if done:                                         # finished requests leave the batch
            fin = torch.tensor(done, device=dev)
            orig = torch.tensor([alive[i] for i in done], device=dev)
            best = score.index_select(0, fin).argmax(1) + fin * W
            out_codes[orig] = hist.index_select(0, best)[:, :n_tok]
            out_cum[orig] = hcum.index_select(0, best)[:, :n_tok]
            out_score[orig] = score.reshape(-1).index_select(0, best)
            keep_l = [i for i, x in enumerate(n) if x < n_tok]
            if not keep_l:
                break
            keep = torch.tensor(keep_l, device=dev)
            beams = (keep.unsqueeze(1) * W + torch.arange(W, device=dev)).view(-1)
            cache = KVCache([k.index_select(0, keep) for k in cache.cross_k],
                            [v.index_select(0, keep) for v in cache.cross_v], cache.cross_mask.index_select(0, keep),
                            [k.index_select(0, keep) for k in cache.self_k],
                            [v.index_select(0, keep) for v in cache.self_v], 1, None)
            state, hist, hcum = state.select(beams), hist.index_select(0, beams), hcum.index_select(0, beams)
            score, pending = score.index_select(0, keep), pending.index_select(0, keep)
            hidden = hidden.index_select(0, keep)
            alive, n, nv = [alive[i] for i in keep_l], [n[i] for i in keep_l], nv.index_select(0, keep)
            length = max(n)
            cache = _trim_blocks(cache, W, new_len, length)
    stats.draft_steps = draft_steps
    return BeamSession(out_codes, out_cum, out_score, stats)


def _trim_blocks(cache: KVCache, w: int, old: int, new: int) -> KVCache:
    """The beams' blocks cut from ``old`` to ``new`` columns each (the longest row left the batch)."""
    if new == old:
        return cache

    def cut(x: Tensor) -> Tensor:
        b, h, _, dh = x.shape
        return x.view(b, h, w, old, dh)[:, :, :, :new].reshape(b, h, w * new, dh)
    return KVCache(cache.cross_k, cache.cross_v, cache.cross_mask, [cut(k) for k in cache.self_k],
                   [cut(v) for v in cache.self_v], 1, None)


@torch.no_grad()
def speculative_beam(model, memory, constraint: SidConstraint, n_items: int, beam_width: int, *,
                     heads=None, spec: SpecConfig = SpecConfig(), seen=None, relaxed: bool = False,
                     relax_factor: float = 2.0, mode: str = "", draft_width: int | None = None) -> BeamSession:
    """Session beam search, speculative when ``heads`` (MTP) is given, plain KV-cached otherwise.

    Strict (default) returns exactly :func:`models.decoding.search.beam_session`'s best beam; ``relaxed=True``
    is lossy (see module docstring). ``draft_width`` (strict only, >= ``beam_width``, default ``2·beam_width``):
    beams the proposer keeps per draft step — a wider tree holds the target's beams more often (more steps
    accepted per forward) at the price of more rows per forward (decision 034: W drafts accept too little).
    """
    if draft_width is not None and draft_width < beam_width:
        raise ValueError(f"draft_width={draft_width} must be >= beam_width={beam_width} (or None: 2 x the beam width)")
    if beam_width < 1:
        raise ValueError(f"beam_width={beam_width} must be >= 1")
    if relaxed and not relax_factor >= 1:
        raise ValueError(f"relax_factor={relax_factor} must be >= 1 (1 = strict top-W)")
    W, D, K = beam_width, constraint.depth, constraint.k_max
    WD = W if relaxed else (draft_width or 2 * W)                               # relaxed keeps the drafted W
    WD = min(WD, W * constraint.k_max)                                          # a step has at most W·K children
    n_tok = n_items * D
    dev = constraint.device
    cache = model.start_cache(memory)                                           # tree layout: B rows, W·n columns
    B = cache.batch_size
    N = B * W
    base = _offsets(B, W, dev)                                                  # [B, 1]
    stats = DecodeStats(mode or ("beam" if heads is None else ("spec_beam_relaxed" if relaxed else "spec_beam")),
                        lossless=not relaxed)
    state = constraint.init(B, seen).select(torch.arange(B, device=dev).repeat_interleave(W))
    score = torch.full((B, W), NEG_INF, device=dev)
    score[:, 0] = 0.0
    codes = torch.zeros(N, 0, dtype=torch.long, device=dev)
    cum = torch.zeros(N, 0, device=dev)
    pending = torch.full((B, W), BOS, dtype=torch.long, device=dev)
    hidden = None                                                               # [B, W, d]
    step = head_step(heads) if heads is not None else None
    tables = model.tree_tables(n_tok) if hasattr(model, "tree_tables") else None   # the tree forward's lookups
    dtype = heads.out.weight.dtype if heads is not None else None             # the heads' input dtype
    if B > 1 and step is not None and not relaxed and getattr(model, "ragged_tree", False):
        return _ragged_beam(model, cache, constraint, n_tok, W, WD, state, heads, step, spec, stats, dtype)
    gamma, n = spec.gamma, 0
    draft_steps = 0
    wasted, plain_left = 0, 0                   # drafting that does not pay is paused (SpecConfig.plain_rounds)
    while n < n_tok:
        g = min(gamma, n_tok - n - 1) if (heads is not None and n > 0 and not plain_left) else 0
        plain_left = max(plain_left - 1, 0) if g == 0 and n > 0 else plain_left
        lvl = n % D                                                             # SID level of the next code
        wd = WD if g > 0 else W
        if g > 0:
            draft = _draft_beams(step, constraint, hidden.view(N, -1), pending.view(N), lvl, state, score, wd, g)
            draft_steps += g
        else:
            draft = BeamDraft([], [], [], [state], [constraint.mask_at(state, lvl)])
        # ---- score: ONE target forward over the whole tree (tree attention mask) ----------------
        tree = tree_layout(draft, pending, B, wd, g, W, n)
        out = (model.decode_tree(tree.tokens, tree.depth, n, cache, tree.mask) if tables is None
               else model.decode_tree(tree.tokens, tree.depth, n, cache, tree.mask, tables))
        stats.target_forwards += 1
        # ---- verify every step on the device; read back how many were accepted ----------------
        flags, tops, flats, curs, node_score = verify_tree(draft, out.logits, score, W, g, relaxed, relax_factor)
        a = accepted_length(flags.sum()) if g else 0                                # the round's one host read
        # ---- commit a accepted steps + the target's step a+1 --------------------------------
        flat = flats[a]
        nodes = [curs[a].gather(1, flat // K)]                                      # [B, W] step-a parents
        for j in range(a, 0, -1):
            nodes.append(draft.parent[j - 1].gather(1, nodes[-1]))
        src = nodes[-1]                                                             # [B, W] source beam
        first = _const(("first", a, W, wd, dev),                               # column of step 0..a's node 0
                       lambda: torch.tensor([0] + [W + i * wd for i in range(a)], device=dev))
        cols = torch.stack(nodes[::-1], 2) + first                                  # [B, W, a+1] path columns
        cache = commit_cache(out.cache, src, cols, W, n)
        if step is not None:                            # the state that predicted each new beam's code
            hidden = out.hidden.gather(1, cols[..., -1:].expand(-1, -1, out.hidden.shape[2])).to(dtype)  # [B, W, d]
        rows = (src if B == 1 else src + base).view(-1)                            # one request: no offsets
        code, top = flat % K, tops[a]
        done, done_cum = [codes.index_select(0, rows)], [cum.index_select(0, rows)]
        if a:                                           # the accepted drafts' codes and target scores
            on_path = cols[..., 1:].reshape(B, -1)                                  # [B, W·a]
            done.append(tree.tokens.gather(1, on_path).view(N, a))
            done_cum.append(node_score.gather(1, on_path).view(N, a))
        codes = torch.cat(done + [code.view(N, 1)], 1)
        cum = torch.cat(done_cum + [top.reshape(N, 1)], 1)
        parents = (nodes[0] if B == 1 else nodes[0] + _offsets(B, wd if a else W, dev)).view(-1)  # draft.states[a] rows
        # a live beam's code is allowed; a dead beam (-inf) stays dead whatever its state (extend_at's premise)
        state = constraint.extend_at(draft.states[a], parents, code.view(-1), (n + a) % D)
        pending, score = code, top
        n += a + 1
        stats.rounds += 1
        stats.drafted += g * B
        stats.accepted += a * B
        stats.row_accepted += a * B
        gamma = spec.next_gamma(gamma, a, g)
        if g:
            wasted = spec.next_wasted(wasted, a, g)
            plain_left = spec.plain_rounds(wasted)
    stats.draft_steps = draft_steps
    best = score.argmax(1) + base[:, 0]                                              # [B]
    return BeamSession(codes[best, :n_tok], cum[best, :n_tok], score.reshape(-1)[best], stats)
