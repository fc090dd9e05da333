"""The MTP proposer: drafts with the multi-token-prediction head chain on the target's hidden state.

No extra target forward (Gloeckle et al. 2024, "Better & Faster Large Language
Models via Multi-token Prediction"; heads in :mod:`models.generator.mtp`):
each head step maps (state, previous code) to the next code's logits, masked
by the catalog constraint before a draft is drawn.
"""

from __future__ import annotations

import torch

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
