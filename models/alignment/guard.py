"""The narrowing guard of a round: keep the last checkpoint whose held-out NDCG@10 stays within a bound.

Preference optimisation narrows the candidate list (MiniOneRec's GRPO raised HR@1 while HR@50 and test
NDCG fell; issue 16 asks for the aligned model's NDCG@10 to stay within 2 % of its parent's, the
gate's ``max_ndcg_drop``). A round snapshots the policy every ``guard_every`` steps
(:func:`is_checkpoint`); :func:`keep_checkpoint` walks the snapshots from the last one back and keeps
the first whose NDCG@10 on held-out users is at least ``(1 − max_drop)`` × the parent's — the
most-trained policy that still holds (early stopping on a held-out metric, without stopping the
data-parallel workers, which must all take the same steps).

Invariant: the kept step is one of the offered steps, or 0 (no snapshot held: the round must not
publish). Pure: NDCG values in, a :class:`GuardResult` out; the
evaluation that feeds it is :func:`actors.aligner.guard_ndcg`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass(frozen=True)
class GuardResult:
    """What the guard saw and kept: ``kept_step`` (0 = none held), the parent's NDCG@10 and the bound,
    ``checked``: (step, NDCG@10) of every snapshot evaluated, newest first."""

    parent_ndcg: float
    bound: float
    kept_step: int
    kept_ndcg: float
    n_users: int
    checked: tuple[tuple[int, float], ...] = field(default_factory=tuple)

    @property
    def held(self) -> bool:
        return self.kept_step > 0

    def to_dict(self) -> dict:
        return {"parent_ndcg": self.parent_ndcg, "bound": self.bound, "kept_step": self.kept_step,
                "kept_ndcg": self.kept_ndcg, "n_users": self.n_users,
                "checked": [[int(s), float(v)] for s, v in self.checked]}


def is_checkpoint(step: int, steps: int, every: int) -> bool:
    """Whether the policy after ``step`` optimizer steps (1-based) of ``steps`` is snapshotted: every
    ``every``-th step and always the last (``every`` 0: only the last)."""
    return step == steps or (every > 0 and step % every == 0)


def keep_checkpoint(parent_ndcg: float, steps: Sequence[int], ndcg_at: Callable[[int], float], max_drop: float,
                    n_users: int = 0) -> GuardResult:
    """Walk ``steps`` from the last back, evaluating ``ndcg_at(step)`` lazily, and keep the first whose
    NDCG@10 >= ``parent_ndcg * (1 − max_drop)`` (only as many evaluations as needed)."""
    if not 0.0 <= max_drop < 1.0:
        raise ValueError(f"max_drop={max_drop} must be in [0, 1), e.g. 0.02 (the gate's max_ndcg_drop)")
    if not math.isfinite(parent_ndcg):
        raise ValueError(f"parent NDCG@10 {parent_ndcg} is not finite; the guard needs held-out users")
    bound = parent_ndcg * (1.0 - max_drop)
    checked: list[tuple[int, float]] = []
    for s in sorted(set(int(x) for x in steps), reverse=True):
        v = float(ndcg_at(s))
        checked.append((s, v))
        if v >= bound:
            return GuardResult(parent_ndcg, bound, s, v, n_users, tuple(checked))
    return GuardResult(parent_ndcg, bound, 0, parent_ndcg, n_users, tuple(checked))
