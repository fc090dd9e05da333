"""THE decoding switch: one frozen config value picks how a session is generated.

Serving, A/B arms, benchmarks and tests call :func:`generate` with the
catalog constraint (:class:`models.decoding.constraint.SidConstraint`) and a
:class:`DecodeSettings`; the ``mode`` chooses among

| mode | what | lossless? |
|---|---|---|
| ``greedy`` | plain KV-cached greedy (:func:`models.decoding.search.greedy_session`) | reference |
| ``beam`` | plain KV-cached session beam search (:func:`models.decoding.search.beam_session`) | reference |
| ``sample`` | plain ancestral sampling at ``temperature`` | reference |
| ``mtp`` | MTP parallel: target token + ``mtp_tokens`` head tokens per forward, unverified | **lossy** |
| ``spec_greedy`` | draft (MTP heads or draft model) → verify, longest matching prefix | = ``greedy`` |
| ``spec_sample`` | speculative sampling, Leviathan et al. (2023) rejection rule | = ``sample`` in distribution |
| ``spec_beam`` | speculative beam, strict top-W verification (AtSpeed) | = ``beam`` |
| ``spec_beam_relaxed`` | speculative beam accepting drafts within the target's top ``relax_factor·W`` | **lossy** |

All modes decode under the one catalog constraint — no repeats within a
session and (optionally) the user's seen items excluded — so no mode can emit
an invalid or repeated item. The speculative roles are typed
(:class:`~models.decoding.spec_types.Proposer`,
:class:`~models.decoding.spec_types.Verifier`): the mode picks one of each
(:func:`proposer_for`, :func:`verifier_for`). Results share one type,
:class:`SessionResult`, whose ``stats`` carry the target-forward count,
acceptance rate and a ``lossless`` flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from models.decoding import search
from models.decoding.constraint import Constraint
from models.decoding.settings import DecodeSettings
from models.decoding.proposer_draft_model import DraftModelProposer
from models.decoding.proposer_mtp import MTPProposer
from models.decoding.spec_beam import speculative_beam
from models.decoding.step_graphs import graphed
from models.decoding.spec_types import Proposer, SpecConfig, Verifier
from models.decoding.speculative import speculative_session
from models.decoding.verifiers import AcceptAllVerifier, GreedyVerifier, SamplingVerifier
from models.generator.model import HistoryBatch, Memory

def spec_config(s: DecodeSettings) -> SpecConfig:
    """The speculative draft-length schedule and temperature of ``s``."""
    return SpecConfig(gamma=s.draft_len, gamma_min=s.draft_min, gamma_max=s.draft_max,
                      adaptive=s.adaptive, temperature=s.temperature)


@dataclass
class SessionResult:
    """A generated session per request (same for every mode)."""

    items: Tensor    # [B, K] item indices (-1 only if every catalog item is excluded)
    sids: Tensor     # [B, K, D] codes
    scores: Tensor   # [B, K] target log-probability of each item (sum over its D codes)
    stats: dict = field(default_factory=dict)


def proposer_for(s: DecodeSettings, mtp_heads=None, draft_model=None, hist: HistoryBatch | None = None
                 ) -> Proposer | None:
    """The drafting role of mode ``s.mode`` (None: plain decoding, nothing drafted)."""
    if s.mode not in ("mtp", "spec_greedy", "spec_sample"):
        return None
    if s.proposer == "draft_model" and s.mode != "mtp":
        if draft_model is None or hist is None:
            raise ValueError("proposer='draft_model' needs draft_model=... and the histories (hist=...)")
        return DraftModelProposer(draft_model.eval())
    return MTPProposer(mtp_heads.eval())


def verifier_for(s: DecodeSettings, device: str | torch.device = "cpu") -> Verifier:
    """The verifying role of mode ``s.mode``; a seeded sampler draws from a generator on ``device`` (the
    model's: draws stay on the device, no copy inside a step)."""
    if s.mode == "mtp":
        return AcceptAllVerifier()
    if s.mode in ("sample", "spec_sample"):
        gen = torch.Generator(device=device).manual_seed(s.seed) if s.seed is not None else None
        return SamplingVerifier(s.temperature, gen)
    return GreedyVerifier()


@torch.no_grad()
def generate(model, memory: Memory | HistoryBatch, constraint: Constraint, settings: DecodeSettings, *,
             seen=None, mtp_heads=None, draft_model=None, hist: HistoryBatch | None = None) -> SessionResult:
    """Generate one session per request with the decoding ``settings.mode``.

    ``memory``: the generator's ``Memory`` [B, 1+S, d] or a ``HistoryBatch`` (encoded here).
    ``constraint``: the catalog's (``SidConstraint.of(trie, device)``). ``seen``: None, a bool mask
    [B, n_items] or B lists of item indices to exclude (ignored unless ``settings.exclude_seen``).
    ``mtp_heads`` are required by the MTP modes, ``draft_model`` (and the histories) by
    ``proposer='draft_model'``. ``settings.step_graphs`` other than ``"eager"`` decodes with the model's
    compiled step forwards (:func:`models.decoding.step_graphs.graphed`; same output).
    """
    model.eval()
    if isinstance(memory, HistoryBatch):
        hist = memory if hist is None else hist
        memory = model.encode(memory.to(next(model.parameters()).device))
    elif not isinstance(memory, Memory):
        raise TypeError(f"expected a Memory or HistoryBatch, got {type(memory).__name__}")
    s = settings
    model = graphed(model, s.step_graphs)
    constraint.check_levels(model.cfg.level_sizes)
    K = s.session_len or model.cfg.session_len
    D = model.cfg.sid_len
    B = memory.states.shape[0]
    seen = seen if s.exclude_seen else None
    if s.needs_heads and mtp_heads is None:
        raise ValueError(f"decode mode {s.mode!r} needs MTP heads (mtp_heads=...); train them with "
                         "models.generator.mtp.fit_mtp, or use mode='greedy'/'beam'")
    if s.mode in ("greedy", "beam"):
        if s.mode == "greedy":
            out = search.greedy_session(model, memory, constraint, session_len=K, seen=seen)
        else:
            out = search.beam_session(model, memory, constraint, session_len=K, beam_width=s.beam_width, seen=seen)
        stats = {"mode": s.mode, "lossless": True, "target_forwards": out.stats["forwards"],
                 "acceptance_rate": 0.0, "draft_steps": 0}
        return SessionResult(out.items, out.sids, out.scores, stats)
    if s.mode in ("spec_beam", "spec_beam_relaxed"):
        res = speculative_beam(model, memory, constraint, K, s.beam_width, heads=mtp_heads, spec=spec_config(s), seen=seen,
                               relaxed=s.mode == "spec_beam_relaxed", relax_factor=s.relax_factor, mode=s.mode,
                               draft_width=s.draft_width)
        codes = res.codes.view(B, K, D)
        ends = res.cum.view(B, K, D)[:, :, -1]                                          # [B, K]
        scores = ends - torch.cat([ends.new_zeros(B, 1), ends[:, :-1]], 1)
        return SessionResult(constraint.lookup(codes), codes, scores, res.stats.as_dict())
    spec = spec_config(s)
    if s.mode == "mtp":
        spec = SpecConfig(gamma=s.mtp_tokens, gamma_min=s.mtp_tokens, gamma_max=s.mtp_tokens, adaptive=False)
    raw = speculative_session(model, memory, constraint, K, proposer=proposer_for(s, mtp_heads, draft_model, hist),
                              verifier=verifier_for(s, memory.states.device), spec=spec, seen=seen, hist=hist, mode=s.mode)
    codes = raw.codes.view(B, K, D)
    return SessionResult(constraint.lookup(codes), codes, raw.logp.view(B, K, D).sum(-1).float(), raw.stats.as_dict())
