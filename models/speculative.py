"""Speculative decoding of SID sessions: proposer, scorer and verifier roles.

Speculative decoding (Leviathan et al., 2023, "Fast Inference from
Transformers via Speculative Decoding"; Chen et al., 2023, "Accelerating
Large Language Model Decoding with Speculative Sampling") splits a decoding
step into three roles, each with a typed result:

* **Proposer** → :class:`Proposal`: drafts ``G`` next SID codes cheaply —
  :class:`MTPProposer` (multi-token-prediction heads on the target's hidden
  state, :mod:`models.mtp`) or :class:`DraftModelProposer` (a small
  generator with its own KV cache). Drafts are generated *under the catalog
  constraint*, so a draft that would leave the trie (or repeat / revisit an
  excluded item) is pruned before it ever reaches verification.
* **Scorer** → :class:`Scores`: the full model runs ONE batched decoder
  forward over ``[pending, d_1 … d_G]`` on top of its KV cache and returns
  logits and hidden states for all ``G + 1`` positions.
* **Verifier** → :class:`Verdict`: :class:`GreedyVerifier` accepts the
  longest prefix of drafts equal to the target's own constrained argmax and
  appends the target's token at the first mismatch — the output is exactly
  plain greedy decoding's. :class:`SamplingVerifier` applies the
  Leviathan et al. rejection rule (accept ``d`` with probability
  ``min(1, p(d)/q(d))``, else resample from ``norm(max(0, p − q))``) — the
  output *distribution* is exactly plain sampling's. :class:`AcceptAllVerifier`
  commits every draft unverified: that is MTP parallel decoding, lossy, and
  :class:`DecodeStats` says so.

Batching across requests: rows advance in lock-step — a round commits
``a + 1`` tokens for every row, ``a`` = the fewest drafts any row accepted.
Rows that accepted more keep only their first ``a`` drafts plus the target's
token at ``a`` (which equals their draft there), so the rule stays exact;
their surplus drafts are simply re-proposed next round. The KV cache is
rolled back with ``truncate`` to the committed length after every round
(rollback-safe: rejected positions never leak into later steps).

Adaptive draft length (:class:`SpecConfig`): ``G`` grows by one after a round
where every draft was accepted and shrinks by one otherwise, within
``[gamma_min, gamma_max]`` — the usual heuristic schedule.

Plain KV-cached decoding is the same loop with no proposer (``G = 0``): one
decoder position per forward. That is the baseline the speculative modes are
measured and tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
import torch.nn.functional as F

from models.spec_constraint import CatalogConstraint, ConstraintState, safe_log_softmax

BOS = 0  # models.generator.BOS: the decoder input at position 0


# ---- configuration and typed results ---------------------------------------------------------

@dataclass(frozen=True)
class SpecConfig:
    """Draft length schedule and sampling temperature of the speculative loop."""

    gamma: int = 4          # initial draft length (codes per round)
    gamma_min: int = 1
    gamma_max: int = 8
    adaptive: bool = True   # grow/shrink gamma with acceptance
    temperature: float = 1.0  # sampling modes only

    def __post_init__(self) -> None:
        if not 1 <= self.gamma_min <= self.gamma <= self.gamma_max:
            raise ValueError(f"need 1 <= gamma_min ({self.gamma_min}) <= gamma ({self.gamma}) <= "
                             f"gamma_max ({self.gamma_max}); e.g. gamma=4, gamma_min=1, gamma_max=8")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (1.0 = the model's distribution)")


@dataclass
class DecodeStats:
    """What a decoding call cost and how well drafting went (summed over the batch rows)."""

    mode: str
    lossless: bool = True
    target_forwards: int = 0   # full-model decoder forwards (each covers the whole batch)
    draft_steps: int = 0       # proposer steps (MTP chain steps or draft-model forwards)
    rounds: int = 0
    drafted: int = 0           # draft tokens sent to verification, summed over rows
    accepted: int = 0          # draft tokens committed, summed over rows
    row_accepted: int = 0      # drafts each row's verifier accepted before lock-step, summed

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict:
        return {"mode": self.mode, "lossless": self.lossless, "target_forwards": self.target_forwards,
                "draft_steps": self.draft_steps, "rounds": self.rounds, "drafted": self.drafted,
                "accepted": self.accepted, "acceptance_rate": self.acceptance_rate}


@dataclass
class DraftContext:
    """What a proposer sees at the start of a round."""

    hidden: Tensor            # [B, d] target hidden state that predicted `pending`
    pending: Tensor           # [B] last committed code (not yet fed to the target)
    committed: Tensor         # [B, n] every committed code so far (pending last)
    state: ConstraintState    # constraint state after `pending`
    constraint: CatalogConstraint
    sample: bool = False
    temperature: float = 1.0
    generator: torch.Generator | None = None


@dataclass
class Proposal:
    """Proposer result: ``G`` drafted codes per row and the constraint states along them."""

    tokens: Tensor                  # [B, G] drafted codes (always valid under the constraint)
    states: list[ConstraintState]   # G + 1 states: states[j] = after pending and j drafts
    probs: Tensor | None = None     # [B, G, K] draft distribution q (sampling only)

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])


@dataclass
class Scores:
    """Scorer result: the target's outputs at the ``G + 1`` verified positions."""

    logits: Tensor   # [B, G+1, K]
    hidden: Tensor   # [B, G+1, d]


