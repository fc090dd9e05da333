"""The A/B report of one experiment: per-arm outcomes, confidence intervals, tests, SRM, plot.

Until the reward joiner lands, outcomes are joined here directly: every
``served`` record of the experiment is a *session* (the exposure), and every
``user-events`` record whose ``request_id`` names it is feedback on that
session. Per session we compute

* ``ctr``          — distinct served items with an engaged event / items served,
* ``mean_reward``  — the scalar session reward (:data:`REWARD_WEIGHTS`, watch
  time in minutes, capped), the same shape as the ``rewards`` topic's scalar,
* ``watch_ms``     — total watch time,
* ``feedback_rate``— 1 if the session got any event at all.

Per arm: exposures (sessions), unique users, sessions with feedback, and the
mean of each metric with a 95 % Student-t confidence interval. Against the
control arm: the difference, its Welch–Satterthwaite 95 % CI and the Welch
t-test p-value (Welch, Biometrika 1947). The sample-ratio-mismatch check is a
chi-square goodness-of-fit test of unique users per arm against the
configured weights (Fabijan et al., "Diagnosing Sample Ratio Mismatch in
Online Controlled Experiments", KDD 2019); p < 0.001 flags an SRM, and then
no other number of the report should be trusted.

Sources: records passed in (tests, the demo), Kafka (:func:`read_kafka`, both
topics from the beginning) or the Parquet archive (:func:`read_archive`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ingest.contract import ENGAGED_TYPES, SERVED, USER_EVENTS, Served, UserEvent
from serving.experiments import Experiment, split_assignments

#: Scalar reward of a session: weight per event type, plus watch minutes (capped at WATCH_CAP_MIN).
REWARD_WEIGHTS = {"click": 1.0, "like": 2.0, "share": 3.0, "comment": 2.0, "follow": 3.0,
                  "purchase": 5.0, "rating": 0.5, "skip": -0.5, "dislike": -1.0}
WATCH_CAP_MIN = 10.0
METRICS = ("ctr", "mean_reward", "watch_ms", "feedback_rate")
SRM_ALPHA = 0.001


@dataclass
class SessionOutcome:
    """What came back for one served session."""

    user_id: str
    arm: str
    n_items: int
    engaged_items: set = field(default_factory=set)
    reward: float = 0.0
    watch_ms: float = 0.0
    events: int = 0


def session_reward(events: Iterable[UserEvent]) -> float:
    """The scalar reward of a session's events (see :data:`REWARD_WEIGHTS`)."""
    r, watch = 0.0, 0.0
    for e in events:
        r += REWARD_WEIGHTS.get(e.type, 0.0)
        if e.watch_ms:
            watch += e.watch_ms
    return r + min(watch / 60_000.0, WATCH_CAP_MIN)


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t confidence interval (``nan`` bounds for fewer than 2 values)."""
    from scipy import stats

    n = len(x)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(np.mean(x))
    if n < 2:
        return m, float("nan"), float("nan")
    se = float(np.std(x, ddof=1)) / math.sqrt(n)
    h = float(stats.t.ppf(0.5 + level / 2, n - 1)) * se
    return m, m - h, m + h


def welch(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict:
    """Welch's t-test of mean(a) − mean(b) with its Welch–Satterthwaite confidence interval."""
    from scipy import stats

    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "p_value": float("nan"), "relative": float("nan")}
    va, vb = float(np.var(a, ddof=1)) / na, float(np.var(b, ddof=1)) / nb
    diff = float(np.mean(a) - np.mean(b))
    se = math.sqrt(va + vb)
    if se == 0:
        p, h = (1.0 if diff == 0 else 0.0), 0.0
    else:
        df = (va + vb) ** 2 / ((va ** 2) / (na - 1) + (vb ** 2) / (nb - 1))
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        h = float(stats.t.ppf(0.5 + level / 2, df)) * se
    base = float(np.mean(b))
    return {"diff": diff, "ci_low": diff - h, "ci_high": diff + h, "p_value": p,
            "relative": diff / base if base else float("nan")}


