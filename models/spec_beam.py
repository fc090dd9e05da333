"""Speculative constrained beam search over SID sessions (strict = lossless, relaxed = lossy).

Plain session beam search (:func:`models.decoding.beam_session`) keeps ``W``
beams per request and, at each of the ``n_items · D`` code steps, expands
every beam by every allowed code and keeps the ``W`` best by summed
log-probability — one target forward per step.

Speculative beam search (AtSpeed, Lin et al., 2024, "Efficient Inference for
Large Language Model-based Generative Recommendation") lets a cheap proposer
run that beam search ahead for ``G`` steps, then checks it:

1. **Propose.** The MTP head chain (:mod:`models.mtp`) runs a constrained
   beam search of width ``W`` for ``G`` steps from the current beams, with
   scores = target score so far + draft log-probs. The drafted beams of all
   steps form a tree (roots = current beams); drafts outside the catalog trie
   are never created (the constraint masks them before the draft top-W).
2. **Score.** Every maximal path of the tree becomes one row; the target
   scores all rows in ONE batched decoder forward on top of the beams' KV
   caches. Every tree node then has the target's next-code distribution.
3. **Verify, strict.** Replay plain beam search with the target's
   log-probs: at step ``i`` the target's top-W beams (expanding its step
   ``i-1`` beams) must be exactly the drafted step-``i`` beams (as a set);
   then they are the tree's nodes and step ``i+1`` can be checked too. At the
   first step where they differ, the target's own top-W (computable, since
   their parents are tree nodes) is committed. Every committed step is the
   plain beam step on the same scores, so the output equals plain beam search
   (AtSpeed's strict top-K verification).
4. **Relaxed (lossy).** Accept the drafted step-``i`` beams whenever each of
   them is among the target's top ``relax_factor · W`` candidates, keeping
   the drafted beams (re-scored by the target). More steps per forward, a
   different beam set: the result says ``lossless=False``; the benchmark
   reports its NDCG cost.

Requests in a batch advance in lock-step (the fewest accepted steps), and
each round commits accepted steps + 1. KV caches are gathered by row and
rolled back with ``truncate`` to the committed length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.spec_constraint import CatalogConstraint, ConstraintState
from models.speculative import BOS, DecodeStats, SpecConfig

NEG_INF = float("-inf")


@dataclass
class BeamDraft:
    """Proposer result: a drafted beam tree, ``G`` steps deep, per request."""

    parent: list[Tensor]        # G tensors [B, W]: index of each step-i beam's parent among step i-1
    token: list[Tensor]         # G tensors [B, W]: code added at step i
    alive: list[Tensor]         # G tensors [B, W]: finite draft score
    states: list[ConstraintState]  # G+1 states over B*W rows (states[0] = the current beams)


@dataclass
class BeamSession:
    codes: Tensor      # [B, n_items * D] best beam's codes
    cum: Tensor        # [B, n_items * D] its cumulative target score after each code
    score: Tensor      # [B] its final score
    stats: DecodeStats


def _beam_select(cur_score: Tensor, logp: Tensor, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Plain beam step. ``cur_score`` [B, W], ``logp`` [B, W, K] -> (top scores [B, W], parent [B, W],
    code [B, W], all candidate scores [B, W*K]). Same arithmetic as models.decoding.beam_session."""
    b, _, k = logp.shape
    cand = (cur_score.reshape(-1)[:, None] + logp.reshape(-1, k)).view(b, -1)
    top, flat = cand.topk(w, dim=1)
    return top, flat // k, flat % k, cand


