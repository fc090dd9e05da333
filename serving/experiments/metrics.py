"""What the A/B report measures: reward components, per-user sums and the ratio metrics over them.

A **reward record** (topic ``rewards``, :class:`ingest.contract.Reward`) is one
served session with its feedback joined; its ``components`` map holds the
counts named in :data:`REWARD_COMPONENTS`. The analysis unit is the **user**
(the unit of randomisation): each user's records are summed into the columns
of :data:`USER_COLUMNS`, and every metric is a *ratio of per-user sums*
(numerator / denominator, e.g. engaged items / items served), analysed with
the delta method (Deng et al., "Applying the Delta Method in Metric
Analytics", KDD 2018). Invariant: a metric's numerator and denominator are
columns of the same per-user table, so sessions of one user never count as
independent observations.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Keys of ``Reward.components`` (counts per session; ``watch_fraction`` is optional). ``engaged`` is the
#: number of distinct served items with an engaged event (the reward joiners write the same key),
#: ``events`` every feedback event of the session.
#: The positions of the engaged items do not fit the contract's ``map<string, double>`` and are not carried.
REWARD_COMPONENTS = ("impressions", "clicks", "likes", "shares", "comments", "follows", "purchases", "skips",
                     "dislikes", "watch_ms", "watch_fraction", "engaged", "events")

#: Per-user sums the metrics are built from (``new_impressions`` only when served records and the set of
#: new items are given; ``feedback`` counts sessions with at least one event).
USER_COLUMNS = ("sessions", "impressions", "engaged", "reward", "watch_ms", "feedback", "dislikes", "skips",
                "new_impressions")


@dataclass(frozen=True)
class Metric:
    """A ratio metric: sum of ``numerator`` over sum of ``denominator`` per user; ``higher_is_better``."""

    name: str
    numerator: str
    denominator: str
    higher_is_better: bool = True
    label: str = ""

    def __post_init__(self) -> None:
        for col in (self.numerator, self.denominator):
            if col not in USER_COLUMNS:
                raise ValueError(f"Metric {self.name!r}: column {col!r} is not one of {USER_COLUMNS}")


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("ctr", "engaged", "impressions", True, "engaged items / items served"),
    Metric("mean_reward", "reward", "sessions", True, "reward per session"),
    Metric("watch_ms", "watch_ms", "sessions", True, "watch ms per session"),
    Metric("feedback_rate", "feedback", "sessions", True, "sessions with feedback / sessions"),
    Metric("dislike_rate", "dislikes", "impressions", False, "dislikes / items served"),
    Metric("skip_rate", "skips", "impressions", False, "skips / items served"),
    Metric("new_item_share", "new_impressions", "impressions", True, "new items served / items served"),
)}

#: Arm-level guardrails (no per-user ratio): where higher is worse.
ARM_LEVEL_HIGHER_IS_WORSE = {"p99_latency_ms": True, "catalog_coverage": False}
