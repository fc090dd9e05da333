"""THE decoding switch: one frozen config value picks how a session is generated.

Serving and A/B arms call :func:`generate` with a :class:`DecodeSettings`;
the ``mode`` chooses among

| mode | what | lossless? |
|---|---|---|
| ``greedy`` | plain KV-cached greedy (:func:`models.decoding.greedy_session`) | reference |
| ``beam`` | plain KV-cached session beam search (:func:`models.decoding.beam_session`) | reference |
| ``sample`` | plain ancestral sampling at ``temperature`` | reference |
| ``mtp`` | MTP parallel: target token + ``mtp_tokens`` head tokens per forward, unverified | **lossy** |
| ``spec_greedy`` | draft (MTP heads or draft model) → verify, longest matching prefix | = ``greedy`` |
| ``spec_sample`` | speculative sampling, Leviathan et al. (2023) rejection rule | = ``sample`` in distribution |
| ``spec_beam`` | speculative beam, strict top-W verification (AtSpeed) | = ``beam`` |
| ``spec_beam_relaxed`` | speculative beam accepting drafts within the target's top ``relax_factor·W`` | **lossy** |

All modes decode under the catalog trie with no repeats within a session
and (optionally) the user's seen items excluded, so no mode can emit an
invalid or repeated item. Results share one type, :class:`SessionResult`, whose
``stats`` carry the target-forward count, acceptance rate and a ``lossless`` flag.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from models import decoding
from models.generator import HistoryBatch, Memory
from models.spec_beam import speculative_beam
from models.spec_constraint import CatalogConstraint
from models.speculative import (AcceptAllVerifier, DraftModelProposer, GreedyVerifier, MTPProposer,
                                SamplingVerifier, SpecConfig, speculative_session)

MODES = ("greedy", "beam", "mtp", "spec_greedy", "spec_beam", "spec_beam_relaxed", "sample", "spec_sample")
LOSSY_MODES = frozenset({"mtp", "spec_beam_relaxed"})
PROPOSERS = ("mtp", "draft_model")


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode one request (a config value: YAML, A/B arm, or per request).

    ``mode`` — one of :data:`MODES`. ``beam_width`` — beams for the beam modes.
    ``draft_len`` / ``draft_min`` / ``draft_max`` / ``adaptive`` — speculative draft length schedule.
    ``mtp_tokens`` — head tokens committed per forward in ``mtp`` mode.
    ``proposer`` — ``"mtp"`` (heads on the target's state) or ``"draft_model"`` (a small generator;
    greedy/sample modes only). ``relax_factor`` — ``spec_beam_relaxed`` acceptance window.
    ``temperature`` / ``seed`` — sampling modes. ``session_len`` — items per session (None = model's).
    ``exclude_seen`` — never recommend the user's history items.
    """

    mode: str = "greedy"
    beam_width: int = 4
    draft_len: int = 4
    draft_min: int = 1
    draft_max: int = 8
    adaptive: bool = True
    mtp_tokens: int = 3
    proposer: str = "mtp"
    relax_factor: float = 2.0
    temperature: float = 1.0
    seed: int | None = None
    session_len: int | None = None
    exclude_seen: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"decode mode {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        if self.proposer not in PROPOSERS:
            raise ValueError(f"proposer={self.proposer!r}: use 'mtp' or 'draft_model'")
        if self.proposer == "draft_model" and self.mode in ("spec_beam", "spec_beam_relaxed", "mtp"):
            raise ValueError(f"mode {self.mode!r} drafts with MTP heads only; set proposer='mtp'")
        if self.beam_width < 1:
            raise ValueError(f"beam_width={self.beam_width} must be >= 1 (e.g. 4)")
        if not 1 <= self.draft_min <= self.draft_len <= self.draft_max:
            raise ValueError(f"need 1 <= draft_min ({self.draft_min}) <= draft_len ({self.draft_len}) <= "
                             f"draft_max ({self.draft_max})")
        if self.mtp_tokens < 1:
            raise ValueError(f"mtp_tokens={self.mtp_tokens} must be >= 1 (head tokens per forward)")
        if not self.relax_factor >= 1:
            raise ValueError(f"relax_factor={self.relax_factor} must be >= 1 (1 = strict)")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if self.session_len is not None and self.session_len < 1:
            raise ValueError(f"session_len={self.session_len} must be >= 1 or None (the model's)")

    @property
    def lossless(self) -> bool:
        return self.mode not in LOSSY_MODES

    @property
    def needs_heads(self) -> bool:
        return self.proposer == "mtp" and self.mode in ("mtp", "spec_greedy", "spec_sample", "spec_beam",
                                                         "spec_beam_relaxed")

    def spec(self) -> SpecConfig:
        return SpecConfig(gamma=self.draft_len, gamma_min=self.draft_min, gamma_max=self.draft_max,
                          adaptive=self.adaptive, temperature=self.temperature)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DecodeSettings":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown decode settings {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@dataclass
class SessionResult:
    """A generated session per request (same for every mode)."""

    items: Tensor    # [B, K] item indices (-1 only if every catalog item is excluded)
    sids: Tensor     # [B, K, D] codes
    scores: Tensor   # [B, K] target log-probability of each item (sum over its D codes)
    stats: dict = field(default_factory=dict)


_CONSTRAINTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def constraint_for(trie, device=None) -> CatalogConstraint:
    """The :class:`CatalogConstraint` of a trie, rebuilt only when the trie changed."""
    key = (getattr(trie, "version", None), len(trie), trie.num_nodes, trie.num_edges, str(device))
    hit = _CONSTRAINTS.get(trie)
    if hit is not None and hit[0] == key:
        return hit[1]
    c = CatalogConstraint.from_trie(trie, device or "cpu")
    _CONSTRAINTS[trie] = (key, c)
    return c