def _draft_beams(heads, constraint: CatalogConstraint, hidden: Tensor, pending: Tensor, n: int,
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


@torch.no_grad()
def speculative_beam(model, memory, constraint: CatalogConstraint, n_items: int, beam_width: int, *,
                     heads=None, spec: SpecConfig = SpecConfig(), seen=None, relaxed: bool = False,
                     relax_factor: float = 2.0, mode: str = "") -> BeamSession:
    """Session beam search, speculative when ``heads`` (MTP) is given, plain KV-cached otherwise.

    Strict (default) returns exactly :func:`models.decoding.beam_session`'s best beam; ``relaxed=True``
    is lossy (see module docstring).
    """
    if beam_width < 1:
        raise ValueError(f"beam_width={beam_width} must be >= 1")
    if relaxed and not relax_factor >= 1:
        raise ValueError(f"relax_factor={relax_factor} must be >= 1 (1 = strict top-W)")
    W, D = beam_width, constraint.depth
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
    if seen is not None and not isinstance(seen, Tensor):
        seen = [seen[int(r)] for r in req]
    elif seen is not None:
        seen = seen.index_select(0, req.to(seen.device))
    state = constraint.init(N, seen)
    score = torch.full((B, W), NEG_INF, device=dev)
    score[:, 0] = 0.0
    codes = torch.zeros(N, 0, dtype=torch.long, device=dev)
    cum = torch.zeros(N, 0, device=dev)
    pending = torch.full((N,), BOS, dtype=torch.long, device=dev)
    hidden = None
    length, gamma, n = 0, spec.gamma, 0
    draft_steps = 0
    while n < n_tok:
        g = min(gamma, n_tok - n - 1) if (heads is not None and n > 0) else 0
        if g > 0:
            draft, _ = _draft_beams(heads, constraint, hidden, pending, n, state, score, W, g)
            draft_steps += g
        else:
            draft = BeamDraft([], [], [], [state])
        # ---- rows: one per maximal path of the tree (roots always included) -------------------
        anc = [torch.arange(W, device=dev).expand(B, W)]    # anc[j] for the nodes of the current step
        node_row = [torch.full((B, W), -1, dtype=torch.long, device=dev) for _ in range(g + 1)]
        row_tok, row_root, n_rows = [], [], 0
        for i in range(g + 1):
            if i < g:
                alive_next = draft.alive[i]
                has_child = torch.zeros(B, W, dtype=torch.long, device=dev).scatter_add_(
                    1, draft.parent[i], alive_next.long()) > 0
                alive_i = torch.ones(B, W, dtype=torch.bool, device=dev) if i == 0 else draft.alive[i - 1]
                maximal = alive_i & ~has_child
            else:
                maximal = torch.ones(B, W, dtype=torch.bool, device=dev) if i == 0 else draft.alive[i - 1]
            if i == 0:
                chains = [torch.arange(W, device=dev).expand(B, W)]
            else:
                # chains[j] [B, W]: ancestor at step j of each step-i node
                chains = [None] * (i + 1)
                chains[i] = torch.arange(W, device=dev).expand(B, W)
                for j in range(i, 0, -1):
                    chains[j - 1] = draft.parent[j - 1].gather(1, chains[j])
            bb, ww = maximal.nonzero(as_tuple=True)
            r = torch.arange(n_rows, n_rows + bb.numel(), device=dev)
            n_rows += bb.numel()
            for j in range(i + 1):
                node_row[j][bb, chains[j][bb, ww]] = r
            root = chains[0][bb, ww]
            toks = [pending[bb * W + root]] + [draft.token[j - 1][bb, chains[j][bb, ww]] for j in range(1, i + 1)]
            toks += [torch.zeros_like(root)] * (g - i)                       # padding after the path
            row_tok.append(torch.stack(toks, 1))
            row_root.append(bb * W + root)
        tokens = torch.cat(row_tok, 0)                                           # [R, g+1]
        roots = torch.cat(row_root, 0)                                           # [R]
        # ---- score: one batched target forward over every row --------------------------------
        out = model.decode(tokens, None, cache.index_select(roots), length)
        stats.target_forwards += 1
        # ---- verify step by step -------------------------------------------------------------
        cur = torch.arange(W, device=dev).expand(B, W)      # target beams as node ids of the current step
        cur_score = score
        node_cum = []                                       # per accepted step: [B, W] target score by node id
        i = 1
        while True:
            rows = node_row[i - 1].gather(1, cur)                                    # [B, W]
            st = draft.states[i - 1].select((cur + base).reshape(-1))
            logp = constraint.logprobs(out.logits[rows.reshape(-1), i - 1], st).view(B, W, -1)
            top, parent_t, code_t, cand = _beam_select(cur_score, logp, W)
            if i > g:
                break
            pnode = cur.gather(1, parent_t)                                          # [B, W] parent node ids
            alive_d = draft.alive[i - 1]
            if not relaxed:
                eq = ((pnode[:, :, None] == draft.parent[i - 1][:, None, :])
                      & (code_t[:, :, None] == draft.token[i - 1][:, None, :]) & alive_d[:, None, :])
                tfin = torch.isfinite(top)
                ok = ((eq.any(-1) | ~tfin).all(1) & (tfin.sum(1) == alive_d.sum(1))).all()
                if not bool(ok):
                    break
                new_cur = eq.to(torch.uint8).argmax(-1)                              # node id of each beam
                new_score = top
                node_score = torch.where(eq, top[:, :, None], torch.full_like(eq, NEG_INF, dtype=top.dtype)
                                         ).amax(1)                                   # [B, W] by node id
            else:
                # draft node (i, w): parent node id p -> position of p in cur; its target score
                pos_of = torch.argsort(cur, dim=1)                                   # node id -> position
                ppos = pos_of.gather(1, draft.parent[i - 1])
                tscore = cur_score.gather(1, ppos) + logp.gather(1, ppos[..., None].expand(-1, -1, logp.shape[-1])
                                                                 ).gather(2, draft.token[i - 1][..., None]).squeeze(-1)
                k = min(int(relax_factor * W), cand.shape[1])
                thresh = cand.topk(k, dim=1).values[:, -1:]                          # [B, 1]
                ok = ((tscore >= thresh) | ~alive_d).all() & torch.isfinite(thresh).all()
                if not bool(ok):
                    break
                tscore = tscore.masked_fill(~alive_d, NEG_INF)
                order = tscore.argsort(dim=1, descending=True, stable=True)
                new_cur, new_score, node_score = order, tscore.gather(1, order), tscore
            node_cum.append(node_score)
            cur, cur_score = new_cur, new_score
            i += 1
        a = i - 1                                                                    # accepted draft steps
        # ---- commit a accepted steps + the target's step a+1 --------------------------------
        pnode = cur.gather(1, parent_t)                                              # step-a parents
        prow = node_row[a].gather(1, pnode).reshape(-1).clamp(min=0)                 # [N] rows (dead beams: any)
        proot = roots[prow]
        path = tokens[prow, 1: a + 1]                                                # [N, a]
        cums, anc_node = [], pnode
        for j in range(a, 0, -1):                       # cumulative target score at each accepted ancestor
            cums.append(node_cum[j - 1].gather(1, anc_node).reshape(-1, 1))
            anc_node = draft.parent[j - 1].gather(1, anc_node)
        cums = [cum[proot]] + cums[::-1]
        cum = torch.cat(cums + [top.reshape(-1, 1)], 1)
        codes = torch.cat([codes[proot], path, code_t.reshape(-1, 1)], 1)
        cache = out.cache.index_select(prow).truncate(length + a + 1)
        length += a + 1
        hidden = out.hidden[prow, a]
        st = draft.states[a].select((pnode + base).reshape(-1))
        state = constraint.advance(st, code_t.reshape(-1))[0]
        pending, score = code_t.reshape(-1), top
        n += a + 1
        stats.rounds += 1
        stats.drafted += g * B
        stats.accepted += a * B
        stats.row_accepted += a * B
        if spec.adaptive and g:
            gamma = min(gamma + 1, spec.gamma_max) if a == g else max(gamma - 1, spec.gamma_min)
    stats.draft_steps = draft_steps
    best = score.argmax(1) + base[:, 0]                                              # [B]
    return BeamSession(codes[best, :n_tok], cum[best, :n_tok], score.gather(1, (best - base[:, 0])[:, None])[:, 0],
                       stats)