@dataclass
class Verdict:
    """Verifier result."""

    row_accepted: Tensor   # [B] drafts each row accepted
    n_accept: int          # drafts committed this round (lock-step: min over rows)
    next_token: Tensor     # [B] code committed after the accepted drafts
    logprobs: Tensor       # [B, G+1, K] target log-probs under the constraint (for scores)


@dataclass
class RawSession:
    """A decoded batch of sessions as codes."""

    codes: Tensor    # [B, n_items * D]
    logp: Tensor     # [B, n_items * D] target log-prob of each committed code
    stats: DecodeStats


# ---- proposers ---------------------------------------------------------------------------------

def _choose(logits: Tensor, ctx: DraftContext) -> tuple[Tensor, Tensor | None]:
    """Draft token from masked logits [B, K]: argmax, or a sample from q = softmax(logits / T)."""
    if not ctx.sample:
        return logits.argmax(-1), None
    q = F.softmax(logits.double() / ctx.temperature, dim=-1)
    return torch.multinomial(q, 1, generator=ctx.generator).squeeze(1), q


class MTPProposer:
    """Drafts with the MTP head chain from the target's hidden state (no extra target forward)."""

    def __init__(self, heads) -> None:
        self.heads = heads
        self.steps = 0

    def begin(self, hist, memory, batch: int) -> None:
        self.steps = 0

    def rollback(self, n_committed: int) -> None:  # stateless between rounds
        pass

    @torch.no_grad()
    def propose(self, ctx: DraftContext, gamma: int) -> Proposal:
        D, n = ctx.constraint.depth, ctx.committed.shape[1]
        s, code, lvl = ctx.hidden.to(self.heads.out.weight.dtype), ctx.pending, (n - 1) % D
        states, toks, probs = [ctx.state], [], []
        for _ in range(gamma):
            s, logits = self.heads.step(s, code, lvl)
            self.steps += 1
            tok, q = _choose(ctx.constraint.masked_logits(logits, states[-1]), ctx)
            states.append(ctx.constraint.advance(states[-1], tok)[0])
            toks.append(tok)
            probs.append(q)
            code, lvl = tok, (lvl + 1) % D
        return _proposal(ctx, states, toks, probs)


class DraftModelProposer:
    """Drafts autoregressively with a small generator (same SID vocabulary) and its own KV cache.

    Its cache mirrors the committed tokens: after each round it is truncated to the positions whose
    inputs were committed (``rollback``), and the next round first feeds whatever is missing.
    """

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
        states, toks, probs = [ctx.state], [], []
        for j in range(gamma):
            out = self.model.decode(feed, None, self.cache, self.fed)
            self.steps += 1
            self.fed += feed.shape[1]
            tok, q = _choose(ctx.constraint.masked_logits(out.logits[:, -1], states[-1]), ctx)
            states.append(ctx.constraint.advance(states[-1], tok)[0])
            toks.append(tok)
            probs.append(q)
            feed = tok[:, None]
        return _proposal(ctx, states, toks, probs)


def _proposal(ctx: DraftContext, states, toks, probs) -> Proposal:
    b = ctx.pending.shape[0]
    tokens = torch.stack(toks, 1) if toks else ctx.pending.new_zeros(b, 0)
    q = torch.stack(probs, 1) if ctx.sample and probs else None
    return Proposal(tokens, states, q)


# ---- scorer ------------------------------------------------------------------------------------

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


# ---- verifiers ---------------------------------------------------------------------------------

def _masked(scores: Scores, proposal: Proposal, constraint: CatalogConstraint) -> Tensor:
    """Target log-probs (float32, constrained, as plain decoding computes them): [B, G+1, K]."""
    return constraint.logprobs_along(scores.logits, proposal.states)


class GreedyVerifier:
    """Longest matching prefix against the target's constrained argmax (exact plain greedy)."""

    lossless = True

    def verify(self, proposal: Proposal, scores: Scores, constraint: CatalogConstraint) -> Verdict:
        masked = _masked(scores, proposal, constraint)                   # [B, G+1, K]
        target = masked.argmax(-1)                                       # [B, G+1]
        g = proposal.length
        if g:
            row_acc = (target[:, :g] == proposal.tokens).long().cumprod(1).sum(1)
        else:
            row_acc = target.new_zeros(target.shape[0])
        a = int(row_acc.min())
        return Verdict(row_acc, a, target[:, a], masked)


