"""Per-user aggregates of one experiment: the analysis unit is the randomisation unit (the user).

:func:`user_table` sums each user's reward records (one per served session)
into the columns of :data:`serving.experiments.metrics.USER_COLUMNS`, one row
per user, with the user's arm and first exposure time. Invariant: a user is
counted in exactly one arm; a user whose records name several arms of the
experiment (the salt or the weights changed mid-experiment) is dropped from
every arm and listed in ``conflicts``, because neither arm's treatment is what
they saw. :func:`pre_period_sums` builds the same sums from pre-exposure
records: the CUPED covariates (Deng et al., WSDM 2013).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from ingest.contract import Reward, Served
from serving.experiments.config import split_assignments
from serving.experiments.metrics import USER_COLUMNS


@dataclass(frozen=True)
class UserTable:
    """One row per user of an experiment: ``users``, ``arm``, ``first_ts`` and one array per column."""

    users: np.ndarray                      # str, user ids
    arm: np.ndarray                        # str, the arm of each user
    first_ts: np.ndarray                   # int64, first exposure (ms)
    cols: dict[str, np.ndarray]            # column name → float64 per user
    conflicts: tuple[str, ...] = ()        # users seen in several arms (dropped)
    sessions_by_arm: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask: np.ndarray) -> "UserTable":
        """The rows where ``mask`` is true (conflicts and session counts recomputed on them)."""
        cols = {k: v[mask] for k, v in self.cols.items()}
        arms = self.arm[mask]
        by_arm = {a: int(cols["sessions"][arms == a].sum()) for a in np.unique(arms)}
        return UserTable(self.users[mask], arms, self.first_ts[mask], cols, self.conflicts, by_arm)


def reward_sums(r: Reward, new_impressions: float = 0.0) -> tuple[float, ...]:
    """What one reward record adds to its user's columns (aligned with ``USER_COLUMNS``)."""
    c = r.components
    engaged = c.get("engaged", 0.0)
    vals = {"sessions": 1.0, "impressions": c.get("impressions", 0.0), "engaged": engaged,
            "reward": r.reward, "watch_ms": c.get("watch_ms", 0.0),
            "feedback": 1.0 if c.get("events", 0.0) > 0 else 0.0, "dislikes": c.get("dislikes", 0.0),
            "skips": c.get("skips", 0.0), "new_impressions": float(new_impressions)}
    return tuple(vals[k] for k in USER_COLUMNS)


def user_table(experiment: str, rewards: Iterable[Reward], until_ts: int | None = None,
               new_impressions: Mapping[str, int] | None = None) -> UserTable:
    """Sum the reward records of ``experiment`` per user (records served after ``until_ts`` ignored).

    ``new_impressions`` maps a ``request_id`` to the number of new items its
    session showed (from the served records); absent sessions count 0.
    """
    idx: dict[str, int] = {}
    arms: list[str] = []
    first: list[int] = []
    rows: list[list[float]] = []
    multi: set[str] = set()
    ci = {c: i for i, c in enumerate(USER_COLUMNS)}
    width = len(USER_COLUMNS)
    for r in rewards:
        arm = split_assignments(r.experiment, r.arm).get(experiment)
        if arm is None or (until_ts is not None and r.ts > until_ts):
            continue
        i = idx.get(r.user_id)
        if i is None:
            i = idx[r.user_id] = len(arms)
            arms.append(arm)
            first.append(r.ts)
            rows.append([0.0] * len(USER_COLUMNS))
        elif arms[i] != arm:
            multi.add(r.user_id)
        first[i] = min(first[i], r.ts)
        row = rows[i]
        add = reward_sums(r, new_impressions.get(r.request_id, 0) if new_impressions else 0.0)
        for j in range(width):
            row[j] += add[j]
    users = np.array(list(idx), dtype=object)
    mat = np.array(rows, dtype=float).reshape(len(users), len(USER_COLUMNS))
    keep = np.array([u not in multi for u in idx], dtype=bool)
    arm_arr = np.array(arms, dtype=object)
    cols = {c: mat[keep, i] for c, i in ci.items()}
    kept_arms = arm_arr[keep]
    by_arm = {a: int(cols["sessions"][kept_arms == a].sum()) for a in dict.fromkeys(kept_arms)}
    return UserTable(users[keep], kept_arms, np.array(first, dtype=np.int64)[keep], cols,
                     tuple(sorted(multi)), by_arm)


def pre_period_sums(rewards: Iterable[Reward]) -> dict[str, dict[str, float]]:
    """Per-user sums of pre-exposure reward records (any experiment): user → column → sum."""
    out: dict[str, dict[str, float]] = {}
    for r in rewards:
        d = out.setdefault(r.user_id, {c: 0.0 for c in USER_COLUMNS})
        for k, v in zip(USER_COLUMNS, reward_sums(r)):
            d[k] += v
    return out


def covariate_columns(table: UserTable, pre: Mapping[str, Mapping[str, float]]) -> dict[str, np.ndarray]:
    """The pre-period sums aligned with ``table``'s users (0 for a user without pre-period data)."""
    out = {c: np.zeros(len(table)) for c in USER_COLUMNS}
    for i, u in enumerate(table.users):
        d = pre.get(u)
        if d:
            for c in USER_COLUMNS:
                out[c][i] = float(d.get(c, 0.0))
    return out


def new_impressions_by_request(served: Iterable[Served], new_items: set[str] | frozenset[str]) -> dict[str, int]:
    """``request_id`` → how many of its served items are in ``new_items``."""
    return {s.request_id: sum(1 for it in s.items if it in new_items) for s in served}
