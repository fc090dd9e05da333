"""Training signal from scored sessions: DPO pairs (OneRec IPA) and ±1 advantages (OneRec-V2).

* :func:`select_pairs` — per user, the best of N candidate sessions is *chosen* and the worst (or a
  random one of the ``bottom_k`` worst, more robust to false negatives) *rejected*: OneRec's
  "self-hard negatives". Users whose candidates all score the same teach nothing and are skipped.
* :func:`feedback_advantages` — the alternative to a reward model: served sessions' real rewards,
  A = +1 above the user's own mean reward, −1 below it (and on an explicit dislike), 0 otherwise
  (dropped), as OneRec-V2 (arXiv 2508.20900) replaced the reward model by real feedback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pairs:
    """Chosen / rejected candidates of P users (indices into the [U, N] candidate grid)."""

    user: np.ndarray      # [P] int64 row of the user
    chosen: np.ndarray    # [P] int64 candidate index of the best session
    rejected: np.ndarray  # [P] int64 candidate index of the rejected session
    gap: np.ndarray       # [P] float64 score(chosen) − score(rejected), > min_gap

    def __len__(self) -> int:
        return len(self.user)


def select_pairs(scores: np.ndarray, valid: np.ndarray | None = None, *, bottom_k: int = 1,
                 min_gap: float = 1e-6, keep_share: float = 1.0, rng: np.random.Generator | None = None) -> Pairs:
    """Pairs from ``scores`` [U, N] (higher = better); ``valid`` [U, N] bool candidates that may be used
    (default: finite scores). ``bottom_k`` = 1 takes the worst; k > 1 a uniform draw from the k worst
    valid candidates that score below ``best − min_gap``. A user is skipped when fewer than two valid
    candidates remain or best − worst ≤ ``min_gap`` (a tie). Ties for best go to the lower index (the
    more likely beam). ``keep_share`` < 1 keeps only that share of the pairs (at least one), those with the
    largest gap relative to the user's mean score: the pairs the scorer is surest of (decision 037);
    the pairs stay in user order."""
    if not 0.0 < keep_share <= 1.0:
        raise ValueError(f"keep_share={keep_share} must be in (0, 1], e.g. 0.5 (the half of the pairs with the "
                         "largest relative score gap)")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [U, N], got shape {scores.shape}")
    if bottom_k < 1:
        raise ValueError(f"bottom_k={bottom_k} must be >= 1")
    ok = np.isfinite(scores) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(scores))
    if ok.shape != scores.shape:
        raise ValueError(f"valid must be [U, N]={scores.shape}, got {ok.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    users, chosen, rejected, gaps = [], [], [], []
    for u in range(scores.shape[0]):
        idx = np.flatnonzero(ok[u])
        if len(idx) < 2:
            continue
        s = scores[u, idx]
        best = int(idx[np.argmax(s)])                       # first maximum: the lowest index
        top = scores[u, best]
        below = idx[s < top - min_gap]
        if not len(below):
            continue                                        # best and worst tie
        order = below[np.argsort(scores[u, below], kind="stable")]
        pool = order[:bottom_k]
        rej = int(pool[0] if len(pool) == 1 else pool[rng.integers(len(pool))])
        users.append(u)
        chosen.append(best)
        rejected.append(rej)
        gaps.append(top - scores[u, rej])
    as_i = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    out = Pairs(as_i(users), as_i(chosen), as_i(rejected), np.asarray(gaps, dtype=np.float64))
    if keep_share < 1.0 and len(out):
        # relative gap: a user with large values gets large absolute gaps for the same confidence
        scale = np.array([abs(np.mean(scores[u, ok[u]])) for u in out.user]) + 1e-9
        rel = out.gap / scale
        n = max(1, int(np.ceil(keep_share * len(out))))
        top = np.sort(np.argsort(-rel, kind="stable")[:n])
        out = Pairs(out.user[top], out.chosen[top], out.rejected[top], out.gap[top])
    return out


def feedback_advantages(users: np.ndarray, rewards: np.ndarray, disliked: np.ndarray | None = None,
                        tol: float = 1e-9) -> np.ndarray:
    """±1 advantages of M served sessions from their real rewards: int8 [M].

    ``users`` [M] the user of each session (any hashable ids), ``rewards`` [M] its scalar reward,
    ``disliked`` [M] bool (optional) sessions with an explicit dislike. A = +1 when the reward is above
    the user's own mean by more than ``tol``, −1 when below (or disliked), 0 otherwise — so a user with a
    single session, or equal rewards everywhere, contributes nothing (no signal without a comparison).
    """
    users = np.asarray(users)
    r = np.asarray(rewards, dtype=np.float64)
    if users.shape != r.shape or r.ndim != 1:
        raise ValueError(f"users and rewards must be [M] of one length, got {users.shape} and {r.shape}")
    _, inv = np.unique(users, return_inverse=True)
    inv = inv.reshape(-1)
    mean = np.bincount(inv, weights=r) / np.maximum(np.bincount(inv), 1)
    d = r - mean[inv]
    adv = np.where(d > tol, 1, np.where(d < -tol, -1, 0)).astype(np.int8)
    if disliked is not None:
        adv = np.where(np.asarray(disliked, dtype=bool), np.int8(-1), adv).astype(np.int8)
    return adv
