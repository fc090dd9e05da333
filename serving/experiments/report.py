"""The A/B report of one experiment: user-level tests on reward records, CUPED, sequential bounds, SRM, plots.

Input: **reward records** (topic ``rewards``, one per served session,
:class:`ingest.contract.Reward`). Users are the unit of randomisation, so they
are the unit of analysis: each user's sessions are summed
(:mod:`serving.experiments.units`) and every metric is a ratio of per-user sums
tested with the delta method (Deng et al., KDD 2018) — never sessions as if
they were independent, which makes intervals too narrow. Per experiment (its
``analysis:`` settings, :class:`serving.experiments.config.Analysis`):

* CUPED with each user's pre-exposure sums (Deng et al., WSDM 2013), with
  the variance reduction per metric;
* always-valid confidence sequences beside the fixed-horizon intervals when
  ``sequential`` (Howard et al. 2021, normal mixture), and always-valid p-values;
* Holm or Benjamini–Hochberg over arms × (primary + secondary) metrics;
* guardrails one-sided and uncorrected (:mod:`serving.experiments.guardrails`);
* SRM overall and per day at p < 0.001 (:mod:`serving.experiments.srm`);
* a forest plot and the cumulative lift over time (:mod:`serving.experiments.plots`).

Bad input (an empty arm, zero variance, users in two arms after a salt change)
gives a ``messages`` entry and ``None`` values, never a crash, NaN or inf.

Where the reward joiners have not written the ``rewards`` topic,
:func:`build_report` (``served`` + ``user-events``) derives the reward records with
:func:`serving.experiments.rewards.rewards_from_served_and_events_fallback`.
Sources: records passed in, Kafka (:func:`read_kafka`, :func:`read_rewards_kafka`;
:func:`read_report_records` picks ``rewards`` when it has the experiment's records)
or the Parquet archive (:func:`read_archive`, :func:`read_rewards_archive`,
:func:`read_archive_report_records`). :func:`report_from_records` — what the
HTTP routes and ``genrec experiments report`` call — derives the report's other
inputs from the same logs (:mod:`serving.experiments.inputs`): CUPED's
pre-period (rewards served in ``analysis.pre_period_s`` before the first
exposure), each arm's p99 latency (``Served.latency_ms``), the new items
(``analysis.new_item_age_s`` after their first ``item-events`` record) and the
catalog size.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ingest.contract import REWARDS, SERVED, USER_EVENTS, Reward, Served, UserEvent
from serving.experiments import guardrails as guard
from serving.experiments.analysis import arm_summary, compare, finite
from serving.experiments.config import Experiment, split_assignments
from serving.experiments.corrections import adjust_pvalues
from serving.experiments.inputs import ItemFacts, new_impressions_by_age, report_inputs
from serving.experiments.metrics import METRICS
from serving.experiments.plots import plot_report
from serving.experiments.rewards import (  # noqa: F401 - re-exported for existing callers
    REWARD_WEIGHTS, WATCH_CAP_MIN, rewards_from_served_and_events_fallback, session_reward,
)
from serving.experiments.sequential import always_valid_pvalue, mixture_rho
from serving.experiments.srm import SRM_ALPHA, srm_by_day, srm_check  # noqa: F401 - re-exported
from serving.experiments.units import covariate_columns, new_impressions_by_request, user_table

#: Metrics of the report's per-arm table (the first four are today's report's).
REPORT_METRICS = tuple(METRICS)
#: Looks of the cumulative-lift timeline.
LOOKS = 10


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
    """Welch's t-test of mean(a) − mean(b) with its Welch–Satterthwaite confidence interval.

    Valid only when the values are independent. Over sessions of users who
    were randomised as users it is *not* (the naive test the report replaced;
    the ``abtest`` benchmark shows its inflated false-positive rate).
    """
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


def coverage_by_arm(experiment: str, served: Sequence[Served], catalog_size: int | None, seed: int = 0
                    ) -> dict[str, float]:
    """Distinct items served per arm at an equal number of sessions (the smallest arm's), / catalog size.

    Equal sessions because more traffic shows more distinct items; without a
    catalog size the value is the distinct-item count (comparable across arms).
    """
    by_arm: dict[str, list[Served]] = {}
    for s in served:
        arm = split_assignments(s.experiment, s.arm).get(experiment)
        if arm is not None:
            by_arm.setdefault(arm, []).append(s)
    if not by_arm:
        return {}
    k = min(len(v) for v in by_arm.values())
    rng = np.random.default_rng(seed)
    out = {}
    for arm, ss in by_arm.items():
        pick = rng.choice(len(ss), size=k, replace=False) if len(ss) > k else range(len(ss))
        distinct = len({it for i in pick for it in ss[i].items})
        out[arm] = distinct / catalog_size if catalog_size else float(distinct)
    return out


def _p99(latency_ms: Mapping[str, Sequence[float]]) -> dict[str, float | None]:
    return {a: (float(np.percentile(np.asarray(v, dtype=float), 99)) if len(v) else None)
            for a, v in latency_ms.items()}


def build_reward_report(experiment: Experiment, rewards: Iterable[Reward], *,
                        served: Iterable[Served] | None = None,
                        pre_period: Mapping[str, Mapping[str, float]] | None = None,
                        latency_ms: Mapping[str, Sequence[float]] | None = None,
                        new_items: Iterable[str] | None = None, catalog_size: int | None = None,
                        item_first_ts: Mapping[str, int] | None = None, inputs: Mapping | None = None,
                        plot_path: str | Path | None = None, looks: int = LOOKS) -> dict:
    """The report of ``experiment`` from its reward records (JSON-ready: no NaN or inf).

    ``served``: the exposure records (catalog coverage, new-item share);
    ``pre_period``: user → pre-exposure sums (``units.pre_period_sums``) for
    CUPED; ``latency_ms``: arm → recommend latencies (``Served.latency_ms``);
    ``new_items``: ids of items counted as new in every session, or
    ``item_first_ts``: item → time of its first item-events record, an item
    being new in a session served at most ``analysis.new_item_age_s`` later;
    ``catalog_size``: items recommendable (coverage as a share); ``inputs``:
    how these were derived (:func:`serving.experiments.inputs.report_inputs`),
    shown as the report's ``inputs``.
    """
    cfg = experiment.analysis
    rewards = list(rewards)
    served = None if served is None else list(served)
    messages: list[str] = []
    unavailable: dict[str, str] = {}
    new_impr = None
    if served is not None and new_items is not None:
        new_impr = new_impressions_by_request(served, frozenset(new_items))
    elif served is not None and item_first_ts is not None:
        new_impr = new_impressions_by_age(served, item_first_ts, int(cfg.new_item_age_s * 1000))
    else:
        unavailable["new_item_share"] = ("needs the served records and the items' arrival times from "
                                         "item-events (none were read)" if served is not None else
                                         "needs the served records (none were read)")
    table = user_table(experiment.name, rewards, new_impressions=new_impr)
    if table.conflicts:
        messages.append(f"{len(table.conflicts)} user(s) appear in more than one arm (was the salt or the weights "
                        f"changed mid-experiment?); they are excluded from every arm, e.g. {list(table.conflicts[:3])}")
    metrics = [m for m in REPORT_METRICS if m not in unavailable]
    tested = [m for m in cfg.tested if m in metrics]
    for m in cfg.tested:
        if m not in metrics:
            messages.append(f"metric {m!r} is not tested: {unavailable[m]}")
    control = experiment.control
    arm_names = [a.name for a in experiment.arms]
    extra = [a for a in dict.fromkeys(table.arm) if a not in arm_names]
    if extra:
        messages.append(f"arms {extra} are in the data but not in the config (removed since?); reported apart")
    for a in arm_names:
        if not (table.arm == a).any():
            messages.append(f"arm {a!r} has no users yet: nothing to compare")

    covariates, cuped_note = None, None
    n_pre = int(sum(1 for u in table.users if u in pre_period)) if pre_period else 0
    if pre_period is not None and cfg.cuped and n_pre > 0:
        covariates = covariate_columns(table, pre_period)
        cuped_note = (f"CUPED on: {n_pre} of {len(table)} users have pre-period rewards "
                      f"(the others: zero covariates)")
    elif not cfg.cuped:
        cuped_note = "CUPED off: analysis.cuped is false"
    elif pre_period:
        cuped_note = "CUPED off: none of the experiment's users has pre-period rewards"
    else:
        why = ((inputs or {}).get("pre_period") or {}).get("note")
        cuped_note = "CUPED off: " + (why or "no pre-period data passed (pre_period=...)")
    rho = mixture_rho(cfg.planned_users, cfg.alpha) if cfg.sequential else None

    treatments = [a for a in arm_names + extra if a != control]
    comparisons = {a: compare(table, control, a, metrics, cfg.alpha, covariates, rho) for a in treatments}
    # Multiple comparisons over arms × tested metrics (sequential: on the always-valid p-values).
    family = [(a, m) for a in treatments for m in tested]
    for a, m in family:
        r = comparisons[a][m]
        r["p_value_sequential"] = None
        if rho is not None and r["se"]:
            r["p_value_sequential"] = finite(always_valid_pvalue(r["diff"], r["se"], r["users"], rho))
    key = "p_value_sequential" if cfg.sequential else "p_value"
    pv = [comparisons[a][m][key] for a, m in family]
    adj, rej = adjust_pvalues([math.nan if p is None else p for p in pv], cfg.correction, cfg.alpha)
    for (a, m), pa, rj in zip(family, adj, rej):
        comparisons[a][m].update(p_adjusted=finite(pa), significant=bool(rj), correction=cfg.correction,
                                 role="primary" if m in cfg.primary else "secondary")

    arms_out = {}
    for a in arm_names + extra:
        mask = table.arm == a
        summ = arm_summary(table, a, metrics, cfg.alpha)
        for m in metrics:
            if a != control:
                summ[m]["vs_control"] = comparisons[a][m]
        arms_out[a] = {"exposures": int(table.cols["sessions"][mask].sum()), "users": int(mask.sum()),
                       "sessions_with_feedback": int(table.cols["feedback"][mask].sum()),
                       "is_control": a == control, "in_config": a in arm_names, "metrics": summ}

    arm_level: dict[str, dict] = {}
    if latency_ms is not None:
        arm_level["p99_latency_ms"] = _p99(latency_ms)
    else:
        why = ((inputs or {}).get("latency") or {}).get("note")
        unavailable["p99_latency_ms"] = why or ("no latencies passed (latency_ms=...; served records carry them "
                                                "in latency_ms)")
    if served is not None:
        arm_level["catalog_coverage"] = coverage_by_arm(experiment.name, served, catalog_size)
    else:
        unavailable["catalog_coverage"] = "needs the served records (build_reward_report(served=...))"
    for a, r in arms_out.items():
        for k in ("p99_latency_ms", "catalog_coverage"):
            r[k] = arm_level.get(k, {}).get(a)
    guard_rows = guard.evaluate(experiment, comparisons, arm_level, unavailable)
    for g in guard_rows:
        if g["status"] == "breached":
            messages.append(f"guardrail {g['metric']} BREACHED on arm {g['arm']}")

    srm = srm_check({a: int((table.arm == a).sum()) for a in arm_names}, experiment.weights())
    by_day = srm_by_day(table.first_ts, table.arm, experiment.weights()) if len(table) else []
    if srm["srm"]:
        messages.append(f"SAMPLE RATIO MISMATCH (p={srm['p_value']:.2g} < {SRM_ALPHA}): do not trust this report")
    bad_days = [d["date"] for d in by_day if d["srm"]]
    if bad_days:
        messages.append(f"sample ratio mismatch on day(s) {bad_days}")
    for a, r in comparisons.items():
        notes: dict[str, list[str]] = {}   # one message per note, naming the metrics it concerns
        for metric, v in r.items():
            if v.get("note"):
                notes.setdefault(v["note"], []).append(metric)
        for n in sorted(notes):
            messages.append(f"arm {a} vs control ({', '.join(notes[n])}): {n}")

    report = {
        "experiment": experiment.name, "control": control, "weights": experiment.weights(),
        "unit": "user",
        "analysis": {"primary": list(cfg.primary), "secondary": list(cfg.secondary), "tested": tested,
                     "correction": cfg.correction, "alpha": cfg.alpha, "sequential": cfg.sequential,
                     "planned_users": cfg.planned_users, "mixture_rho": rho, "cuped": covariates is not None,
                     "cuped_note": cuped_note, "pre_period_s": cfg.pre_period_s,
                     "new_item_age_s": cfg.new_item_age_s},
        "inputs": dict(inputs or {}),
        "arms": arms_out,
        "cuped": {m: {a: (None if comparisons[a][m]["variance_ratio"] is None
                          else 1 - comparisons[a][m]["variance_ratio"]) for a in treatments}
                  for m in metrics} if covariates is not None else {},
        "srm": srm, "srm_by_day": by_day,
        "guardrails": guard_rows,
        "sessions": int(table.cols["sessions"].sum()), "users": len(table),
        "users_in_several_arms": len(table.conflicts),
        "timeline": _timeline(experiment, rewards, new_impr, pre_period if covariates is not None else None,
                              tested[0] if tested else metrics[0], rho, looks),
        "messages": messages,
    }
    report = json_safe(report)
    if plot_path is not None:
        report["plot"] = str(plot_report(report, plot_path))
    return report


def _timeline(experiment: Experiment, rewards: list[Reward], new_impr, pre_period, metric: str,
              rho: float | None, looks: int) -> dict:
    """The metric's lift at ``looks`` evenly spaced times (records served up to each)."""
    cfg = experiment.analysis
    ts = [r.ts for r in rewards if experiment.name in split_assignments(r.experiment, r.arm)]
    out = {"metric": metric, "looks": []}
    if len(set(ts)) < 2 or looks < 1:
        return out
    t0, t1 = min(ts), max(ts)
    for cut in np.linspace(t0, t1, looks + 1)[1:]:
        sub = user_table(experiment.name, rewards, until_ts=int(cut), new_impressions=new_impr)
        cov = covariate_columns(sub, pre_period) if pre_period is not None else None
        look = {"ts": int(cut), "hours": (cut - t0) / 3.6e6, "users": len(sub), "arms": {}}
        for a in [x.name for x in experiment.arms if x.name != experiment.control]:
            r = compare(sub, experiment.control, a, [metric], cfg.alpha, cov, rho)[metric]
            look["arms"][a] = {k: r[k] for k in ("relative", "rel_ci_low", "rel_ci_high", "rel_cs_low",
                                                 "rel_cs_high", "p_value")}
        out["looks"].append(look)
    return out


def build_report(experiment: Experiment, served: Iterable[Served], events: Iterable[UserEvent],
                 plot_path: str | Path | None = None, **kwargs) -> dict:
    """Today's entry point: reward records derived from ``served`` + ``events`` (the fallback joiner).

    Same report as :func:`build_reward_report` (``kwargs`` go to it).
    """
    served = list(served)
    rewards = rewards_from_served_and_events_fallback(served, events)
    return build_reward_report(experiment, rewards, served=served, plot_path=plot_path, **kwargs)


def json_safe(obj):
    """NaN/inf → None (numpy scalars → Python) so the report is valid JSON."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def markdown(report: dict) -> str:
    """A readable table of a report (the demo prints it)."""
    an = report["analysis"]
    seq = an["sequential"]
    lines = [f"experiment `{report['experiment']}` (control `{report['control']}`), {report['users']} users, "
             f"{report['sessions']} sessions; unit of analysis: user (delta method); "
             f"correction {an['correction']} over {len(an['tested'])} metric(s) × arms, α={an['alpha']}"
             f"{'; sequential (always-valid)' if seq else ''}; {an['cuped_note']}"
             f"{'; records: ' + report['source'] if report.get('source') else ''}",
             f"SRM p={_f(report['srm']['p_value'])}"
             f"{' — SAMPLE RATIO MISMATCH' if report['srm']['srm'] else ' (ok)'}",
             *([inputs_line(report["inputs"])] if report.get("inputs") else []), "",
             "| arm | sessions | users | w/ feedback | CTR [CI] | reward/session [CI] | watch s/session | "
             "new-item share | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a, r in report["arms"].items():
        m = r["metrics"]

        def ci(k, scale=1.0):
            v = m.get(k)
            if not v or v["mean"] is None:
                return "-"
            lo = "-" if v["ci_low"] is None else f"{v['ci_low'] * scale:.3f}"
            hi = "-" if v["ci_high"] is None else f"{v['ci_high'] * scale:.3f}"
            return f"{v['mean'] * scale:.3f} [{lo}, {hi}]"

        nis = (m.get("new_item_share") or {}).get("mean")
        lines.append(f"| {a} | {r['exposures']} | {r['users']} | {r['sessions_with_feedback']} | {ci('ctr')} | "
                     f"{ci('mean_reward')} | {ci('watch_ms', 1e-3)} | {'-' if nis is None else f'{nis:.3f}'} | "
                     f"{_f(r.get('p99_latency_ms'))} |")
    lines += ["", "| metric | arm | lift vs control [CI]" + (" [always-valid]" if seq else "") +
              " | p | p adj. | significant | CUPED var. cut |", "|---|---|---|---|---|---|---|"]
    for a, r in report["arms"].items():
        if r["is_control"]:
            continue
        for k in an["tested"]:
            w = r["metrics"].get(k, {}).get("vs_control") or {}
            if w.get("relative") is None:
                if w.get("diff") is not None and w.get("p_value") is not None:
                    p = w.get("p_value_sequential") if seq else w.get("p_value")
                    lines.append(f"| {k} | {a} | Δ {_f(w['diff'])} [{_f(w.get('ci_low'))}, {_f(w.get('ci_high'))}] "
                                 f"(absolute) | {_f(p)} | {_f(w.get('p_adjusted'))} | "
                                 f"{'yes' if w.get('significant') else 'no'} | {w.get('note') or ''} |")
                else:
                    lines.append(f"| {k} | {a} | - | - | - | - | {w.get('note') or ''} |")
                continue
            cs = (f" [{_pct(w.get('rel_cs_low'))}, {_pct(w.get('rel_cs_high'))}]" if seq else "")
            cut = (report.get("cuped") or {}).get(k, {}).get(a)
            p = w.get("p_value_sequential") if seq else w.get("p_value")
            lines.append(f"| {k} | {a} | {_pct(w['relative'])} [{_pct(w.get('rel_ci_low'))}, "
                         f"{_pct(w.get('rel_ci_high'))}]{cs} | {_f(p)} | {_f(w.get('p_adjusted'))} | "
                         f"{'yes' if w.get('significant') else 'no'} | {'-' if cut is None else _pct(cut)} |")
    for g in report.get("guardrails", []):
        lines.append(f"\nguardrail {g['metric']} on {g['arm']}: {g['status'].upper() if not g['ok'] else g['status']} "
                     f"(relative {_f(g['relative'])}, one-sided p={_f(g['p_value'])})"
                     f"{' — ' + g['note'] if g.get('note') else ''}")
    if report.get("messages"):
        lines += ["", "notes:"] + [f"- {msg}" for msg in report["messages"]]
    return "\n".join(lines)


def inputs_line(inputs: Mapping) -> str:
    """One line on what the report derived from the logs (pre-period, latencies, item ages)."""
    parts = []
    pre = inputs.get("pre_period") or {}
    if "records" in pre:
        parts.append(f"pre-period: {pre['records']} reward records of {pre['users']} users in the "
                     f"{_duration(pre['window_s'])} before the first exposure")
    lat = inputs.get("latency") or {}
    parts.append(f"latency: {lat['records']} served records" if lat.get("records") else
                 f"latency: {lat.get('note') or 'none'}")
    new = inputs.get("new_items") or {}
    parts.append(f"new items: first item-events record at most {_duration(new.get('age_s', 0))} before the session, "
                 f"catalog {new['catalog_size']} items" if new.get("catalog_size") is not None else
                 f"new items: {new.get('note') or 'none'}")
    return "inputs — " + "; ".join(parts)


def _duration(seconds: float) -> str:
    s = float(seconds)
    return f"{s / 86_400:.3g} d" if s >= 86_400 else (f"{s / 3600:.3g} h" if s >= 3600 else f"{s:.3g} s")


def _f(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:+.2f}%"


# ---- sources ---------------------------------------------------------------------------------

def read_topic(kafka, topic: str, timeout_s: float = 30.0) -> list:
    """All valid records now on the contract ``topic`` ([] if it does not exist); reads without writing
    (:mod:`ingest.topic_snapshot`: a bad record is skipped, its consumer already dead-lettered it)."""
    from ingest.topic_snapshot import read_topic_messages

    return [m.record for m in read_topic_messages(kafka, topic, timeout_s) if m.record is not None]


def read_kafka(kafka, timeout_s: float = 30.0) -> tuple[list[Served], list[UserEvent]]:
    """All ``served`` and ``user-events`` records now on Kafka (read from the beginning, no group)."""
    return read_topic(kafka, SERVED, timeout_s), read_topic(kafka, USER_EVENTS, timeout_s)


def read_rewards_kafka(kafka, timeout_s: float = 30.0) -> list[Reward]:
    """All ``rewards`` records now on Kafka (the reward joiners' output, one per closed session)."""
    return read_topic(kafka, REWARDS, timeout_s)


def rewards_of(experiment: str, rewards: Iterable[Reward]) -> list[Reward]:
    """The reward records of sessions assigned to ``experiment``."""
    return [r for r in rewards if experiment in split_assignments(r.experiment, r.arm)]


def read_report_records(kafka, experiment: str, timeout_s: float = 30.0, fallback: bool = True) -> dict:
    """What :func:`report_from_records` needs, from Kafka.

    ``rewards`` (every reward record: the experiment's and, for CUPED's
    pre-period, the others'), ``served`` and ``items`` (:class:`ItemFacts` from
    ``item-events``); ``source`` "rewards" when the reward joiners wrote the
    experiment's sessions, else (``fallback``) "served+user-events" with the
    ``events`` to derive them from.
    """
    from ingest.contract import ITEM_EVENTS

    everything = read_rewards_kafka(kafka, timeout_s)
    served = read_topic(kafka, SERVED, timeout_s)
    items = ItemFacts.from_records(read_topic(kafka, ITEM_EVENTS, timeout_s))
    out = {"source": "rewards", "rewards": everything, "served": served, "items": items}
    if not rewards_of(experiment, everything) and fallback:
        out.update(source="served+user-events", events=read_topic(kafka, USER_EVENTS, timeout_s))
    return out


def read_archive_report_records(root: str | Path) -> dict:
    """What :func:`report_from_records` needs, from the Parquet archive (``genrec archive``'s layout)."""
    from ingest.archive import read_archive as read_table, read_records
    from ingest.contract import ITEM_EVENTS

    return {"source": "rewards", "rewards": read_records(root, REWARDS), "served": read_records(root, SERVED),
            "items": ItemFacts.from_table(read_table(root, ITEM_EVENTS, columns=["item_id", "ts", "op"]))}


def report_from_records(experiment: Experiment, records: Mapping, plot_path: str | Path | None = None) -> dict:
    """The report of :func:`read_report_records`' (or the archive's) output, with every input the logs give.

    CUPED's pre-period, the latency per arm and the new items are derived by
    :func:`serving.experiments.inputs.report_inputs`; ``report["source"]``
    says which records the rewards came from.
    """
    rewards = list(records["rewards"])
    if records["source"] != "rewards":  # the fallback join, over every served session (the pre-period too)
        rewards = rewards_from_served_and_events_fallback(records["served"], records["events"])
    kw = report_inputs(experiment, rewards, records.get("served"), records.get("items"))
    rep = build_reward_report(experiment, rewards_of(experiment.name, rewards), plot_path=plot_path, **kw)
    return {**rep, "source": records["source"]}


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


def read_rewards_archive(root: str | Path, start_ms: int | None = None, end_ms: int | None = None) -> list[Reward]:
    """``rewards`` records from the Parquet archive served in ``[start_ms, end_ms)`` (e.g. a pre-period)."""
    import pyarrow.dataset as ds

    from ingest.arrow_schemas import from_table

    d = Path(root) / f"topic={REWARDS}"
    if not d.exists():
        return []
    dset = ds.dataset(str(d), format="parquet", partitioning="hive")
    flt = None
    if start_ms is not None:
        flt = ds.field("ts") >= start_ms
    if end_ms is not None:
        flt = (ds.field("ts") < end_ms) if flt is None else flt & (ds.field("ts") < end_ms)
    return from_table(dset.to_table(filter=flt), REWARDS)
