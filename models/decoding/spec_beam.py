"""Speculative constrained beam search over SID sessions (strict = lossless, relaxed = lossy).

Plain session beam search (:func:`models.decoding.search.beam_session`) keeps ``W``
beams per request and, at each of the ``n_items · D`` code steps, expands
every beam by every allowed code and keeps the ``W`` best by summed
log-probability — one target forward per step.

Speculative beam search (AtSpeed, Lin et al., 2024, "Efficient Inference for
Large Language Model-based Generative Recommendation") lets a cheap proposer
run that beam search ahead for ``G`` steps, then checks it:

1. **Propose.** The MTP head chain (:mod:`models.generator.mtp`) runs a constrained
   beam search of width ``W`` for ``G`` steps from the current beams, with
   scores = target score so far + draft log-probs. The drafted beams of all
   steps form a tree (roots = current beams); drafts outside the catalog trie
   are never created (the constraint masks them before the draft top-W).
2. **Score.** The whole tree is ONE row per request with a tree attention
   mask (SpecInfer, Miao et al. 2024): every node is a column that sees its
   root beam's cached K/V and its own ancestors, at position ``length +
   step``; one decoder forward (:meth:`GenerativeRecommender.decode_tree`)
   gives every node the target's next-code distribution, at the cost of
   ``(G+1)·WD`` tokens per request (not one row per root-to-node path,
   ``(G+1)²·WD`` tokens).
3. **Verify, strict.** Replay plain beam search with the target's
   log-probs: at step ``i`` the target's top-W beams (expanding its step
   ``i-1`` beams) must all be drafted step-``i`` nodes; then their
   expansions are scored too and step ``i+1`` can be checked. The
   proposer may keep more beams per step than the search
   (``draft_width`` >= W): a wider tree holds the target's beams more often. At the
   first step where one is not, the target's own top-W (computable, since
   their parents are tree nodes) is committed. Every committed step is the
   plain beam step on the same scores, so the output equals plain beam search
   (AtSpeed's strict top-K verification).
4. **Relaxed (lossy).** Accept the drafted step-``i`` beams whenever each of
   them is among the target's top ``relax_factor · W`` candidates, keeping
   the drafted beams (re-scored by the target). More steps per forward, a
   different beam set: the result says ``lossless=False``; the benchmark
   reports its NDCG cost.

Requests in a batch advance in lock-step (the fewest accepted steps), and
each round commits accepted steps + 1. Each new beam's cache is its source
beam's cached columns plus the tree forward's K/V of the nodes on its
committed path (:func:`commit_cache`): nothing is recomputed, nothing rolled
back. Where drafting does not pay (rounds at the shortest draft that accept
nothing, e.g. a large lock-step batch) the loop backs off to plain rounds for
1, 2, 4, ... rounds (``SpecConfig.backoff_max``); a plain round is a plain
beam step, so the output is unchanged.

Device residency (decision 028): a round's shapes are fixed by ``W``, ``WD``
and ``G`` alone — the tree is scored as ``B`` rows of ``(G+1)·WD`` columns
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

from models.decoding.constraint import NEG_INF, Constraint, ConstraintState
from models.decoding.search import reorder_beams
from models.decoding.spec_types import DecodeStats, SpecConfig, accepted_length
from models.generator.kv_cache import KVCache
from models.generator.model import BOS


@dataclass
class BeamDraft:
    """Proposer result: a drafted beam tree, ``G`` steps deep, ``WD`` nodes per step, per request."""

    parent: list[Tensor]        # G tensors [B, WD]: index of each step-i node's parent among step i-1
    token: list[Tensor]         # G tensors [B, WD]: code added at step i
    alive: list[Tensor]         # G tensors [B, WD]: finite draft score
    states: list[ConstraintState]  # G+1 states over B*WD rows (states[0] = the current beams as roots)


@dataclass
class BeamSession:
    codes: Tensor      # [B, n_items * D] best beam's codes
    cum: Tensor        # [B, n_items * D] its cumulative target score after each code
    score: Tensor      # [B] its final score
    stats: DecodeStats


def _beam_select(cur_score: Tensor, logp: Tensor, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Plain beam step. ``cur_score`` [B, W], ``logp`` [B, W, K] -> (top scores [B, W], parent [B, W],
    code [B, W], all candidate scores [B, W*K]). Same arithmetic as models.decoding.search.beam_session."""
    b, _, k = logp.shape
    cand = (cur_score.reshape(-1)[:, None] + logp.reshape(-1, k)).view(b, -1)
    top, flat = cand.topk(w, dim=1)
    return top, flat // k, flat % k, cand