def srm_check(observed: dict[str, int], weights: dict[str, float], alpha: float = SRM_ALPHA) -> dict:
    """Chi-square test of observed counts per arm against expected traffic weights."""
    from scipy import stats

    arms = list(weights)
    obs = np.array([observed.get(a, 0) for a in arms], dtype=float)
    total = obs.sum()
    if total == 0 or len(arms) < 2:
        return {"chi2": 0.0, "p_value": 1.0, "srm": False, "observed": dict(observed),
                "expected": {a: 0.0 for a in arms}}
    w = np.array([weights[a] for a in arms], dtype=float)
    exp = total * w / w.sum()
    chi2, p = stats.chisquare(obs, exp)
    return {"chi2": float(chi2), "p_value": float(p), "srm": bool(p < alpha),
            "observed": {a: int(o) for a, o in zip(arms, obs)},
            "expected": {a: float(e) for a, e in zip(arms, exp)}}


def build_report(experiment: Experiment, served: Iterable[Served], events: Iterable[UserEvent],
                 plot_path: str | Path | None = None) -> dict:
    """The report of ``experiment`` from its exposures (``served``) and feedback (``events``)."""
    sessions: dict[str, SessionOutcome] = {}
    for s in served:
        arm = split_assignments(s.experiment, s.arm).get(experiment.name)
        if arm is None:
            continue
        sessions[s.request_id] = SessionOutcome(s.user_id, arm, max(1, len(s.items)))
    by_req: dict[str, list[UserEvent]] = defaultdict(list)
    for e in events:
        if e.request_id is not None and e.request_id in sessions:
            by_req[e.request_id].append(e)
    for rid, evs in by_req.items():
        o = sessions[rid]
        o.events = len(evs)
        o.engaged_items = {e.item_id for e in evs if e.type in ENGAGED_TYPES}
        o.reward = session_reward(evs)
        o.watch_ms = float(sum(e.watch_ms or 0 for e in evs))

    arm_names = [a.name for a in experiment.arms]
    cols: dict[str, dict[str, list[float]]] = {a: {m: [] for m in METRICS} for a in arm_names}
    users: dict[str, set] = {a: set() for a in arm_names}
    for o in sessions.values():
        if o.arm not in cols:  # an arm removed from the config since: reported apart
            cols[o.arm] = {m: [] for m in METRICS}
            users[o.arm] = set()
        c = cols[o.arm]
        c["ctr"].append(len(o.engaged_items) / o.n_items)
        c["mean_reward"].append(o.reward)
        c["watch_ms"].append(o.watch_ms)
        c["feedback_rate"].append(1.0 if o.events else 0.0)
        users[o.arm].add(o.user_id)

    arrays = {a: {m: np.asarray(v, dtype=float) for m, v in c.items()} for a, c in cols.items()}
    control = experiment.control
    arms_out = {}
    for a, c in arrays.items():
        row = {"exposures": int(len(c["ctr"])), "users": len(users[a]),
               "sessions_with_feedback": int(c["feedback_rate"].sum()) if len(c["ctr"]) else 0,
               "is_control": a == control, "metrics": {}}
        for m in METRICS:
            mean, lo, hi = mean_ci(c[m])
            row["metrics"][m] = {"mean": mean, "ci_low": lo, "ci_high": hi}
            if a != control and control in arrays:
                row["metrics"][m]["vs_control"] = welch(c[m], arrays[control][m])
        arms_out[a] = row

    guard = []
    for g in experiment.guardrails:
        for a, row in arms_out.items():
            if a == control or "vs_control" not in row["metrics"][g.metric]:
                continue
            w = row["metrics"][g.metric]["vs_control"]
            breached = (not math.isnan(w["relative"]) and w["relative"] < -g.max_relative_drop
                        and w["p_value"] < g.alpha)
            guard.append({"metric": g.metric, "arm": a, "relative": w["relative"], "p_value": w["p_value"],
                          "max_relative_drop": g.max_relative_drop, "ok": not breached})

    report = {
        "experiment": experiment.name, "control": control, "weights": experiment.weights(),
        "arms": arms_out,
        "srm": srm_check({a: len(users[a]) for a in arm_names}, experiment.weights()),
        "guardrails": guard,
        "sessions": len(sessions),
    }
    if plot_path is not None:
        report["plot"] = str(plot_report(report, plot_path))
    return _json_safe(report)


