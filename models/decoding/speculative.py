"""Speculative decoding of SID sessions: the draft → score → verify loop.

Speculative decoding (Leviathan et al., 2023, "Fast Inference from
Transformers via Speculative Decoding"; Chen et al., 2023, "Accelerating
Large Language Model Decoding with Speculative Sampling") splits a decoding
step into three roles, each with a typed result:

* **Proposer** → :class:`~models.decoding.spec_types.Proposal`: drafts ``G``
  next SID codes cheaply — :mod:`models.decoding.proposer_mtp` (multi-token
  prediction heads on the target's hidden state) or
  :mod:`models.decoding.proposer_draft_model` (a small generator with its own
  KV cache). Drafts are generated *under the catalog
  constraint*, so a draft that would leave the trie (or repeat / revisit an
  excluded item) is pruned before it ever reaches verification.
* **Scorer** → :class:`~models.decoding.spec_types.Scores` (:class:`TargetScorer`): the full model runs ONE batched decoder
  forward over ``[pending, d_1 … d_G]`` on top of its KV cache and returns
  logits and hidden states for all ``G + 1`` positions.
* **Verifier** → :class:`~models.decoding.spec_types.Verdict`
  (:mod:`models.decoding.verifiers`): greedy (exactly plain greedy), sampling
  (Leviathan et al. rejection rule: exactly plain sampling in distribution)
  or accept-all (MTP parallel decoding, lossy, and the stats say so).

Batching across requests: rows advance in lock-step — a round commits
``a + 1`` tokens for every row, ``a`` = the fewest drafts any row accepted.
Rows that accepted more keep only their first ``a`` drafts plus the target's
token at ``a`` (which equals their draft there), so the rule stays exact;
their surplus drafts are simply re-proposed next round. The KV cache is
rolled back with ``truncate`` to the committed length after every round
(rollback-safe: rejected positions never leak into later steps).

Adaptive draft length (:class:`~models.decoding.spec_types.SpecConfig`): ``G`` grows by one after a round
where every draft was accepted and shrinks by one otherwise, within
``[gamma_min, gamma_max]`` — the usual heuristic schedule.

Plain KV-cached decoding is the same loop with no proposer (``G = 0``): one
decoder position per forward. That is the baseline the speculative modes are
measured and tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.decoding.constraint import Constraint
from models.decoding.spec_types import (DecodeStats, DraftContext, Proposal, Proposer, Scores, SpecConfig, Verifier)
from models.decoding.verifiers import GreedyVerifier
from models.generator.model import BOS


@dataclass
class RawSession:
    """A decoded batch of sessions as codes."""

    codes: Tensor    # [B, n_items * D]
    logp: Tensor     # [B, n_items * D] target log-prob of each committed code
    stats: DecodeStats


class TargetScorer:
    """The full generator: one batched decoder forward per call, counted."""

    def __init__(self, model) -> None:
        self.model = model
        self.forwards = 0

    def start(self, memory):
        return self.model.start_cache(memory)

    @torch.no_grad()
    def score(self, tokens: Tensor, cache, start: int) -> tuple[Scores, object]:
        """``tokens`` [B, T] at positions ``start..``; returns logits/hidden [B, T, ·] and the grown cache."""
        out = self.model.decode(tokens, None, cache, start)
        self.forwards += 1
        return Scores(out.logits, out.hidden), out.cache


def speculative_session(model, memory, constraint: Constraint, n_items: int, *,
                        proposer: Proposer | None = None, verifier: Verifier | None = None,
                        spec: SpecConfig = SpecConfig(), seen=None, hist=None, mode: str = "") -> RawSession:
    """Decode ``n_items`` items per row (``n_items * D`` codes) with draft → score → verify rounds.

    ``model``: a generator with ``start_cache(memory)`` and ``decode(tokens, None, cache, start)``
    returning logits/hidden/cache (:class:`models.generator.model.GenerativeRecommender`). ``memory``: its
    encoder output for B requests. ``proposer=None`` is plain KV-cached decoding (one position per
    forward). ``seen``: items to exclude per row (see :func:`models.decoding.constraint.excluded_items`).
    """
    verifier = verifier or GreedyVerifier()
    scorer = TargetScorer(model)
    cache = scorer.start(memory)
    b = cache.batch_size
    D = constraint.depth
    n_tok = n_items * D
    if n_items < 1:
        raise ValueError(f"n_items={n_items} must be >= 1")
    stats = DecodeStats(mode or ("plain" if proposer is None else "speculative"),
                        lossless=verifier.lossless)
    if proposer is not None:
        proposer.begin(hist, memory, b)
    state = constraint.init(b, seen)
    device = constraint.device
    committed = torch.zeros(b, 0, dtype=torch.long, device=device)
    logps = torch.zeros(b, 0, dtype=torch.float64, device=device)
    proposal = Proposal(committed.new_zeros(b, 0), [state])
    feed = torch.full((b, 1), BOS, dtype=torch.long, device=device)
    length, gamma = 0, spec.gamma
    row_accepted = torch.zeros((), dtype=torch.long, device=device)   # summed on the device, read once
    while True:
        scores, cache = scorer.score(torch.cat([feed, proposal.tokens], 1), cache, length)
        verdict = verifier.verify(proposal, scores, constraint)
        a, g = verdict.n_accept, proposal.length
        new = torch.cat([proposal.tokens[:, :a], verdict.next_token[:, None]], 1)      # [B, a+1]
        lp = verdict.logprobs[:, : a + 1].gather(-1, new[..., None]).squeeze(-1)
        committed = torch.cat([committed, new], 1)
        logps = torch.cat([logps, lp.double()], 1)
        length += a + 1
        cache.truncate(length)                                                           # rollback
        state = constraint.advance(proposal.states[a], verdict.next_token)[0]
        stats.rounds += 1
        stats.drafted += g * b
        stats.accepted += a * b
        row_accepted = row_accepted + verdict.row_accepted.sum()
        n = committed.shape[1]
        if proposer is not None:
            proposer.rollback(n)
        gamma = spec.next_gamma(gamma, a, g)
        if n >= n_tok:
            break
        g = min(gamma, n_tok - n - 1) if proposer is not None else 0
        feed = verdict.next_token[:, None]
        if g > 0:
            ctx = DraftContext(scores.hidden[:, a], verdict.next_token, committed, state, constraint, verifier.policy)
            proposal = proposer.propose(ctx, g)
        else:
            proposal = Proposal(committed.new_zeros(b, 0), [state])
    stats.target_forwards = scorer.forwards
    stats.row_accepted = int(row_accepted)
    stats.draft_steps = proposer.steps if proposer is not None else 0
    return RawSession(committed[:, :n_tok], logps[:, :n_tok], stats)
