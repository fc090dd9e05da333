"""The speculative-decoding roles and their typed results: Proposer → Proposal, scorer → Scores, Verifier → Verdict.

Speculative decoding (Leviathan et al., 2023; Chen et al., 2023) splits a
step into a cheap *proposer* that drafts ``G`` codes, one batched target
forward that *scores* them, and a *verifier* that decides what is committed
(as vLLM separates proposer, scorer and rejection sampler). The roles are
:class:`typing.Protocol` s: the loop (:mod:`models.decoding.speculative`) only
reads what they declare — a verifier says whether it is ``lossless`` and how
proposers must draw drafts (:class:`DraftPolicy`), a proposer says how many
draft steps it ran. Drafts are made under the catalog constraint
(:mod:`models.decoding.constraint`), so every draft is a valid continuation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor
import torch.nn.functional as F

from models.decoding.constraint import Constraint, ConstraintState


@dataclass(frozen=True)
class SpecConfig:
    """Draft length schedule and sampling temperature of the speculative loop."""

    gamma: int = 4          # initial draft length (codes per round)
    gamma_min: int = 1
    gamma_max: int = 8
    adaptive: bool = True   # grow/shrink gamma with acceptance
    temperature: float = 1.0  # sampling modes only
    backoff_max: int = 8    # speculative beam, adaptive: most plain rounds after wasted ones at gamma_min (0: never)

    def __post_init__(self) -> None:
        if not 1 <= self.gamma_min <= self.gamma <= self.gamma_max:
            raise ValueError(f"need 1 <= gamma_min ({self.gamma_min}) <= gamma ({self.gamma}) <= "
                             f"gamma_max ({self.gamma_max}); e.g. gamma=4, gamma_min=1, gamma_max=8")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (1.0 = the model's distribution)")
        if self.backoff_max < 0:
            raise ValueError(f"backoff_max={self.backoff_max} must be >= 0 (0 = always draft)")

    def next_gamma(self, gamma: int, accepted: int, drafted: int) -> int:
        """Adaptive schedule: one longer after a fully accepted round, one shorter otherwise."""
        if not self.adaptive or not drafted:
            return gamma
        return min(gamma + 1, self.gamma_max) if accepted == drafted else max(gamma - 1, self.gamma_min)

    def next_wasted(self, wasted: int, accepted: int, drafted: int) -> int:
        """Consecutive drafted rounds at ``gamma_min`` that accepted nothing (0 once a draft is accepted)."""
        if accepted:
            return 0
        return wasted + 1 if drafted and drafted <= self.gamma_min else wasted

    def plain_rounds(self, wasted: int) -> int:
        """Speculative beam's back-off: plain (undrafted) rounds to run after ``wasted`` such rounds in a row —
        none after one, then 1, 2, 4, ... up to ``backoff_max`` (0: always draft; not when ``adaptive`` is off).
        A plain round is a plain beam step, so backing off never changes the output, only what drafting costs
        where it does not pay (drafts the target rejects, or lock-step batches that rarely all accept)."""
        if not self.adaptive or not self.backoff_max or wasted < 2:
            return 0
        return min(1 << min(wasted - 2, 30), self.backoff_max)


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
    row_accepted: int = 0      # drafts each row's verifier accepted before lock-step, summed (per-row: = accepted)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def as_dict(self) -> dict:
        return {"mode": self.mode, "lossless": self.lossless, "target_forwards": self.target_forwards,
                "draft_steps": self.draft_steps, "rounds": self.rounds, "drafted": self.drafted,
                "accepted": self.accepted, "acceptance_rate": self.acceptance_rate}


def accepted_length(row_accepted: Tensor) -> int:
    """THE one host read of a speculative round: how many drafts are committed (lock-step, the fewest any row
    accepted; ``row_accepted`` [B] or a scalar count). Everything before it in a round is tensor work on the
    device; the KV cache is then cut to the committed length, a host integer (decision 028)."""
    return int(row_accepted.min() if row_accepted.dim() else row_accepted)   # a count needs no reduction


def accepted_lengths(row_accepted: Tensor) -> list[int]:
    """THE one host read of a per-row speculative beam round: each row's committed drafts ``row_accepted``
    [B] as host ints (rows are not in lock-step: each one's KV cache and SID level move by its own count)."""
    return row_accepted.tolist()


@dataclass(frozen=True)
class DraftPolicy:
    """How a proposer draws a draft code: argmax, or a sample from softmax(logits / temperature)."""

    sample: bool = False
    temperature: float = 1.0
    generator: torch.Generator | None = None


@dataclass
class DraftContext:
    """What a proposer sees at the start of a round."""

    hidden: Tensor            # [B, d] target hidden state that predicted `pending`
    pending: Tensor           # [B] last committed code (not yet fed to the target)
    committed: Tensor         # [B, n] every committed code so far (pending last)
    state: ConstraintState    # constraint state after `pending`
    constraint: Constraint
    policy: DraftPolicy = DraftPolicy()


@dataclass
class Proposal:
    """Proposer result: ``G`` drafted codes per row and the constraint states along them."""

    tokens: Tensor                  # [B, G] drafted codes (always valid under the constraint)
    states: list[ConstraintState]   # G + 1 states: states[j] = after pending and j drafts
    probs: Tensor | None = None     # [B, G, K] draft distribution q (sampling only)

    @property
    def length(self) -> int:
        return int(self.tokens.shape[1])


class DraftChain:
    """A proposal grown one code at a time under the constraint (what every proposer does per draft step)."""

    def __init__(self, ctx: DraftContext) -> None:
        self.ctx = ctx
        self.states, self.toks, self.probs = [ctx.state], [], []

    def push(self, logits: Tensor) -> Tensor:
        """Draw the next draft from the proposer's ``logits`` [B, K] (masked by the constraint) -> codes [B]."""
        ctx, policy = self.ctx, self.ctx.policy
        masked = ctx.constraint.masked_logits(logits, self.states[-1])
        if policy.sample:
            q = F.softmax(masked.double() / policy.temperature, dim=-1)
            tok = torch.multinomial(q, 1, generator=policy.generator).squeeze(1)
        else:
            q, tok = None, masked.argmax(-1)
        self.states.append(ctx.constraint.advance(self.states[-1], tok)[0])
        self.toks.append(tok)
        self.probs.append(q)
        return tok

    def proposal(self) -> Proposal:
        b = self.ctx.pending.shape[0]
        tokens = torch.stack(self.toks, 1) if self.toks else self.ctx.pending.new_zeros(b, 0)
        q = torch.stack(self.probs, 1) if self.ctx.policy.sample and self.probs else None
        return Proposal(tokens, self.states, q)


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


class Proposer(Protocol):
    """Drafts codes cheaply; ``steps`` counts its draft steps since :meth:`begin`."""

    steps: int

    def begin(self, hist, memory, batch: int) -> None: ...
    def rollback(self, n_committed: int) -> None: ...
    def propose(self, ctx: DraftContext, gamma: int) -> Proposal: ...


class Verifier(Protocol):
    """Decides what is committed from the target's scores; ``lossless`` when the output (or its distribution)
    is plain decoding's; ``policy`` how proposers must draw drafts for this rule to hold."""

    lossless: bool
    policy: DraftPolicy

    def verify(self, proposal: Proposal, scores: Scores, constraint: Constraint) -> Verdict: ...
