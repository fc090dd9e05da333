"""The MTP proposer: drafts with the multi-token-prediction head chain on the target's hidden state.

No extra target forward (Gloeckle et al. 2024, "Better & Faster Large Language
Models via Multi-token Prediction"; heads in :mod:`models.generator.mtp`):
each head step maps (state, previous code) to the next code's logits, masked
by the catalog constraint before a draft is drawn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.decoding.spec_types import DraftChain, DraftContext, Proposal


class MTPProposer:
    """:class:`models.decoding.spec_types.Proposer` over MTP heads (stateless between rounds)."""

    def __init__(self, heads) -> None:
        self.heads = heads
        self.steps = 0

    def begin(self, hist, memory, batch: int) -> None:
        self.steps = 0

    def rollback(self, n_committed: int) -> None:
        pass

    @torch.no_grad()
    def propose(self, ctx: DraftContext, gamma: int) -> Proposal:
        D, n = ctx.constraint.depth, ctx.committed.shape[1]
        s, code, lvl = ctx.hidden.to(self.heads.out.weight.dtype), ctx.pending, (n - 1) % D
        chain = DraftChain(ctx)
        for _ in range(gamma):
            s, logits = self.heads.step(s, code, lvl)
            self.steps += 1
            code, lvl = chain.push(logits), (lvl + 1) % D
        return chain.proposal()


class FusedHeadStep:
    """:meth:`MTPHeads.step <models.generator.mtp.MTPHeads.step>` for rows whose codes are all at one SID level
    (a host int, as in a draft beam), with the per-level work folded into tables built once per decode:
    the input layer's code half plus its bias and the next level's embedding per (level, code), and the
    output bias with -inf at codes outside the next level. Same function as ``heads.step`` (up to float
    rounding: the input layer is split in two products), about a third of its tensor ops."""

    @torch.no_grad()
    def __init__(self, heads) -> None:
        d, D = heads.cfg.d_model, heads.cfg.sid_len
        w_in = heads.inp.weight                                                    # [d, 2d]: [state | code]
        code_in = heads.code_emb.weight @ w_in[:, d:].T + heads.inp.bias          # [sum K_l, d]
        sizes = [int(k) for k in heads.cfg.level_sizes]
        offsets = [sum(sizes[:l]) for l in range(D)]
        self.heads, self.sizes, self.depth = heads, sizes, D
        self.code_in = [code_in[o:o + k] + heads.level_emb.weight[(l + 1) % D]
                        for l, (o, k) in enumerate(zip(offsets, sizes))]          # D x [K_l, d]
        self.state_in = w_in[:, :d].T.contiguous()                                 # [d, d]
        bias = heads.out.bias[None, :] + heads.out_bias                            # [D, K] by predicted level
        self.out_bias = [torch.where(heads.code_valid[(l + 1) % D], bias[(l + 1) % D], float("-inf"))
                         for l in range(D)]                                        # D x [K], by the input's level
        self.out_w = heads.out.weight.T.contiguous()                               # [d, K]
        up, act, down = heads.ff
        if not (isinstance(act, torch.nn.GELU) and act.approximate == "none"):
            raise ValueError(f"FusedHeadStep expects the heads' ff to be Linear -> GELU -> Linear, got {act!r}")
        norm = heads.ff_norm
        self.norm_shape, self.norm_w, self.norm_b, self.norm_eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
        self.up_w, self.up_b, self.down_w, self.down_b = up.weight, up.bias, down.weight, down.bias

    def __call__(self, state: torch.Tensor, code: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``state`` [N, d], ``code`` [N] at SID ``level`` -> (next state [N, d], logits [N, K_max])."""
        e = self.code_in[level].index_select(0, code.clamp(0, self.sizes[level] - 1))   # [N, d]
        x = torch.addmm(e, state, self.state_in)
        # the heads' ff_norm -> Linear -> GELU -> Linear, called functionally (no module dispatch per step)
        y = F.layer_norm(x, self.norm_shape, self.norm_w, self.norm_b, self.norm_eps)
        x = x + F.linear(F.gelu(F.linear(y, self.up_w, self.up_b)), self.down_w, self.down_b)
        return x, torch.addmm(self.out_bias[level], x, self.out_w)


def head_step(heads):
    """The draft step function of ``heads``: :class:`FusedHeadStep` for MTP heads, their own ``step`` for any
    other object with the heads' protocol (test doubles)."""
    from models.generator.mtp import MTPHeads
    return FusedHeadStep(heads) if isinstance(heads, MTPHeads) else heads.step
