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

Requests in a batch advance in lock-step (the fewest accepted steps), and
each round commits accepted steps + 1. The beams' cache is kept in the tree
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
(:func:`models.decoding.spec_types.accepted_length`): the KV cache is cut to
the committed length, a host integer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.decoding.constraint import NEG_INF, Constraint, ConstraintState, masked_logprobs
from models.decoding.proposer_mtp import head_step
from models.decoding.spec_types import DecodeStats, SpecConfig, accepted_length
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


def _draft_beams(step, constraint: Constraint, hidden: Tensor, pending: Tensor, level: int,
                 state: ConstraintState, score: Tensor, wd: int, gamma: int) -> BeamDraft:
    """Constrained beam search of the MTP chain for ``gamma`` steps from the current ``W`` beams, keeping
    ``wd`` nodes per step (``wd <= W·K_max``).

    ``step(state, code, code_level) -> (state, logits)`` the heads' step (:func:`head_step`); ``hidden``
    [B*W, d] the target state that predicted each beam's ``pending`` code [B*W]; ``level`` the SID level of
    the beams' next code (host int: every row of a beam is at the same level); ``state`` the beams'
    constraint state, ``score`` [B, W] their scores. Each step: the constraint mask of the step's parents
    (kept for verification), the head step, constrained log-probs, top-``wd``, one state advance
    (``extend_at`` where the engine has it: exact on every live node, which is all verification reads)."""
    b, width = score.shape
    K, D = constraint.k_max, constraint.depth
    s, code, dscore = hidden, pending, score
    out = BeamDraft([], [], [], [state], [])
    extend = getattr(constraint, "extend_at", None)
    for i in range(gamma):
        lv = (level + i) % D
        ok = constraint.mask_at(out.states[-1], lv)                                  # [B*width, K]
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
        out.states.append(extend(out.states[-1], rows, code, lv) if extend is not None
                          else constraint.advance_at(out.states[-1].select(rows), code, lv))
        s, width = s.index_select(0, rows), wd
    out.allowed.append(constraint.mask_at(out.states[-1], (level + gamma) % D))
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


def tree_layout(draft: BeamDraft, root_tok: Tensor, b: int, wd: int, g: int, w: int, length: int) -> Tree:
    """The tree attention layout of a draft (SpecInfer, Miao et al. 2024): every node is one column of its
    request's row, seeing the ``length`` cached columns of its root beam and its own ancestors only, so the
    target scores all ``W + G·WD`` nodes in one forward without one row per root-to-node path.

    ``root_tok`` [B, W] the beams' pending codes. A step-i node's row is its parent's row plus its own
    column (the max of two additive rows). Fixed shapes, tensor ops only."""
    roots, own, depth = _layout_consts(g, wd, w, length, root_tok.device)
    rows = [roots.expand(b, -1, -1)]                                                 # [B, W, W·L + Q]
    for i in range(g):
        par = draft.parent[i].unsqueeze(2).expand(-1, -1, roots.shape[1])
        rows.append(torch.maximum(rows[-1].gather(1, par), own[i]))                  # [B, WD, W·L + Q]
    return Tree(torch.cat([root_tok] + draft.token, 1), torch.cat(rows, 1), depth)


def commit_cache(scored: KVCache, src_beam: Tensor, cols: Tensor, w: int, length: int) -> KVCache:
    """Each new beam's cache without recomputation: its source beam's ``length`` cached columns followed by
    the tree-forward K/V of the nodes on its committed path, in the tree layout (beams side by side).

    ``scored`` the tree forward's cache [B rows, W·L + Q columns] (the beams' cache, then the nodes');
    ``src_beam`` [B, W] the beam each new beam descends from; ``cols`` [B, W, A] the tree columns of its
    committed path. Returns [B rows, W·(L + A) columns]: new beam ``j`` at columns ``j·(L+A) ..``."""
    b, _, a = cols.shape
    old = _const(("arange", length, cols.device), lambda: torch.arange(length, device=cols.device))
    idx = torch.cat([(src_beam * length).unsqueeze(2) + old, cols + w * length], 2).view(b, -1)   # [B, W·(L+A)]
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
                relax_factor: float = 2.0) -> tuple[Tensor, list[Tensor], list[Tensor], list[Tensor], Tensor]:
    """All ``g`` verification steps of a scored draft tree, with tensor ops only (see module docstring).

    ``logits`` [B, Q, K] the target's at every tree node (:class:`Tree` columns); ``score`` [B, W] the
    beams' scores. Plain beam search is replayed on the target's log-probs with its candidates in the plain
    search's own order (beam position, then code), so its top-``w`` — ties included — are plain beam
    search's; each of its beams is then looked up among the drafted nodes by the ``parent·K + code`` key.
    Strict: step ``i`` is accepted when every live beam of the target's top-``w`` is a drafted node.
    Relaxed: when every drafted node (re-scored by the target) is within the target's top
    ``relax_factor·w``; the drafted nodes, best first, are then the beams.
    Returns the acceptance flag of each step [G] (a step counts only after every earlier one was accepted);
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
    else:                               # strict: every live target beam of a step is a drafted node
        flags = (torch.stack(hits).any(3) | torch.stack(tops[:g]).isneginf()).flatten(1).all(1).long().cumprod(0)
    return flags, tops, flats, curs, torch.cat(scores, 1)


@torch.no_grad()
def speculative_beam(model, memory, constraint: Constraint, n_items: int, beam_width: int, *,
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
    extend = getattr(constraint, "extend_at", None)                             # the engine's one-op advance
    dtype = heads.out.weight.dtype if heads is not None else None             # the heads' input dtype
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
        state = (extend(draft.states[a], parents, code.view(-1), (n + a) % D) if extend is not None
                 else constraint.advance_at(draft.states[a].select(parents), code.view(-1), (n + a) % D))
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
