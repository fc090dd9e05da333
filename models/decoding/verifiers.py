"""Verifiers of speculative decoding: what is committed from the target's scores of the drafts.

* :class:`GreedyVerifier` accepts the longest prefix of drafts equal to the
  target's own constrained argmax and appends the target's token at the
  first mismatch — the output is exactly plain greedy decoding's.
* :class:`SamplingVerifier` applies the rejection rule of Leviathan et al.
  (2023) / Chen et al. (2023): accept draft ``d`` with probability
  ``min(1, p(d)/q(d))``, else resample from ``norm(max(0, p − q))`` — the
  output *distribution* is exactly plain sampling's.
* :class:`AcceptAllVerifier` commits every draft unverified: MTP parallel
  decoding, lossy (``lossless = False``).

All score under the catalog constraint, exactly as plain decoding does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.decoding.constraint import Constraint, masked_log_softmax
from models.decoding.spec_types import DraftPolicy, Proposal, Scores, Verdict, accepted_length


class GreedyVerifier:
    """Longest matching prefix against the target's constrained argmax (exact plain greedy)."""

    lossless = True
    policy = DraftPolicy()

    def verify(self, proposal: Proposal, scores: Scores, constraint: Constraint) -> Verdict:
        masked = constraint.logprobs_along(scores.logits, proposal.states)   # [B, G+1, K]
        target = masked.argmax(-1)                                       # [B, G+1]
        g = proposal.length
        if g:
            row_acc = (target[:, :g] == proposal.tokens).long().cumprod(1).sum(1)
        else:
            row_acc = target.new_zeros(target.shape[0])
        a = accepted_length(row_acc)
        return Verdict(row_acc, a, target[:, a], masked)


class AcceptAllVerifier:
    """MTP parallel decoding: every draft is committed unverified (LOSSY)."""

    lossless = False
    policy = DraftPolicy()

    def verify(self, proposal: Proposal, scores: Scores, constraint: Constraint) -> Verdict:
        masked = constraint.logprobs_along(scores.logits, proposal.states)
        g = proposal.length
        row_acc = torch.full((masked.shape[0],), g, dtype=torch.long, device=masked.device)
        return Verdict(row_acc, g, masked[:, g].argmax(-1), masked)


class SamplingVerifier:
    """Speculative sampling (Leviathan et al., 2023): output distribution = plain sampling's."""

    lossless = True  # in distribution

    def __init__(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> None:
        self.temperature = temperature
        self.generator = generator
        self.policy = DraftPolicy(True, temperature, generator)

    def verify(self, proposal: Proposal, scores: Scores, constraint: Constraint) -> Verdict:
        logp = constraint.logprobs_along(scores.logits, proposal.states)
        masked = logp.double() / self.temperature
        p = F.softmax(masked, -1).nan_to_num(0.0)                        # [B, G+1, K]
        b, g = p.shape[0], proposal.length
        if g:
            d = proposal.tokens[..., None]                               # [B, G, 1]
            pd = p[:, :g].gather(-1, d).squeeze(-1)
            qd = proposal.probs.gather(-1, d).squeeze(-1)
            where = self.generator.device if self.generator is not None else p.device
            r = torch.rand(b, g, generator=self.generator, dtype=torch.float64, device=where).to(p.device)
            row_acc = (r * qd <= pd).long().cumprod(1).sum(1)
        else:
            row_acc = torch.zeros(b, dtype=torch.long, device=p.device)
        a = accepted_length(row_acc)
        dist = p[:, a]
        if a < g:  # rows that rejected at a draw from the residual max(0, p - q), renormalised
            resid = (p[:, a] - proposal.probs[:, a]).clamp(min=0)
            total = resid.sum(-1, keepdim=True)
            resid = torch.where(total > 0, resid / total.clamp(min=1e-300), p[:, a])
            dist = torch.where((row_acc == a)[:, None], resid, p[:, a])
        nxt = torch.multinomial(dist, 1, generator=self.generator).squeeze(1)
        if a < g:  # rows that accepted draft a keep it
            nxt = torch.where(row_acc > a, proposal.tokens[:, a], nxt)
        return Verdict(row_acc, a, nxt, masked_log_softmax(masked))
