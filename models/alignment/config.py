"""The one config of an alignment round (OneRec IPA, Deng et al. 2025; OneRec-V2 feedback mode)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from models.config_fields import config_from_dict

MODES = ("reward_model", "feedback")
GENERATION = ("beam", "sample")


@dataclass(frozen=True)
class AlignConfig:
    """What one round of Iterative Preference Alignment does.

    ``user_share`` — share of the split's users sampled for candidate generation (OneRec: ~1%
    of samples reach most of the gain); ``max_users`` caps their number (0 = no cap). The defaults
    (every user, at most 256, every pair kept; 100 steps at ``dpo_weight`` 0.25 with the KL anchor
    ``ntp_kl_weight`` 1.0, under the NDCG guard) were chosen on validation users of the ``alignment`` suite
    (docs/decisions/036-alignment-settings.md, 037-alignment-ndcg-guard.md); at product scale
    ``max_users`` is what bounds a round.
    ``n_candidates`` — N sessions per user: the final beam of a constrained beam search of width N
    (``generation="beam"``, OneRec's choice) or N constrained samples (``"sample"``, at ``temperature``).
    ``beta`` — DPO temperature; ``dpo_weight`` — λ in L = L_NTP + λ·L_DPO.
    ``chosen_ntp_weight`` — μ of an extra μ·NLL of the chosen session per code (RPO, Pang et al. 2024: it
    anchors the chosen session's likelihood, which DPO alone lets fall); 0 = plain DPO.
    ``ntp_kl_weight`` — κ of an extra κ·KL(parent ‖ policy) per code on the NTP batch (the parent's
    next-code distributions on real histories, from a frozen copy): an anchor that keeps the policy
    covering what the parent ranks well for users the pairs never saw (decision 037 §8); 0 = off.
    ``bottom_k`` — 1: rejected = the worst candidate; k > 1: a random one of the k worst (robust to false
    negatives). ``min_score_gap`` — users whose best and worst scores differ by no more skip the round.
    ``pair_keep_share`` — the share of the pairs kept, those with the largest score gap relative to the
    user's mean score (the scorer's surest; 1.0 = every pair; :func:`models.alignment.pairs.select_pairs`):
    the reward model's least sure pairs are the ones it orders wrongly most often (decision 037).
    ``mode`` — ``"reward_model"`` (pairs scored by a scorer) or ``"feedback"`` (±1 advantages from served
    sessions' real rewards, the bounded loss of OneRec-V2).
    ``steps`` — optimizer steps; each takes ``pair_batch`` pairs and ``ntp_batch`` fresh NTP examples.
    ``eval_beam`` — beam width of the sessions compared before / after (parent vs aligned);
    ``eval_users`` — how many users (not trained on in the round) they are compared on, and how many
    held-out test cases the offline metrics use (0 = all).
    ``hack_tolerance`` — relative gain (share of the parent's mean value) the scorer may predict without a
    true gain before the round calls it reward hacking and refuses to publish
    (:func:`actors.aligner.reward_hacking`).
    ``guard_every`` — the narrowing guard (:mod:`models.alignment.guard`, decision 037): the policy is
    snapshotted every ``guard_every`` steps (and at the last), and the round keeps the last snapshot whose
    NDCG@10 on the round's held-out users is at most ``guard_max_drop`` (relative) below the parent's;
    none holding refuses the round. 0 = no guard (the last step is kept). ``guard_users`` caps the
    held-out users it ranks (0 = all of the round's split).
    """

    user_share: float = 1.0
    max_users: int = 256
    n_candidates: int = 16
    generation: str = "beam"
    temperature: float = 1.0
    beta: float = 0.1
    dpo_weight: float = 0.25
    chosen_ntp_weight: float = 0.0
    ntp_kl_weight: float = 1.0
    lr: float = 2e-4
    steps: int = 100
    pair_batch: int = 32
    ntp_batch: int = 64
    later_item_weight: float = 0.3
    grad_clip: float = 1.0
    bottom_k: int = 1
    min_score_gap: float = 1e-6
    pair_keep_share: float = 1.0
    mode: str = "reward_model"
    eval_beam: int = 4
    eval_users: int = 200
    hack_tolerance: float = 0.01
    guard_every: int = 10
    guard_max_drop: float = 0.02
    guard_users: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.user_share <= 1.0:
            raise ValueError(f"user_share={self.user_share} must be in (0, 1], e.g. 0.05 (5% of users)")
        for name in ("n_candidates", "steps", "pair_batch", "ntp_batch", "bottom_k", "eval_beam"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive int")
        if self.n_candidates < 2:
            raise ValueError(f"n_candidates={self.n_candidates}: a pair needs at least 2 candidates (OneRec: 128)")
        if self.bottom_k > self.n_candidates - 1:
            raise ValueError(f"bottom_k={self.bottom_k} must be < n_candidates={self.n_candidates} "
                             "(the rejected session is drawn from the k worst, never the best)")
        if self.max_users < 0 or self.eval_users < 0 or self.guard_users < 0:
            raise ValueError("max_users, eval_users and guard_users must be >= 0 (0 = no cap)")
        if isinstance(self.guard_every, bool) or not isinstance(self.guard_every, int) or self.guard_every < 0:
            raise ValueError(f"guard_every={self.guard_every!r} must be an int >= 0 (steps between the NDCG guard's "
                             "snapshots, e.g. 10; 0 turns the guard off)")
        if not 0.0 <= self.guard_max_drop < 1.0:
            raise ValueError(f"guard_max_drop={self.guard_max_drop} must be in [0, 1), e.g. 0.02 (the gate's "
                             "max_ndcg_drop)")
        if not 0.0 < self.pair_keep_share <= 1.0:
            raise ValueError(f"pair_keep_share={self.pair_keep_share} must be in (0, 1], e.g. 0.5 (keep the half "
                             "of the pairs the scorer is surest of); 1.0 keeps every pair")
        if self.generation not in GENERATION:
            raise ValueError(f"generation={self.generation!r}: use 'beam' (constrained beam of width "
                             "n_candidates) or 'sample'")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: use 'reward_model' or 'feedback'")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if not self.beta > 0:
            raise ValueError(f"beta={self.beta} must be > 0 (DPO's temperature, e.g. 0.1)")
        if self.chosen_ntp_weight < 0:
            raise ValueError(f"chosen_ntp_weight={self.chosen_ntp_weight} must be >= 0 (μ of the chosen session's "
                             "NLL, e.g. 1.0; 0 = plain DPO)")
        if self.ntp_kl_weight < 0:
            raise ValueError(f"ntp_kl_weight={self.ntp_kl_weight} must be >= 0 (κ of KL(parent ‖ policy) on the NTP "
                             "batch, e.g. 1.0; 0 = no anchor)")
        if self.dpo_weight < 0:
            raise ValueError(f"dpo_weight={self.dpo_weight} must be >= 0 (λ of L_NTP + λ·L_DPO)")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0, e.g. 2e-4 (OneRec's Adam lr)")
        if self.grad_clip < 0 or self.later_item_weight < 0 or self.min_score_gap < 0 or self.hack_tolerance < 0:
            raise ValueError("grad_clip, later_item_weight, min_score_gap and hack_tolerance must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AlignConfig":
        return config_from_dict(cls, d, "AlignConfig fields")
