"""The draft-model proposer: a small generator with the same SID vocabulary drafts autoregressively.

Classic speculative decoding (Leviathan et al., 2023): the draft model keeps
its own KV cache, which mirrors the committed tokens — after each round it is
truncated to the positions whose inputs were committed (``rollback``), and
the next round first feeds whatever is missing.
"""

from __future__ import annotations

import torch

from models.decoding.spec_types import DraftChain, DraftContext, Proposal
from models.generator.model import BOS


class DraftModelProposer:
    """:class:`models.decoding.spec_types.Proposer` over a small generator (``encode`` / ``decode``)."""

    def __init__(self, draft_model) -> None:
        self.model = draft_model
        self.steps = 0
        self.cache = None
        self.fed = 0

    def begin(self, hist, memory, batch: int) -> None:
        if hist is None:
            raise ValueError("the draft-model proposer needs the request histories (pass hist=...), "
                             "since the draft model encodes them with its own encoder")
        self.cache = self.model.start_cache(self.model.encode(hist))
        self.fed, self.steps = 0, 0

    def rollback(self, n_committed: int) -> None:
        # stream positions 0..n_committed-1 hold BOS and committed codes only
        self.fed = min(self.fed, n_committed)
        self.cache.truncate(self.fed)

    @torch.no_grad()
    def propose(self, ctx: DraftContext, gamma: int) -> Proposal:
        b, n = ctx.committed.shape
        stream = torch.cat([ctx.committed.new_full((b, 1), BOS), ctx.committed], 1)   # [B, n+1]
        feed = stream[:, self.fed: n + 1]
        chain = DraftChain(ctx)
        for _ in range(gamma):
            out = self.model.decode(feed, None, self.cache, self.fed)
            self.steps += 1
            self.fed += feed.shape[1]
            feed = chain.push(out.logits[:, -1])[:, None]
        return chain.proposal()