def _draft_beams(heads, constraint: Constraint, hidden: Tensor, pending: Tensor, n: int,
                 state: ConstraintState, score: Tensor, w: int, gamma: int) -> tuple[BeamDraft, int]:
    """Constrained beam search of the MTP chain for ``gamma`` steps from the current beams."""
    b = score.shape[0]
    D = constraint.depth
    base = (torch.arange(b, device=score.device) * w)[:, None]                    # [B, 1]
    s, code, lvl = hidden.to(heads.out.weight.dtype), pending, (n - 1) % D
    dscore = score
    out = BeamDraft([], [], [], [state])
    for _ in range(gamma):
        s, logits = heads.step(s, code, lvl)
        logp = constraint.logprobs(logits, out.states[-1]).view(b, w, -1)
        dscore, parent, tok, _ = _beam_select(dscore, logp, w)
        g = (parent + base).reshape(-1)
        out.parent.append(parent)
        out.token.append(tok)
        out.alive.append(torch.isfinite(dscore))
        out.states.append(constraint.advance(out.states[-1].select(g), tok.reshape(-1))[0])
        s, code, lvl = s.index_select(0, g), tok.reshape(-1), (lvl + 1) % D
    return out, gamma


@dataclass
class Tree:
    """A draft tree laid out for one verification forward per request (node ``(i, j)`` = column ``i·WD + j``)."""

    tokens: Tensor     # [B, Q] each node's code (step 0: the roots' pending codes), Q = (G+1)·WD
    anc: list[Tensor]  # G+1 tensors [B, WD, i+1]: column of each step-i node's ancestor at steps 0..i (itself last)
    root: Tensor       # [B, Q] the beam (0..W-1) each node descends from
    mask: Tensor       # [B, Q, W·L + Q] bool: its root beam's L cached columns, its ancestors and itself
    depth: Tensor      # [Q] tree step of each column


def tree_layout(draft: BeamDraft, root_tok: Tensor, root_beam: Tensor, b: int, wd: int, g: int, w: int,
                length: int) -> Tree:
    """The tree attention layout of a draft (SpecInfer, Miao et al. 2024): every node is one column of its
    request's row, seeing the ``length`` cached columns of its root beam and its own ancestors only, so the
    target scores all ``(G+1)·WD`` nodes in one forward without one row per root-to-node path.

    ``root_tok`` [B, WD] the roots' pending codes; ``root_beam`` [WD] the beam of each root (extra roots
    are dead copies). Fixed shapes, tensor ops only (no host sync)."""
    dev = root_tok.device
    p, q = g + 1, (g + 1) * wd
    ids = torch.arange(wd, device=dev)
    anc, toks = [ids.expand(b, wd)[..., None]], [root_tok]
    for i in range(1, p):
        a = anc[-1].gather(1, draft.parent[i - 1][..., None].expand(-1, -1, i))  # [B, WD, i]
        anc.append(torch.cat([a, (i * wd + ids).expand(b, wd)[..., None]], 2))
        toks.append(draft.token[i - 1])
    full = torch.stack([torch.cat([x, x[..., -1:].expand(-1, -1, p - x.shape[2])], 2) for x in anc], 1)
    full = full.reshape(b, q, p)                                                 # [B, Q, P] (self repeated)
    seen = torch.zeros(b, q, q, dtype=torch.bool, device=dev).scatter_(2, full, True)
    root = root_beam[full[..., 0]]                                               # [B, Q]
    seg = torch.arange(w * length, device=dev) // max(length, 1)                 # [W·L] beam of each column
    mask = torch.cat([seg[None, None, :] == root[..., None], seen], 2)
    depth = torch.arange(p, device=dev).repeat_interleave(wd)
    return Tree(torch.stack(toks, 1).reshape(b, q), anc, root, mask, depth)


