"""When may an A/B arm's model become the default? The rule of automatic promotion (pure, no I/O).

Issue 16, part 4: promotion to default is an admin call, or automatic when the sequential A/B test says
so (opt-in). :func:`decide_promotion` reads one experiment report
(:func:`serving.experiments.report.build_reward_report`) and says whether ``arm`` has won, with every
reason. The arm is promoted only when **all** of these hold:

* the experiment's analysis is **sequential** (always-valid p-values, Howard et al. 2021): a report that
  is read again and again until it says "promote" is peeking, and only an always-valid test stays valid
  under it (:mod:`serving.experiments.sequential`);
* every **primary** metric is significant for the arm after the report's multiple-comparison correction,
  in its good direction (``higher_is_better``), and the arm has at least ``min_users`` users;
* no **guardrail** of the arm is breached, and (``require_guardrail_data``) none is "unavailable" — a
  guardrail whose data was not read is not a passed one; "not testable" (read, but no variance: every user
  the same, so no harm to detect) does not block and is named among the reasons;
* no **sample ratio mismatch** (a broken assignment makes every comparison untrustworthy).

Invariant: a decision never promotes on a metric it could not read; missing data is a reason to wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from serving.experiments.metrics import METRICS


@dataclass(frozen=True)
class PromotionRule:
    """What an arm must show before it is promoted automatically.

    ``min_users``: users the arm needs before any decision (an early lucky streak is not a win even with an
    always-valid test: small samples also hide guardrail harm). ``require_guardrail_data``: a guardrail
    whose data the report did not have ("unavailable") blocks promotion (off: only a breach blocks).
    """

    min_users: int = 200
    require_guardrail_data: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.min_users, bool) or not isinstance(self.min_users, int) or self.min_users < 1:
            raise ValueError(f"PromotionRule.min_users={self.min_users!r} must be a positive int, e.g. 200")


@dataclass(frozen=True)
class PromotionDecision:
    """The verdict for one arm: ``promote`` and why (each reason one line, in the order checked)."""

    experiment: str
    arm: str
    promote: bool
    reasons: tuple[str, ...] = ()
    evidence: dict = field(default_factory=dict, hash=False)   # metric -> {diff, p_adjusted, significant}

    def summary(self) -> str:
        head = f"{self.experiment}/{self.arm}: " + ("PROMOTE" if self.promote else "wait")
        return head + "".join(f"\n  - {r}" for r in self.reasons)


def decide_promotion(report: Mapping, arm: str, rule: PromotionRule = PromotionRule()) -> PromotionDecision:
    """Whether ``arm`` of the experiment in ``report`` has won (see the module docstring)."""
    exp = str(report.get("experiment", "?"))
    blocks: list[str] = []
    passes: list[str] = []
    evidence: dict = {}
    arms = report.get("arms") or {}
    analysis = report.get("analysis") or {}
    if arm not in arms:
        return PromotionDecision(exp, arm, False, (f"arm {arm!r} is not in the report (arms: {sorted(arms)})",))
    if arm == report.get("control"):
        return PromotionDecision(exp, arm, False, (f"arm {arm!r} is the control: nothing to promote over",))
    if not analysis.get("sequential"):
        blocks.append("the experiment's analysis is not sequential (analysis.sequential: false): a fixed-horizon "
                      "p-value read until it wins is peeking; turn sequential on to allow automatic promotion")
    users = int(arms[arm].get("users", 0))
    control_users = int((arms.get(report.get("control")) or {}).get("users", 0))
    if min(users, control_users) < rule.min_users:
        blocks.append(f"too few users: arm {users}, control {control_users} (min_users {rule.min_users})")
    srm = report.get("srm") or {}
    if srm.get("srm"):
        blocks.append(f"sample ratio mismatch (p {srm.get('p_value')}): the assignment is broken, no decision")
    metrics = arms[arm].get("metrics") or {}
    for m in analysis.get("primary") or ():
        cmp = (metrics.get(m) or {}).get("vs_control")
        if not cmp:
            blocks.append(f"primary metric {m}: no comparison with the control in the report")
            continue
        higher = METRICS[m].higher_is_better if m in METRICS else True
        diff = cmp.get("diff")
        evidence[m] = {"diff": diff, "p_adjusted": cmp.get("p_adjusted"), "significant": cmp.get("significant")}
        good = diff is not None and (diff > 0 if higher else diff < 0)
        if cmp.get("significant") and good:
            passes.append(f"primary {m}: significant and better (diff {diff:+.4g}, adjusted p {cmp.get('p_adjusted'):.3g})")
        elif cmp.get("significant"):
            blocks.append(f"primary {m}: significantly WORSE (diff {diff:+.4g})")
        else:
            p = cmp.get("p_adjusted")
            blocks.append(f"primary {m}: not significant yet (diff {diff if diff is None else f'{diff:+.4g}'}, "
                          f"adjusted p {p if p is None else f'{p:.3g}'})")
    if not analysis.get("primary"):
        blocks.append("the report names no primary metric")
    for g in report.get("guardrails") or ():
        if g.get("arm") != arm:
            continue
        status = g.get("status")
        if status == "breached":
            blocks.append(f"guardrail {g.get('metric')} breached")
        elif status == "unavailable" and rule.require_guardrail_data:
            blocks.append(f"guardrail {g.get('metric')} could not be checked ({g.get('note')})")
        elif status != "ok":
            passes.append(f"guardrail {g.get('metric')}: {status} ({g.get('note')})")
    promote = not blocks
    return PromotionDecision(exp, arm, promote, tuple(blocks if blocks else passes), evidence)