def _json_safe(obj):
    """NaN/inf → None so the report is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def plot_report(report: dict, path: str | Path) -> Path:
    """Bar chart per metric with 95 % CIs per arm (matplotlib Agg), written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arms = list(report["arms"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.2))
    for ax, m in zip(axes, METRICS):
        means = [report["arms"][a]["metrics"][m]["mean"] for a in arms]
        lo = [report["arms"][a]["metrics"][m]["ci_low"] for a in arms]
        hi = [report["arms"][a]["metrics"][m]["ci_high"] for a in arms]
        means_f = [0.0 if not _finite(v) else v for v in means]
        err = [[max(0.0, mu - l) if _finite(l) and _finite(mu) else 0.0 for mu, l in zip(means, lo)],
               [max(0.0, h - mu) if _finite(h) and _finite(mu) else 0.0 for mu, h in zip(means, hi)]]
        colors = ["#555555" if report["arms"][a]["is_control"] else "#1f77b4" for a in arms]
        ax.bar(arms, means_f, yerr=err, capsize=4, color=colors)
        ax.set_title(m)
    srm = report["srm"]
    fig.suptitle(f"{report['experiment']}: 95% CIs (control grey)"
                 f"{'  SRM!' if srm.get('srm') else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def markdown(report: dict) -> str:
    """A readable table of a report (the demo prints it)."""
    lines = [f"experiment `{report['experiment']}` (control `{report['control']}`), "
             f"{report['sessions']} sessions; SRM p={_f(report['srm']['p_value'])}"
             f"{' — SAMPLE RATIO MISMATCH' if report['srm']['srm'] else ' (ok)'}", "",
             "| arm | sessions | users | w/ feedback | CTR [95% CI] | reward [95% CI] | watch s | "
             "Δ CTR vs control (p) | Δ reward (p) |", "|---|---|---|---|---|---|---|---|---|"]
    for a, r in report["arms"].items():
        m = r["metrics"]

        def ci(k, scale=1.0):
            v = m[k]
            if v["mean"] is None:
                return "-"
            lo = "-" if v["ci_low"] is None else f"{v['ci_low'] * scale:.3f}"
            hi = "-" if v["ci_high"] is None else f"{v['ci_high'] * scale:.3f}"
            return f"{v['mean'] * scale:.3f} [{lo}, {hi}]"

        def vs(k):
            w = m[k].get("vs_control")
            if not w or w["diff"] is None:
                return "control" if r["is_control"] else "-"
            return f"{w['diff']:+.3f} (p={_f(w['p_value'])})"

        watch = m["watch_ms"]["mean"]
        lines.append(f"| {a} | {r['exposures']} | {r['users']} | {r['sessions_with_feedback']} | {ci('ctr')} | "
                     f"{ci('mean_reward')} | {'-' if watch is None else f'{watch / 1000:.1f}'} | "
                     f"{vs('ctr')} | {vs('mean_reward')} |")
    for g in report.get("guardrails", []):
        lines.append(f"\nguardrail {g['metric']} on {g['arm']}: {'ok' if g['ok'] else 'BREACHED'} "
                     f"(relative {_f(g['relative'])}, p={_f(g['p_value'])})")
    return "\n".join(lines)


def _f(v) -> str:
    return "-" if v is None else f"{v:.3g}"


# ---- sources ---------------------------------------------------------------------------------

def read_kafka(kafka, timeout_s: float = 30.0) -> tuple[list[Served], list[UserEvent]]:
    """All ``served`` and ``user-events`` records now on Kafka (read from the beginning, no group)."""
    from ingest.consumer_loop import ConsumerConfig, ContractConsumer

    out: dict[str, list] = {SERVED: [], USER_EVENTS: []}
    for topic in (SERVED, USER_EVENTS):
        with ContractConsumer(kafka, topic, config=ConsumerConfig(poll_timeout_ms=100)) as c:
            ends = c.end_offsets()
            for b in c.drain(until_empty_polls=2, timeout_s=timeout_s):
                out[topic].extend(b.records())
                if all(c.positions().get(p, 0) >= e for p, e in ends.items()):
                    break
    return out[SERVED], out[USER_EVENTS]


def read_archive(root: str | Path) -> tuple[list[Served], list[UserEvent]]:
    """``served`` and ``user-events`` from the Parquet archive (hive-partitioned by topic and date)."""
    import pyarrow.dataset as ds

    from ingest.codec import decode_dict

    out: dict[str, list] = {SERVED: [], USER_EVENTS: []}
    root = Path(root)
    for topic in (SERVED, USER_EVENTS):
        d = root / f"topic={topic}"
        if not d.exists():
            continue
        table = ds.dataset(str(d), format="parquet", partitioning="hive").to_table()
        fields = set(Served.__struct_fields__ if topic == SERVED else UserEvent.__struct_fields__)
        for row in table.to_pylist():
            out[topic].append(decode_dict(topic, {k: v for k, v in row.items() if k in fields and v is not None}))
    return out[SERVED], out[USER_EVENTS]