def tree_cache(cache: KVCache, b: int, w: int) -> KVCache:
    """The W beams' cached columns of each request side by side in one row: [B·W, H, L, Dh] -> [B, H, W·L, Dh]
    per layer (cross K/V shared, one row per request)."""
    def cat(x: Tensor) -> Tensor:
        n, h, L, dh = x.shape
        return x.view(b, w, h, L, dh).transpose(1, 2).reshape(b, h, w * L, dh)
    return KVCache(list(cache.cross_k), list(cache.cross_v), cache.cross_mask,
                   [cat(k) for k in cache.self_k], [cat(v) for v in cache.self_v], 1, None)


def commit_cache(cache: KVCache, scored: KVCache, src_beam: Tensor, cols: Tensor, b: int, w: int) -> KVCache:
    """Each new beam's cache without recomputation: its source beam's cached columns followed by the
    tree-forward K/V of the nodes on its committed path.

    ``cache`` the beams' cache [B·W rows, L columns]; ``scored`` the tree forward's [B rows, W·L + Q];
    ``src_beam`` [N] the beam row each new beam descends from; ``cols`` [B, W, A] the tree columns of its
    committed path. Returns [B·W rows, L + A columns] (cross K/V grouped per request)."""
    n, a = src_beam.shape[0], cols.shape[2]
    L = cache.length
    q = scored.length - w * L
    flat = (cols + (torch.arange(b, device=cols.device) * q)[:, None, None]).reshape(-1)   # [N·A]

    def keep(old: Tensor, new: Tensor) -> Tensor:
        h, dh = new.shape[1], new.shape[3]
        path = new[:, :, w * L:].transpose(1, 2).reshape(b * q, h, dh).index_select(0, flat)
        return torch.cat([old.index_select(0, src_beam), path.view(n, a, h, dh).transpose(1, 2)], 2)
    return KVCache(list(cache.cross_k), list(cache.cross_v), cache.cross_mask,
                   [keep(o, x) for o, x in zip(cache.self_k, scored.self_k)],
                   [keep(o, x) for o, x in zip(cache.self_v, scored.self_v)], w, None)


@dataclass
class _Step:
    """The target's plain beam step from one verification position (all [B, W])."""

    cur: Tensor        # the target's beams before the step, as node ids of the previous tree step
    top: Tensor        # scores of the target's top-W
    parent: Tensor     # their parents (positions in ``cur``)
    code: Tensor       # their codes


