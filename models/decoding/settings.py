"""How a session is decoded: :class:`DecodeSettings`, a config value with no torch import.

Serving's ingress, the experiments config and ``genrec.yaml``'s ``decode`` section validate decode
settings without loading torch; :func:`models.decoding.generate.generate` runs them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from models.config_fields import config_from_dict

MODES = ("greedy", "beam", "mtp", "spec_greedy", "spec_beam", "spec_beam_relaxed", "sample", "spec_sample")
LOSSY_MODES = frozenset({"mtp", "spec_beam_relaxed"})
PROPOSERS = ("mtp", "draft_model")
STEP_GRAPHS = ("eager", "compile", "cuda_graphs")   # models/decoding/step_graphs.py


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode one request (a config value: YAML, A/B arm, or per request), used end to end: serving
    builds it at its boundary (:meth:`from_dict`, unknown keys are an error) and :func:`generate` takes it."""

    mode: str = "greedy"            # one of MODES
    beam_width: int = 4             # beams of the beam modes
    draft_len: int = 4              # speculative draft length: start ...
    draft_min: int = 1              # ... lower bound ...
    draft_max: int = 8              # ... upper bound ...
    adaptive: bool = True           # ... and whether it follows acceptance
    mtp_tokens: int = 3             # head tokens committed per forward in mode "mtp"
    proposer: str = "mtp"           # "mtp" (heads on the target's state) or "draft_model" (greedy/sample modes)
    relax_factor: float = 2.0       # spec_beam_relaxed acceptance window (x beam width)
    draft_width: int | None = None  # spec_beam: beams the proposer keeps per draft step (None = 2 x beam_width)
    temperature: float = 1.0        # sampling modes
    seed: int | None = None         # sampling modes
    session_len: int | None = None  # items per session (None = the model's)
    exclude_seen: bool = True       # never recommend the user's history items
    step_graphs: str = "eager"      # one of STEP_GRAPHS: the decoder's step forwards compiled (not per request:
                                    # made once per model and process, so a server's setting)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"decode mode {self.mode!r} is unknown; use one of {', '.join(MODES)}")
        if self.proposer not in PROPOSERS:
            raise ValueError(f"proposer={self.proposer!r}: use 'mtp' or 'draft_model'")
        if self.proposer == "draft_model" and self.mode in ("spec_beam", "spec_beam_relaxed", "mtp"):
            raise ValueError(f"mode {self.mode!r} drafts with MTP heads only; set proposer='mtp'")
        if self.step_graphs not in STEP_GRAPHS:
            raise ValueError(f"step_graphs={self.step_graphs!r} is unknown; use one of {', '.join(STEP_GRAPHS)} "
                             "('compile' pays for a long-running server, not for a short job)")
        if self.beam_width < 1:
            raise ValueError(f"beam_width={self.beam_width} must be >= 1 (e.g. 4)")
        if not 1 <= self.draft_min <= self.draft_len <= self.draft_max:
            raise ValueError(f"need 1 <= draft_min ({self.draft_min}) <= draft_len ({self.draft_len}) <= "
                             f"draft_max ({self.draft_max})")
        if self.mtp_tokens < 1:
            raise ValueError(f"mtp_tokens={self.mtp_tokens} must be >= 1 (head tokens per forward)")
        if self.draft_width is not None and self.draft_width < self.beam_width:
            raise ValueError(f"draft_width={self.draft_width} must be >= beam_width={self.beam_width} "
                             "(or None: 2 x the beam width)")
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

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DecodeSettings":
        return config_from_dict(cls, d, "decode settings")