class AcceptAllVerifier:
    """MTP parallel decoding: every draft is committed unverified (LOSSY)."""

    lossless = False

    def verify(self, proposal: Proposal, scores: Scores, constraint: CatalogConstraint) -> Verdict:
        masked = _masked(scores, proposal, constraint)
        g = proposal.length
        row_acc = torch.full((masked.shape[0],), g, dtype=torch.long, device=masked.device)
        return Verdict(row_acc, g, masked[:, g].argmax(-1), masked)


class SamplingVerifier:
    """Speculative sampling (Leviathan et al., 2023): output distribution = plain sampling's."""

    lossless = True  # in distribution

    def __init__(self, temperature: float = 1.0, generator: torch.Generator | None = None) -> None:
        self.temperature = temperature
        self.generator = generator

    def verify(self, proposal: Proposal, scores: Scores, constraint: CatalogConstraint) -> Verdict:
        logp = _masked(scores, proposal, constraint)
        masked = logp.double() / self.temperature
        p = F.softmax(masked, -1).nan_to_num(0.0)                        # [B, G+1, K]
        b, g = p.shape[0], proposal.length
        if g:
            d = proposal.tokens[..., None]                               # [B, G, 1]
            pd = p[:, :g].gather(-1, d).squeeze(-1)
            qd = proposal.probs.gather(-1, d).squeeze(-1)
            r = torch.rand(b, g, generator=self.generator, dtype=torch.float64).to(p.device)
            row_acc = (r * qd <= pd).long().cumprod(1).sum(1)
        else:
            row_acc = torch.zeros(b, dtype=torch.long, device=p.device)
        a = int(row_acc.min())
        dist = p[:, a]
        if a < g:  # rows that rejected at a draw from the residual max(0, p - q), renormalised
            resid = (p[:, a] - proposal.probs[:, a]).clamp(min=0)
            total = resid.sum(-1, keepdim=True)
            resid = torch.where(total > 0, resid / total.clamp(min=1e-300), p[:, a])
            dist = torch.where((row_acc == a)[:, None], resid, p[:, a])
        nxt = torch.multinomial(dist, 1, generator=self.generator).squeeze(1)
        if a < g:  # rows that accepted draft a keep it
            nxt = torch.where(row_acc > a, proposal.tokens[:, a], nxt)
        return Verdict(row_acc, a, nxt, safe_log_softmax(masked))


# ---- the loop ----------------------------------------------------------------------------------

def speculative_session(model, memory, constraint: CatalogConstraint, n_items: int, *,
                        proposer=None, verifier=None, spec: SpecConfig = SpecConfig(),
                        seen=None, hist=None, mode: str = "") -> RawSession:
    """Decode ``n_items`` items per row (``n_items * D`` codes) with draft → score → verify rounds.

    ``model``: a generator with ``start_cache(memory)`` and ``decode(tokens, None, cache, start)``
    returning logits/hidden/cache (:class:`models.generator.GenerativeRecommender`). ``memory``: its
    encoder output for B requests. ``proposer=None`` is plain KV-cached decoding (one position per
    forward). ``seen``: items to exclude per row (see :meth:`CatalogConstraint.init`).
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
                        lossless=getattr(verifier, "lossless", True))
    if proposer is not None:
        proposer.begin(hist, memory, b)
    state = constraint.init(b, seen)
    device = constraint.device
    committed = torch.zeros(b, 0, dtype=torch.long, device=device)
    logps = torch.zeros(b, 0, dtype=torch.float64, device=device)
    proposal = Proposal(committed.new_zeros(b, 0), [state])
    feed = torch.full((b, 1), BOS, dtype=torch.long, device=device)
    length, gamma = 0, spec.gamma
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
        stats.row_accepted += int(verdict.row_accepted.sum())
        n = committed.shape[1]
        if proposer is not None:
            proposer.rollback(n)
        if spec.adaptive and g:
            gamma = min(gamma + 1, spec.gamma_max) if a == g else max(gamma - 1, spec.gamma_min)
        if n >= n_tok:
            break
        g = min(gamma, n_tok - n - 1) if proposer is not None else 0
        feed = verdict.next_token[:, None]
        if g > 0:
            ctx = DraftContext(scores.hidden[:, a], verdict.next_token, committed, state, constraint,
                               sample=isinstance(verifier, SamplingVerifier),
                               temperature=getattr(verifier, "temperature", 1.0),
                               generator=getattr(verifier, "generator", None))
            proposal = proposer.propose(ctx, g)
        else:
            proposal = Proposal(committed.new_zeros(b, 0), [state])
    stats.target_forwards = scorer.forwards
    stats.draft_steps = getattr(proposer, "steps", 0) if proposer is not None else 0
    return RawSession(committed[:, :n_tok], logps[:, :n_tok], stats)