def verify_tree(constraint: Constraint, draft: BeamDraft, logits: Tensor, score: Tensor, b: int, w: int, g: int,
                relaxed: bool, relax_factor: float, wd: int | None = None
                ) -> tuple[Tensor, list[_Step], list[Tensor]]:
    """All ``g`` verification steps of a scored draft tree, with tensor ops only (see module docstring).

    ``wd`` (>= ``w``, default ``w``): nodes per tree step; the target's ``w`` beams are the first ``w`` roots.
    ``logits`` [B, G+1, WD, K] the target's at every tree node, by request, tree step and node; ``score`` [B, W].
    Strict: step ``i`` is accepted when every live beam of the target's top-``w`` is a drafted node (then the
    next step can be checked from those nodes' rows). Returns the acceptance flag of each step [G] (a step
    counts only after every earlier one was accepted), the target's beam step at each position 1..G+1 and
    each accepted step's score by node id [B, WD]."""
    wd = wd or w
    dev = score.device
    p, k = g + 1, logits.shape[-1]
    # every tree node's constrained log-probs in ONE pass
    diag = logits.transpose(0, 1)                                                  # [P, B, WD, K]
    every = ConstraintState.cat(draft.states[:p]) if p > 1 else draft.states[0]    # P*B*W rows, step-major
    logp_all = constraint.logprobs(diag.reshape(p * b * wd, k), every).view(p, b, wd, k)
    cur = torch.arange(w, device=dev).expand(b, w)
    cur_score = score
    oks, steps, node_cum = [], [], []
    for i in range(1, g + 2):
        logp = logp_all[i - 1].gather(1, cur[..., None].expand(-1, -1, k))         # [B, W, K] in beam order
        top, parent_t, code_t, cand = _beam_select(cur_score, logp, w)
        steps.append(_Step(cur, top, parent_t, code_t))
        if i > g:
            break
        pnode = cur.gather(1, parent_t)                                            # [B, W] parent node ids
        alive_d = draft.alive[i - 1]
        if not relaxed:
            eq = ((pnode[:, :, None] == draft.parent[i - 1][:, None, :])
                  & (code_t[:, :, None] == draft.token[i - 1][:, None, :]) & alive_d[:, None, :])
            tfin = torch.isfinite(top)
            ok = (eq.any(-1) | ~tfin).all()
            new_cur = eq.to(torch.uint8).argmax(-1)                                # node id of each beam
            new_score = top
            node_score = torch.where(eq, top[:, :, None], torch.full_like(eq, NEG_INF, dtype=top.dtype)).amax(1)
        else:
            pos_of = torch.argsort(cur, dim=1)                                     # node id -> position
            ppos = pos_of.gather(1, draft.parent[i - 1])
            tscore = cur_score.gather(1, ppos) + logp.gather(1, ppos[..., None].expand(-1, -1, logp.shape[-1])
                                                             ).gather(2, draft.token[i - 1][..., None]).squeeze(-1)
            window = min(int(relax_factor * w), cand.shape[1])
            thresh = cand.topk(window, dim=1).values[:, -1:]                       # [B, 1]
            ok = ((tscore >= thresh) | ~alive_d).all() & torch.isfinite(thresh).all()
            tscore = tscore.masked_fill(~alive_d, NEG_INF)
            order = tscore.argsort(dim=1, descending=True, stable=True)
            new_cur, new_score, node_score = order, tscore.gather(1, order), tscore
        oks.append(ok)
        node_cum.append(node_score)
        cur, cur_score = new_cur, new_score
    flags = torch.stack(oks).long().cumprod(0) if oks else torch.zeros(0, dtype=torch.long, device=dev)
    return flags, steps, node_cum


