"""Every beam of a constrained session beam search, not only the best: the candidates of alignment.

OneRec's Iterative Preference Alignment (Deng et al. 2025) scores the N sessions of a width-N beam
search and pairs the best with the worst, so it needs the whole final beam.
:func:`beam_candidates` sorts the final beam of :func:`models.decoding.search.beam_search` (the
steps :func:`~models.decoding.search.beam_session` runs too) and returns all W beams per request, best first. Invariant: its first beam is ``beam_session``'s result, and every item of a live
beam is a catalog item (no repeats within a session, seen items excluded when asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.decoding.constraint import Constraint
from models.decoding.search import beam_search
from models.generator.model import GenerativeRecommender


@dataclass
class SessionCandidates:
    """W candidate sessions per request, best first."""

    items: Tensor   # [B, W, K] item indices (-1 for a dead beam: fewer than W sessions exist)
    sids: Tensor    # [B, W, K, D] codes
    scores: Tensor  # [B, W] session log-probability under the constrained distribution (-inf: dead beam)
    stats: dict = field(default_factory=dict)


@torch.no_grad()
def beam_candidates(model: GenerativeRecommender, memory_or_hist, constraint: Constraint, *, beam_width: int,
                    session_len: int | None = None, seen=None) -> SessionCandidates:
    """The final beam of a constrained session beam search of width ``beam_width`` for each request."""
    fb = beam_search(model, memory_or_hist, constraint, session_len=session_len, beam_width=beam_width, seen=seen)
    B, W, K = fb.batch, fb.width, fb.items.shape[1]
    score = fb.score.view(B, W)
    order = score.argsort(dim=1, descending=True, stable=True)               # [B, W]
    flat = (order + torch.arange(B, device=score.device)[:, None] * W).reshape(-1)
    items = fb.items[flat].view(B, W, K)
    dead = ~torch.isfinite(score.gather(1, order))
    items = torch.where(dead[..., None], torch.full_like(items, -1), items)
    return SessionCandidates(items, fb.codes[flat].view(B, W, K, -1), score.gather(1, order),
                             {"forwards": fb.forwards, "beam_width": W})