_INDEXES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _range_index_for(trie, n_items: int, device) -> decoding.SidRangeIndex:
    """The SidRangeIndex that models.decoding's ban constraint needs, rebuilt only when the trie changed
    (building it walks every item, which would otherwise dominate a small request)."""
    key = (getattr(trie, "version", None), len(trie), trie.num_nodes, trie.num_edges, n_items, str(device))
    hit = _INDEXES.get(trie)
    if hit is not None and hit[0] == key:
        return hit[1]
    sids, items = trie.entries()
    idx = decoding.SidRangeIndex(trie.level_sizes, sids, items, n_items, device)
    _INDEXES[trie] = (key, idx)
    return idx


def _seen_mask(seen, b: int, n_items: int, device) -> Tensor | None:
    if seen is None:
        return None
    if isinstance(seen, Tensor) and seen.dtype == torch.bool:
        return seen.to(device)
    mask = torch.zeros(b, n_items, dtype=torch.bool, device=device)
    for i, s in enumerate(seen):
        s = np.asarray(s, dtype=np.int64)
        s = s[(s >= 0) & (s < n_items)]
        mask[i, torch.as_tensor(s, device=device)] = True
    return mask


@torch.no_grad()
def generate(model, memory_or_hist, trie, settings: DecodeSettings = DecodeSettings(), seen=None, *,
             mtp_heads=None, draft_model=None, hist: HistoryBatch | None = None,
             constraint: CatalogConstraint | None = None) -> SessionResult:
    """Generate one session per request with the decoding ``settings.mode``.

    ``memory_or_hist``: the generator's ``Memory`` or a ``HistoryBatch`` (encoded here). ``trie``: the
    catalog :class:`~models.sid_trie.SidTrie`. ``seen``: None, a bool mask [B, n_items] or B lists of
    item indices to exclude (ignored unless ``settings.exclude_seen``). ``mtp_heads`` are required by
    the MTP modes, ``draft_model`` (and the histories) by ``proposer='draft_model'``.
    """
    model.eval()
    if isinstance(memory_or_hist, HistoryBatch):
        hist = memory_or_hist if hist is None else hist
        memory = model.encode(memory_or_hist.to(next(model.parameters()).device))
    elif isinstance(memory_or_hist, Memory):
        memory = memory_or_hist
    else:
        raise TypeError(f"expected a Memory or HistoryBatch, got {type(memory_or_hist).__name__}")
    s = settings
    K = s.session_len or model.cfg.session_len
    D = model.cfg.sid_len
    B = memory.states.shape[0]
    dev = memory.states.device
    seen = seen if s.exclude_seen else None
    if s.needs_heads and mtp_heads is None:
        raise ValueError(f"decode mode {s.mode!r} needs MTP heads (mtp_heads=...); train them with "
                         "models.mtp.fit_mtp, or use mode='greedy'/'beam'")
    if s.mode in ("greedy", "beam"):
        items_all = trie.items()
        n_items = int(items_all.max()) + 1 if len(items_all) else 1
        if isinstance(seen, Tensor):
            n_items = max(n_items, int(seen.shape[1]))
        procs = decoding.default_processors(trie, seen=_seen_mask(seen, B, n_items, dev), n_items=n_items,
                                            index=_range_index_for(trie, n_items, dev))
        if s.mode == "greedy":
            out = decoding.greedy_session(model, memory, trie, session_len=K, processors=procs)
        else:
            out = decoding.beam_session(model, memory, trie, session_len=K, beam_width=s.beam_width,
                                        processors=procs)
        stats = {"mode": s.mode, "lossless": True, "target_forwards": out.stats["forwards"],
                 "acceptance_rate": 0.0, "draft_steps": 0}
        return SessionResult(out.items, out.sids, out.scores, stats)

    con = constraint if constraint is not None else constraint_for(trie, dev)
    if s.mode in ("spec_beam", "spec_beam_relaxed"):
        res = speculative_beam(model, memory, con, K, s.beam_width, heads=mtp_heads, spec=s.spec(), seen=seen,
                               relaxed=s.mode == "spec_beam_relaxed", relax_factor=s.relax_factor, mode=s.mode)
        codes = res.codes.view(B, K, D)
        ends = res.cum.view(B, K, D)[:, :, -1]                                          # [B, K]
        scores = ends - torch.cat([ends.new_zeros(B, 1), ends[:, :-1]], 1)
        return SessionResult(con.lookup(codes), codes, scores, res.stats.as_dict())

    gen = torch.Generator().manual_seed(s.seed) if s.seed is not None else None
    spec = s.spec()
    proposer = None
    if s.mode in ("spec_greedy", "spec_sample"):
        if s.proposer == "draft_model":
            if draft_model is None or hist is None:
                raise ValueError("proposer='draft_model' needs draft_model=... and the histories (hist=...)")
            proposer = DraftModelProposer(draft_model.eval())
        else:
            proposer = MTPProposer(mtp_heads.eval())
    if s.mode == "mtp":
        proposer = MTPProposer(mtp_heads.eval())
        spec = SpecConfig(gamma=s.mtp_tokens, gamma_min=s.mtp_tokens, gamma_max=s.mtp_tokens, adaptive=False)
        verifier = AcceptAllVerifier()
    elif s.mode in ("sample", "spec_sample"):
        verifier = SamplingVerifier(s.temperature, gen)
    else:
        verifier = GreedyVerifier()
    raw = speculative_session(model, memory, con, K, proposer=proposer, verifier=verifier, spec=spec,
                              seen=seen, hist=hist, mode=s.mode)
    codes = raw.codes.view(B, K, D)
    return SessionResult(con.lookup(codes), codes, raw.logp.view(B, K, D).sum(-1).float(), raw.stats.as_dict())