@torch.no_grad()
def speculative_beam(model, memory, constraint: Constraint, n_items: int, beam_width: int, *,
                     heads=None, spec: SpecConfig = SpecConfig(), seen=None, relaxed: bool = False,
                     relax_factor: float = 2.0, mode: str = "", draft_width: int | None = None) -> BeamSession:
    """Session beam search, speculative when ``heads`` (MTP) is given, plain KV-cached otherwise.

    Strict (default) returns exactly :func:`models.decoding.search.beam_session`'s best beam; ``relaxed=True``
    is lossy (see module docstring). ``draft_width`` (strict only, >= ``beam_width``, default it): beams the
    proposer keeps per draft step — a wider tree holds the target's beams more often (more steps accepted
    per forward) at the price of more rows per forward.
    """
    if draft_width is not None and draft_width < beam_width:
        raise ValueError(f"draft_width={draft_width} must be >= beam_width={beam_width} (or None: the beam width)")
    if beam_width < 1:
        raise ValueError(f"beam_width={beam_width} must be >= 1")
    if relaxed and not relax_factor >= 1:
        raise ValueError(f"relax_factor={relax_factor} must be >= 1 (1 = strict top-W)")
    W, D = beam_width, constraint.depth
    WD = W if relaxed or draft_width is None else draft_width                   # relaxed keeps the drafted W
    n_tok = n_items * D
    dev = constraint.device
    base_cache = model.start_cache(memory)
    B = base_cache.batch_size
    N = B * W
    req = torch.arange(B, device=dev).repeat_interleave(W)                      # [N]
    base = (torch.arange(B, device=dev) * W)[:, None]                           # [B, 1]
    cache = base_cache.index_select(req)
    stats = DecodeStats(mode or ("beam" if heads is None else ("spec_beam_relaxed" if relaxed else "spec_beam")),
                        lossless=not relaxed)
    state = constraint.init(B, seen).select(req)
    score = torch.full((B, W), NEG_INF, device=dev)
    score[:, 0] = 0.0
    codes = torch.zeros(N, 0, dtype=torch.long, device=dev)
    cum = torch.zeros(N, 0, device=dev)
    pending = torch.full((N,), BOS, dtype=torch.long, device=dev)
    hidden = None
    length, gamma, n = 0, spec.gamma, 0
    draft_steps = 0
    wasted, plain_left = 0, 0                   # drafting that does not pay is paused (SpecConfig.plain_rounds)
    while n < n_tok:
        g = min(gamma, n_tok - n - 1) if (heads is not None and n > 0 and not plain_left) else 0
        plain_left = max(plain_left - 1, 0) if g == 0 and n > 0 else plain_left
        wd = WD if g > 0 else W                                                     # tree nodes per step
        # the current beams as the tree's wd roots (extra roots: copies of beam 0 at score -inf, dead)
        root_row = (base + torch.arange(wd, device=dev).clamp(max=W - 1)).reshape(-1)             # [B*wd]
        if g > 0:
            pad = torch.full((B, wd - W), NEG_INF, device=dev)
            draft, _ = _draft_beams(heads, constraint, hidden.index_select(0, root_row), pending[root_row], n,
                                    state.select(root_row), torch.cat([score, pad], 1), wd, g)
            draft_steps += g
        else:
            draft = BeamDraft([], [], [], [state])
        # ---- score: ONE target forward over the whole tree (tree attention mask) ----------------
        if g > 0:
            tree = tree_layout(draft, pending[root_row].view(B, wd), root_row[:wd] % W, B, wd, g, W, length)
            out = model.decode_tree(tree.tokens, tree.depth, length, tree_cache(cache, B, W), tree.mask)
            logits = out.logits.view(B, g + 1, wd, -1)                              # [B, G+1, WD, K]
        else:
            out = model.decode(pending[:, None], None, cache, length)
            logits = out.logits.view(B, 1, W, -1)
        stats.target_forwards += 1
        # ---- verify every step on the device; read back how many were accepted ----------------
        flags, steps, node_cum = verify_tree(constraint, draft, logits, score, B, W, g, relaxed, relax_factor, wd)
        a = accepted_length(flags.sum()) if g else 0                                # the round's one host read
        # ---- commit a accepted steps + the target's step a+1 --------------------------------
        st_a = steps[a]
        pnode = st_a.cur.gather(1, st_a.parent)                                      # step-a parents [B, W]
        if g > 0:
            cols = tree.anc[a].gather(1, pnode[..., None].expand(-1, -1, a + 1))      # [B, W, a+1] path columns
            proot = (base + tree.root.gather(1, cols[..., 0])).reshape(-1)            # [N] source beam rows
            path = tree.tokens.gather(1, cols[..., 1:].reshape(B, -1)).view(N, a)    # [N, a]
            cache = commit_cache(cache, out.cache, proot, cols, B, W)
            q = (g + 1) * wd
            hidden = out.hidden.reshape(B * q, -1)[(base // W * q + a * wd + pnode).reshape(-1)]
        else:
            proot = (base + pnode).reshape(-1)
            path = codes.new_zeros(N, 0)
            cache = reorder_beams(out.cache, proot, W)
            hidden = out.hidden[proot, 0]
        cums, anc_node = [], pnode
        for j in range(a, 0, -1):                       # cumulative target score at each accepted ancestor
            cums.append(node_cum[j - 1].gather(1, anc_node).reshape(-1, 1))
            anc_node = draft.parent[j - 1].gather(1, anc_node)
        cums = [cum[proot]] + cums[::-1]
        cum = torch.cat(cums + [st_a.top.reshape(-1, 1)], 1)
        codes = torch.cat([codes[proot], path, st_a.code.reshape(-1, 1)], 1)
        length += a + 1
        st = draft.states[a].select((pnode + base // W * wd).reshape(-1))
        state = constraint.advance(st, st_a.code.reshape(-1))[0]
        pending, score = st_a.code.reshape(-1), st_a.top
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
    return BeamSession(codes[best, :n_tok], cum[best, :n_tok], score.gather(1, (best - base[:, 0])[:, None])[:, 0],
                       stats)
