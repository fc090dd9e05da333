"""What the report derives from the logs besides the rewards: CUPED's pre-period, latency per arm, new items.

:func:`serving.experiments.report.build_reward_report` accepts these inputs;
this module derives them from the records the report's sources read (Kafka
topics or the Parquet archive), so that every caller — the HTTP routes, the
CLI, the demo — passes the same ones:

* **pre-period** (CUPED, Deng et al. WSDM 2013): the rewards of every user
  served in the ``analysis.pre_period_s`` seconds before the experiment's
  *first exposure* (its earliest served session), from any or no experiment,
  summed per user (:func:`serving.experiments.units.pre_period_sums`). They
  are pre-treatment, so adjusting with them cannot bias the comparison. A user
  without pre-period rewards gets zero covariates
  (:func:`serving.experiments.units.covariate_columns`): for a ratio metric
  that puts their linearised covariate at its mean, 0, which is mean
  imputation — unbiased, and it simply does not reduce their variance (the
  closed-loop simulation of the ``abtest`` suite includes such users).
* **latency per arm**: ``Served.latency_ms`` of the experiment's served
  records (the ingress writes it; older records carry none and are skipped).
* **new items and catalog size** (:class:`ItemFacts`): the time of each
  item's first ``item-events`` record, and the items whose latest record is
  an upsert. An item shown in a session is *new* when the session was served
  at most ``analysis.new_item_age_s`` after that first record (or before it:
  an item served ahead of its own record is as new as it gets); an item with
  no record is not counted as new (its age is unknown).

Invariant: pure functions of the records passed in; every input that cannot be
derived is ``None`` together with a sentence saying why, which the report
shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ingest.contract import Reward, Served
from serving.experiments.config import Experiment, split_assignments


@dataclass(frozen=True)
class ItemFacts:
    """Item arrival times and the catalog size, from ``item-events`` (Kafka or the archive)."""

    first_ts: dict[str, int]     # item → ts of its first item-events record
    catalog_size: int            # items whose latest record is an upsert

    @staticmethod
    def from_columns(item_ids: Sequence[str], ts: Sequence[int], ops: Sequence[str]) -> "ItemFacts":
        first: dict[str, int] = {}
        latest: dict[str, tuple[int, int, str]] = {}
        for n, (i, t, op) in enumerate(zip(item_ids, ts, ops)):
            t = int(t)
            if i not in first or t < first[i]:
                first[i] = t
            key = (t, n)  # the later record wins; at equal ts the one read later (log order)
            if i not in latest or key >= latest[i][:2]:
                latest[i] = (t, n, op or "upsert")
        return ItemFacts(first, sum(1 for v in latest.values() if v[2] == "upsert"))

    @staticmethod
    def from_records(records: Iterable) -> "ItemFacts":
        """From :class:`ingest.contract.ItemEvent` records (log order)."""
        recs = list(records)
        return ItemFacts.from_columns([r.item_id for r in recs], [r.ts for r in recs], [r.op for r in recs])

    @staticmethod
    def from_table(table) -> "ItemFacts":
        """From an Arrow table with ``item_id``, ``ts`` and ``op`` columns (the archive's)."""
        return ItemFacts.from_columns(table.column("item_id").to_pylist(), table.column("ts").to_pylist(),
                                      table.column("op").to_pylist())


def new_impressions_by_age(served: Iterable[Served], first_ts: Mapping[str, int], age_ms: int) -> dict[str, int]:
    """``request_id`` → how many of its items were new when it was served (see the module docstring)."""
    out = {}
    for s in served:
        n = 0
        for it in s.items:
            f = first_ts.get(it)
            if f is not None and s.ts - f <= age_ms:
                n += 1
        out[s.request_id] = n
    return out


def first_exposure_ts(experiment: str, rewards: Iterable[Reward], served: Iterable[Served] | None = None
                      ) -> int | None:
    """The earliest ``ts`` of a session of ``experiment`` (reward or served record), or ``None``."""
    ts = [r.ts for r in rewards if experiment in split_assignments(r.experiment, r.arm)]
    if served is not None:
        ts += [s.ts for s in served if experiment in split_assignments(s.experiment, s.arm)]
    return min(ts) if ts else None


def pre_period_rewards(experiment: str, rewards: Iterable[Reward], start_ms: int, end_ms: int) -> list[Reward]:
    """Rewards served in ``[start_ms, end_ms)`` that are not sessions of ``experiment``."""
    return [r for r in rewards if start_ms <= r.ts < end_ms
            and experiment not in split_assignments(r.experiment, r.arm)]


def latency_by_arm(experiment: str, served: Iterable[Served]) -> dict[str, list[float]]:
    """Arm → ``latency_ms`` of the experiment's served records that carry one."""
    out: dict[str, list[float]] = {}
    for s in served:
        if s.latency_ms is None:
            continue
        arm = split_assignments(s.experiment, s.arm).get(experiment)
        if arm is not None:
            out.setdefault(arm, []).append(float(s.latency_ms))
    return out


def report_inputs(experiment: Experiment, rewards: Sequence[Reward], served: Sequence[Served] | None,
                  items: ItemFacts | None) -> dict:
    """Keyword arguments of :func:`~serving.experiments.report.build_reward_report` derived from the logs.

    ``rewards``: every reward record the source holds (this experiment's and
    the others', for the pre-period); ``served``: every served record (or
    ``None``); ``items``: from ``item-events`` (or ``None``). The result also
    has ``inputs``: what was derived, from how many records, and why something
    was not.
    """
    from serving.experiments.units import pre_period_sums

    cfg = experiment.analysis
    name = experiment.name
    kw: dict = {"served": served}
    inputs: dict = {}
    first = first_exposure_ts(name, rewards, served)
    window_ms = int(cfg.pre_period_s * 1000)
    if first is None:
        inputs["pre_period"] = {"note": "no session of the experiment yet"}
    else:
        pre = pre_period_rewards(name, rewards, first - window_ms, first)
        kw["pre_period"] = pre_period_sums(pre) if pre else None
        inputs["pre_period"] = {"start_ts": first - window_ms, "end_ts": first, "window_s": cfg.pre_period_s,
                                "records": len(pre), "users": len(kw["pre_period"] or {}),
                                "note": None if pre else (
                                    f"no reward records served in the {cfg.pre_period_s:g} s before the first "
                                    "exposure (analysis.pre_period_s)")}
    if served is None:
        inputs["latency"] = {"note": "no served records read"}
    else:
        lat = latency_by_arm(name, served)
        kw["latency_ms"] = lat or None
        inputs["latency"] = {"records": sum(len(v) for v in lat.values()),
                             "note": None if lat else "the experiment's served records carry no latency_ms "
                                                      "(written before the ingress recorded it)"}
    if items is None or not items.first_ts:
        inputs["new_items"] = {"age_s": cfg.new_item_age_s,
                               "note": "no item-events records: item ages and the catalog size are unknown"}
    else:
        kw["item_first_ts"] = items.first_ts
        kw["catalog_size"] = items.catalog_size or None
        inputs["new_items"] = {"age_s": cfg.new_item_age_s, "items_known": len(items.first_ts),
                               "catalog_size": items.catalog_size, "note": None}
    kw["inputs"] = inputs
    return kw
