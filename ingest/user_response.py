"""How a simulated user answers a served session (numpy, vectorised over sessions, pure).

The closed-loop simulator's user model (docs/decisions/030-simulator-user-model.md),
after RecSim (Ie et al., 2019: a
multinomial-logit choice with a no-click option, or a cascade of attention ×
score down the slate; a time budget that runs out) and KuaiSim (Zhao et al.,
2023: several behaviours per item, boredom from similar items in the list, a
temper that falls with poor items until the user leaves). The user scans the
served items in order; at position ``k``, while still in the session:

1. **Attention** (position bias, cascade scan): the item is examined with
   probability ``examine_decay ** k``; an unexamined item is only an
   impression.
2. **Match**: ``m = r · fatigue ** n`` where ``r`` ∈ [0, 1] is the user's
   relative affinity for the item (1 = their best item; 0 for a repeat or an
   item that does not exist yet) and ``n`` the number of earlier *examined*
   items of the same topic in this session (fatigue for similar items).
3. **Choice**: a multinomial logit over three options with temperature ``τ``:
   engage (utility ``m + quality_weight · (q − ½)``, ``q`` ∈ [0, 1] the
   item's quality — the world passes its popularity percentile, the appeal
   every user shares, as RecSim's document quality), pass — the no-click
   option — (utility ``no_click_utility``) and dislike (utility
   ``dislike_utility − m``). A
   click is followed by a watch of fraction
   ``clip(watch_base + watch_slope · m + watch_noise · N(0, 1), watch_min, 1)``
   of the item and by like / share / comment / follow / purchase with
   probability ``extras[j] · m`` each; a pass is a ``skip`` event; a dislike an
   explicit ``dislike`` event.
4. **Leaving when bored**: boredom ``b`` grows by ``1 − m`` after every
   examined item the user did not click (``+ dislike_boredom`` after a
   dislike) and is reset by a click; after a skip or a dislike the user leaves
   with probability ``1 − exp(−b / patience)`` and sees nothing further
   (no impression, no event).

All randomness comes in as uniforms ``u[S, K, N_UNIFORMS]`` (one row of draws
per position, :func:`draw_uniforms`), and each session only reads its own row,
so answering a batch of sessions gives exactly what answering each one alone
with the same row would: the world's one-session ``respond`` (events seeded by
the request id) and the vectorised simulations and Monte-Carlo values are the
same code. Invariant: no I/O, no global state; the same inputs give the same
:class:`Responses`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np
from scipy.special import ndtri

#: Event types that may follow a click, in the order of :attr:`ResponseConfig.extras`.
EXTRA_TYPES = ("like", "share", "comment", "follow", "purchase")
#: Uniforms per position: attention, choice, leaving, watch noise, one per extra type.
N_UNIFORMS = 4 + len(EXTRA_TYPES)
_U_EXAMINE, _U_CHOICE, _U_LEAVE, _U_WATCH, _U_EXTRA = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class ResponseConfig:
    """Parameters of the user response model (see the module docstring for each one's role).

    The defaults are the calibration of docs/decisions/030-simulator-user-model.md:
    a few percent of served items clicked under random or popularity sessions,
    several times more under each user's true best items.
    """

    examine_decay: float = 0.92     # attention at position k: examine_decay ** k
    temperature: float = 0.2        # τ of the logit choice (smaller: sharper)
    no_click_utility: float = 1.0   # utility of passing (the match is in [0, 1])
    quality_weight: float = 0.2     # utility of an item's quality q ∈ [0, 1], centred: quality_weight · (q − ½)
    dislike_utility: float = 0.3    # the dislike option's utility is dislike_utility − match
    fatigue: float = 0.8            # match factor per earlier examined same-topic item
    patience: float = 8.0           # boredom scale of leaving: P(leave) = 1 − exp(−boredom / patience)
    dislike_boredom: float = 1.0    # extra boredom of a dislike
    watch_base: float = 0.15        # watch fraction of a clicked item at match 0
    watch_slope: float = 0.85       # watch fraction added per unit of match
    watch_noise: float = 0.1        # standard deviation of the watch fraction's noise
    watch_min: float = 0.02         # smallest watch fraction of a click
    extras: tuple = (0.55, 0.15, 0.08, 0.04, 0.02)  # P(like, share, comment, follow, purchase | click) per unit match
    draws: int = 256                # Monte-Carlo draws per session of an expected value

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"ResponseConfig.{name}={getattr(self, name)!r} must be {want}")

        for name in ("examine_decay", "fatigue", "watch_min"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise bad(name, "in (0, 1]")
        for name in ("temperature", "patience"):
            if not getattr(self, name) > 0:
                raise bad(name, "> 0")
        for name in ("dislike_boredom", "watch_base", "watch_slope", "watch_noise", "quality_weight"):
            if not getattr(self, name) >= 0:
                raise bad(name, ">= 0")
        for name in ("no_click_utility", "dislike_utility"):
            if not np.isfinite(getattr(self, name)):
                raise bad(name, "a finite number")
        if (not isinstance(self.extras, (tuple, list)) or len(self.extras) != len(EXTRA_TYPES)
                or not all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in self.extras)):
            raise bad("extras", f"{len(EXTRA_TYPES)} probabilities in [0, 1], one per {EXTRA_TYPES}")
        if not isinstance(self.draws, (int, np.integer)) or self.draws < 1:
            raise bad("draws", "a positive int (Monte-Carlo draws per session)")
        object.__setattr__(self, "extras", tuple(float(p) for p in self.extras))

    @classmethod
    def of(cls, value: "ResponseConfig | Mapping | None") -> "ResponseConfig":
        """A config from a config, a mapping of its fields (YAML) or None (the defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            names = {f.name for f in fields(cls)}
            unknown = set(value) - names
            if unknown:
                raise ValueError(f"response config has unknown field(s) {sorted(unknown)}; "
                                 f"ResponseConfig takes {sorted(names)}")
            return cls(**dict(value))
        raise ValueError(f"response config must be a ResponseConfig or a mapping, got {type(value).__name__}")


@dataclass(frozen=True)
class Responses:
    """What the users did with ``S`` sessions of ``K`` slots (every array ``[S, K]`` unless noted)."""

    shown: np.ndarray       # bool: the slot holds an item (False: padding or an unknown item)
    reached: np.ndarray     # bool: the user was still in the session (an impression)
    examined: np.ndarray    # bool: the user looked at the item
    click: np.ndarray       # bool: engaged (a click and a watch)
    dislike: np.ndarray     # bool: an explicit dislike
    skip: np.ndarray        # bool: examined and passed (the no-click option)
    extras: np.ndarray      # bool [S, K, len(EXTRA_TYPES)]: like, share, … after a click
    watch_frac: np.ndarray  # float: watched share of the item (0 without a click)
    match: np.ndarray       # float: relative affinity × fatigue at the time the slot was reached
    left: np.ndarray        # bool [S]: the user left while shown items were still to come

    def counts(self) -> dict[str, np.ndarray]:
        """Events per session by type (``[S]`` floats): impression, click, watch, skip, dislike and the extras."""
        out = {"impression": self.reached.sum(1), "click": self.click.sum(1), "watch": self.click.sum(1),
               "skip": self.skip.sum(1), "dislike": self.dislike.sum(1)}
        for j, name in enumerate(EXTRA_TYPES):
            out[name] = self.extras[:, :, j].sum(1)
        return {k: v.astype(np.float64) for k, v in out.items()}

    def watch_ms(self, length_ms: np.ndarray) -> np.ndarray:
        """Watched milliseconds per slot (``[S, K]`` int64, 0 without a click) for item lengths ``[S, K]``."""
        return np.where(self.click, np.minimum(length_ms * self.watch_frac, 86_400_000), 0).astype(np.int64)


def draw_uniforms(rng: np.random.Generator, n_sessions: int, k: int) -> np.ndarray:
    """The randomness of ``n_sessions`` sessions of ``k`` slots: uniforms ``[S, K, N_UNIFORMS]``.

    Drawn position by position, so the draws of the first ``j`` slots do not depend on ``k``: sessions of
    different lengths answered from the same generator state meet the same draws where they overlap.
    """
    return rng.random((k, n_sessions, N_UNIFORMS)).transpose(1, 0, 2)


def choice_probabilities(cfg: ResponseConfig, match: np.ndarray, quality: np.ndarray | float = 0.5
                         ) -> tuple[np.ndarray, np.ndarray]:
    """``(P(click), P(dislike))`` of an examined item with ``match`` and ``quality`` (same shape, or a
    scalar quality): the three-way logit."""
    m = np.asarray(match, dtype=np.float64)
    v = m + cfg.quality_weight * (np.asarray(quality, dtype=np.float64) - 0.5)
    t = 1.0 / cfg.temperature
    top = np.maximum(np.maximum(v, cfg.no_click_utility), cfg.dislike_utility - m)  # for a stable softmax
    e_click = np.exp((v - top) * t)
    e_none = np.exp((cfg.no_click_utility - top) * t)
    e_dis = np.exp((cfg.dislike_utility - m - top) * t)
    total = e_click + e_none + e_dis
    return e_click / total, e_dis / total


def respond_arrays(cfg: ResponseConfig, rel: np.ndarray, topic: np.ndarray, shown: np.ndarray,
                   u: np.ndarray, quality: np.ndarray | None = None) -> Responses:
    """Answer ``S`` sessions of ``K`` slots at once (the model of the module docstring).

    ``rel`` ``[S, K]`` relative affinity in [0, 1] (0 for repeats and items
    that do not exist yet), ``topic`` ``[S, K]`` int (fatigue counts earlier
    examined items with the same value), ``shown`` ``[S, K]`` bool (False
    slots are skipped over: no impression, no draw used), ``u``
    ``[S, K, N_UNIFORMS]`` from :func:`draw_uniforms`, ``quality`` ``[S, K]``
    in [0, 1] (None: ½ everywhere, no effect). Position ``k`` is the column
    index.
    """
    rel = np.asarray(rel, dtype=np.float64)
    S, K = rel.shape
    if topic.shape != (S, K) or shown.shape != (S, K) or u.shape != (S, K, N_UNIFORMS):
        raise ValueError(f"respond_arrays: rel {rel.shape}, topic {topic.shape}, shown {shown.shape} must be "
                         f"[S, K] and u {u.shape} [S, K, {N_UNIFORMS}]")
    shown = np.asarray(shown, dtype=bool)
    quality = np.full((S, K), 0.5) if quality is None else np.asarray(quality, dtype=np.float64)
    if quality.shape != (S, K):
        raise ValueError(f"respond_arrays: quality {quality.shape} must be [S, K] = {(S, K)}")
    reached = np.zeros((S, K), dtype=bool)
    examined = np.zeros((S, K), dtype=bool)
    click = np.zeros((S, K), dtype=bool)
    dislike = np.zeros((S, K), dtype=bool)
    match = np.zeros((S, K))
    present = np.ones(S, dtype=bool)
    boredom = np.zeros(S)
    left = np.zeros(S, dtype=bool)
    later = np.flip(np.cumsum(np.flip(shown, 1), 1), 1) - shown  # [S, K] shown slots after this one
    extra_p = np.asarray(cfg.extras)
    for k in range(K):
        r = present & shown[:, k]
        reached[:, k] = r
        ex = r & (u[:, k, _U_EXAMINE] < cfg.examine_decay ** k)
        examined[:, k] = ex
        n_same = (examined[:, :k] & (topic[:, :k] == topic[:, k:k + 1])).sum(1)
        m = rel[:, k] * cfg.fatigue ** n_same
        match[:, k] = np.where(r, m, 0.0)
        p_click, p_dis = choice_probabilities(cfg, m, quality[:, k])
        c = u[:, k, _U_CHOICE]
        cl = ex & (c < p_click)
        di = ex & ~cl & (c < p_click + p_dis)
        click[:, k], dislike[:, k] = cl, di
        passed = ex & ~cl
        boredom = np.where(cl, 0.0, boredom + np.where(passed, 1.0 - m + di * cfg.dislike_boredom, 0.0))
        leave = passed & (u[:, k, _U_LEAVE] < -np.expm1(-boredom / cfg.patience))
        left |= leave & (later[:, k] > 0)
        present &= ~leave
    skip = examined & ~click & ~dislike
    noise = cfg.watch_noise * ndtri(np.clip(u[:, :, _U_WATCH], 1e-12, 1 - 1e-12))
    frac = np.clip(cfg.watch_base + cfg.watch_slope * match + noise, cfg.watch_min, 1.0)
    extras = click[:, :, None] & (u[:, :, _U_EXTRA:] < extra_p * match[:, :, None])
    return Responses(shown=shown, reached=reached, examined=examined, click=click, dislike=dislike, skip=skip,
                     extras=extras, watch_frac=np.where(click, frac, 0.0), match=match, left=left)


def session_rewards(counts: Mapping[str, np.ndarray], watch_ms: np.ndarray, weights: Mapping[str, float],
                    watch_cap_min: float) -> np.ndarray:
    """``Σ weights[type] · count(type) + min(watch minutes, cap)`` per session (``[S]``): the product's
    session reward (:func:`actors.reward_spec.scalar_reward` without duration awareness), vectorised.
    Types the model never emits (``rating``) count 0; ``watch_ms`` is the session's total ``[S]``."""
    r = np.zeros(np.shape(watch_ms), dtype=np.float64)
    for etype, w in sorted(weights.items()):
        c = counts.get(etype)
        if c is not None:
            r = r + float(w) * c
    return r + np.minimum(np.asarray(watch_ms, dtype=np.float64) / 60_000.0, watch_cap_min)
