"""The gate job: evaluate a candidate version and its parent on the same data, judge, write the verdict.

Steps (each a function, so ``genrec models gate``, the aligner and tests reuse them):

1. the held-out split — the data ``genrec train`` reads (:func:`actors.train_job.load_interactions`:
   a data set or the Parquet archive), split leave-one-out (:mod:`models.evaluation.splits`);
2. :func:`evaluate_version` — each version ranks the whole catalog for the same test users with
   constrained beam search (:class:`models.evaluation.generator_ranker.GeneratorRanker`) and is scored
   by :func:`models.evaluation.metrics.evaluate_ranking`. Versions may carry different catalogs: items
   are matched by id, so both are judged on the split's items;
3. :func:`simulated_canary` — when a synthetic world is at hand, both versions generate a session for
   the same users, served through the closed-loop simulator
   (:func:`models.evaluation.closed_loop.closed_loop_rewards` with the world's ``respond``) under the same
   request ids (common random numbers); per-user reward, skip rate and dislike rate (when the world emits
   dislikes) are compared with paired user-level intervals;
4. :func:`models.evaluation.gate.gate_verdict`, then :meth:`actors.model_registry.ModelRegistry.set_verdict`.

Invariant: the verdict names the parent it was judged against; ``promote`` refuses a version whose
verdict did not pass, and serving never loads one (:mod:`serving.recommender_follow`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from models.evaluation.metrics import validity
from models.evaluation.gate import CanaryMetric, GateConfig, GateVerdict, gate_verdict, paired_comparison

log = logging.getLogger(__name__)

WORLDS = ("auto", "default", "small", "none")


@dataclass(frozen=True)
class GateJobConfig:
    """What ``genrec models gate`` evaluates.

    ``data`` / ``archive`` / ``max_events`` / ``seed``: the data, as ``genrec train`` reads it (the held-out
    split is its leave-one-out test part). ``world``: the synthetic world of the simulated canary —
    ``auto`` (the world ``data`` names: ``synthetic`` → ``default``, ``synthetic-small`` → ``small``, else
    none), ``default``, ``small`` (both with ``seed``) or ``none``. ``max_users``: test users ranked (0 = all);
    ``canary_users``: simulated users; ``session_len``: items per canary session; ``n``: ranked list length
    (HR@50 needs 50); ``beam``: beam width of ranking. ``gate``: the bounds (:class:`GateConfig`).
    """

    data: str = "synthetic"
    archive: str = ""
    max_events: int = 0
    seed: int = 0
    world: str = "auto"
    max_users: int = 500
    canary_users: int = 300
    session_len: int = 6
    n: int = 50
    beam: int = 20
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"GateJobConfig.world={self.world!r}: use one of {WORLDS}")
        for name in ("max_users", "max_events"):
            if getattr(self, name) < 0:
                raise ValueError(f"GateJobConfig.{name}={getattr(self, name)} must be >= 0 (0 = all)")
        if self.canary_users < 2:
            raise ValueError(f"GateJobConfig.canary_users={self.canary_users} must be >= 2 (a user-level interval)")
        if not 1 <= self.session_len <= 100:
            raise ValueError(f"GateJobConfig.session_len={self.session_len} must be in 1..100")
        if self.n < 10:
            raise ValueError(f"GateJobConfig.n={self.n} must be >= 10 (NDCG@10 and coverage@10)")
        if self.beam < 1:
            raise ValueError(f"GateJobConfig.beam={self.beam} must be >= 1")
        if not isinstance(self.gate, GateConfig):
            raise TypeError("GateJobConfig.gate must be a GateConfig (GateConfig.from_dict for a mapping)")

    def world_kind(self) -> str:
        if self.world != "auto":
            return self.world
        return {"synthetic": "default", "synthetic-small": "small"}.get(self.data if not self.archive else "", "none")


def make_world(cfg: GateJobConfig):
    """The synthetic world of the canary (None when there is none)."""
    kind = cfg.world_kind()
    if kind == "none":
        return None
    from ingest.synthetic import SyntheticWorld, WorldConfig

    return SyntheticWorld(WorldConfig.small(seed=cfg.seed) if kind == "small" else WorldConfig(seed=cfg.seed))


# ---- 2. offline metrics ------------------------------------------------------------------------

class VersionView:
    """A registry bundle seen from a split: item-index maps both ways and a ranker over its own catalog."""

    def __init__(self, bundle, split, beam: int):
        from models.evaluation.generator_ranker import GeneratorRanker

        if not bundle.item_ids or bundle.item_sids is None or not len(bundle.item_sids):
            raise ValueError("this version carries no catalog (item ids and SIDs); the gate evaluates versions "
                             "published with their catalog (genrec train --registry)")
        self.bundle = bundle
        self.item_ids = [str(i) for i in bundle.item_ids]
        own = {iid: k for k, iid in enumerate(self.item_ids)}
        self.split_to_own = np.array([own.get(str(i), -1) for i in split.item_ids], dtype=np.int64)  # [N_split]
        self.own_to_split = np.full(len(self.item_ids), -1, dtype=np.int64)                          # [N_own]
        known = self.split_to_own >= 0
        self.own_to_split[self.split_to_own[known]] = np.flatnonzero(known)
        self.ranker = GeneratorRanker(bundle.model.eval(), bundle.item_sids, beam_width=beam)

    def histories(self, h):
        """Split-index histories -> this version's item indices (items it does not know are dropped)."""
        from models.evaluation.ranker import Histories

        items, ts, types = [], [], []
        for b, seq in enumerate(h.items):
            m = self.split_to_own[seq]
            keep = m >= 0
            items.append(m[keep])
            ts.append(h.ts[b][keep] if h.ts is not None else np.zeros(int(keep.sum()), np.int64))
            types.append(h.types[b][keep] if h.types is not None else np.zeros(int(keep.sum()), np.int64))
        return Histories(items, ts, types)


def evaluate_version(view: VersionView, cases, n_split_items: int, n: int = 50) -> dict[str, float]:
    """Held-out metrics of one version on ``cases`` (split item indices): NDCG/HR, coverage@10, validity."""
    from models.evaluation.metrics import MetricsConfig, evaluate_ranking

    ranked = view.ranker.rank(view.histories(cases.histories), n).cpu().numpy()   # [B, n] own indices
    in_split = np.where((ranked >= 0) & (ranked < len(view.own_to_split)),
                        view.own_to_split[np.clip(ranked, 0, len(view.own_to_split) - 1)], -1)   # [B, n]
    mcfg = MetricsConfig(hr_ks=tuple(k for k in (1, 10, 50) if k <= n), ndcg_ks=(10,), coverage_k=10)
    m = evaluate_ranking(in_split, cases.targets, n_split_items, mcfg)
    m["validity"] = validity(ranked, len(view.item_ids))
    m["empty_rate"] = float(np.mean(ranked == -1)) if ranked.size else 0.0
    m.pop("invalid_rate", None)   # counted against the split's catalog; validity is against the version's own
    return m


# ---- 3. simulated canary -----------------------------------------------------------------------

def canary_sessions(view: VersionView, histories, k: int) -> tuple[list[list[str]], float]:
    """One generated session of ``k`` item ids per user (constrained beam), and the share of valid IDs."""
    items = view.ranker.sessions(view.histories(histories), k).cpu().numpy()   # [U, k] own indices
    ids = [[view.item_ids[i] for i in row if 0 <= i < len(view.item_ids)] for row in items]
    return ids, validity(items, len(view.item_ids))


def simulated_canary(respond: Callable, users: list[str], sessions: dict[str, list[list[str]]], ts: int,
                     alpha: float = 0.05) -> tuple[list[CanaryMetric], dict]:
    """Serve ``sessions['candidate']`` and ``sessions['parent']`` to the same ``users`` under the same request
    ids through :func:`closed_loop_rewards`; returns the paired canary metrics and per-policy means."""
    from models.evaluation.closed_loop import closed_loop_rewards
    from serving.experiments.rewards import session_reward

    per_user: dict[str, dict[str, np.ndarray]] = {}
    present = set()
    for policy in ("candidate", "parent"):
        answered: dict[str, list] = {}

        def recording(user_id, item_ids, request_id, ts_, _answered=answered):
            events = list(respond(user_id, item_ids, request_id, ts_))
            _answered[request_id] = events
            return events

        res = closed_loop_rewards(users, {policy: sessions[policy]}, recording, session_reward, ts,
                                  request_prefix="gate")
        skips, dislikes = np.zeros(len(users)), np.zeros(len(users))
        for u, items in enumerate(sessions[policy]):
            events = answered.get(f"gate-{u}", [])
            shown = max(1, len(items))
            types = [e.type for e in events]
            present.update(t for t in types if t in ("skip", "dislike"))
            skips[u] = types.count("skip") / shown
            dislikes[u] = types.count("dislike") / shown
        per_user[policy] = {"mean_reward": res.per_user[policy], "skip_rate": skips, "dislike_rate": dislikes}
    metrics = [paired_comparison("mean_reward", per_user["candidate"]["mean_reward"],
                                 per_user["parent"]["mean_reward"], alpha=alpha)]
    for name, kind in (("skip_rate", "skip"), ("dislike_rate", "dislike")):
        if kind in present:
            metrics.append(paired_comparison(name, per_user["candidate"][name], per_user["parent"][name],
                                             higher_is_better=False, alpha=alpha))
    summary = {p: {k: float(v.mean()) for k, v in d.items()} for p, d in per_user.items()}
    return metrics, summary


# ---- 4. the job --------------------------------------------------------------------------------

@dataclass
class GateJobResult:
    version: str
    parent: str
    verdict: GateVerdict
    candidate_metrics: dict
    parent_metrics: dict
    canary: dict
    stored: dict                  # what the registry now holds as the verdict

    def to_dict(self) -> dict:
        return self.stored


def choose_parent(registry, version: str, parent: str | None = None) -> str:
    """The version a candidate is judged against: ``parent``, else its registered parent, else the promoted one."""
    from actors.model_registry import RegistryError

    info = registry.info(version)
    chosen = parent or info.parent or registry.promoted()
    if not chosen or chosen == version:
        raise RegistryError(f"model version {version!r} has no parent to be judged against (none registered, "
                            "none promoted); name one with --parent, or promote a first, hand-checked version "
                            f"with `genrec models promote {version} --no-gate`")
    registry.info(chosen)
    return chosen


def run_gate_job(registry, version: str, parent: str | None = None, cfg: GateJobConfig = GateJobConfig(), *,
                 data=None, world=None, say: Callable[[str], None] = lambda s: None,
                 write: bool = True) -> GateJobResult:
    """Judge ``version`` against ``parent`` (see the module docstring) and store the verdict (``write``).

    ``data`` (an :class:`actors.train_job.Interactions`) and ``world`` (a synthetic world with ``respond``)
    may be passed in; otherwise they are read as ``cfg`` says (with ``data`` passed in and no ``world``, the
    canary runs only when ``cfg.world`` names one: ``auto`` cannot know which world made the data).
    """
    import torch

    from actors.train_job import TrainJobConfig, load_interactions

    t0 = time.time()
    parent = choose_parent(registry, version, parent)
    loaded = data is None
    if loaded:
        data = load_interactions(TrainJobConfig(data=cfg.data, archive=cfg.archive, max_events=cfg.max_events,
                                                seed=cfg.seed))
    if world is None and (loaded or cfg.world != "auto"):   # data passed in: its world only when named
        world = make_world(cfg)
    split = data.split
    cases = split.test()
    if not len(cases):
        raise ValueError(f"data {data.name!r} has no held-out test users (each needs >= 3 engaged events)")
    if cfg.max_users and len(cases) > cfg.max_users:
        cases = cases.subset(np.arange(cfg.max_users))
    say(f"gate {version} vs {parent}: {len(cases)} held-out users of {data.name} ({split.n_items} items)")
    views, metrics = {}, {}
    with torch.no_grad():
        for role, name in (("candidate", version), ("parent", parent)):
            views[role] = VersionView(registry.load(name), split, cfg.beam)
            metrics[role] = evaluate_version(views[role], cases, split.n_items, cfg.n)
            say(f"  {role} {name}: NDCG@10 {metrics[role]['ndcg@10']:.4f} coverage@10 "
                f"{metrics[role]['coverage@10']:.4f} validity {metrics[role]['validity']:.4f}")
        canary, summary = None, {}
        if world is not None:
            canary, summary = _canary(world, split, cases, views, metrics, cfg)
            say("  canary: " + ", ".join(f"{m.name} {m.candidate:.4f} vs {m.parent:.4f} "
                                         f"(diff {m.diff:+.4f}, CI {m.ci_low:+.4f}..{m.ci_high:+.4f})"
                                         for m in canary))
    verdict = gate_verdict(metrics["candidate"], metrics["parent"], canary, cfg.gate)
    stored = {**verdict.to_dict(), "version": version, "parent": parent, "data": data.name,
              "metrics": {"candidate": metrics["candidate"], "parent": metrics["parent"]},
              "canary": {"metrics": [m.to_dict() for m in canary or []], "means": summary,
                         "users": canary[0].n_users if canary else 0},
              "judged_ms": int(time.time() * 1000), "gate_s": round(time.time() - t0, 3)}
    if write:
        registry.set_verdict(version, stored)
    log.info("gate %s vs %s: %s (%s)", version, parent, "passed" if verdict.passed else "failed", verdict.reason)
    say(f"gate {version}: {'PASSED' if verdict.passed else 'FAILED'} — {verdict.reason}")
    return GateJobResult(version, parent, verdict, metrics["candidate"], metrics["parent"], stored["canary"],
                         stored)


def _canary(world, split, cases, views, metrics, cfg: GateJobConfig):
    """Canary users: held-out users the world knows, with their whole history (as served at the log's end)."""
    from models.evaluation.ranker import Histories

    users, rows = [], []
    for u in cases.users.tolist():
        uid = str(split.user_ids[u])
        try:
            world.user_index(uid)
        except KeyError:
            continue
        users.append(uid)
        rows.append(u)
        if len(users) >= cfg.canary_users:
            break
    if len(users) < 2:
        raise ValueError(f"the canary world knows {len(users)} of the held-out users; evaluate on the world's "
                         "own data (genrec models gate --data synthetic[-small]) or pass --world none")
    hist = Histories([split.items[u] for u in rows], [split.ts[u] for u in rows], [split.types[u] for u in rows])
    ts = int(max(int(t[-1]) for t in split.ts if len(t))) + 60_000
    sessions = {}
    for role in ("candidate", "parent"):
        sessions[role], valid = canary_sessions(views[role], hist, cfg.session_len)
        metrics[role]["validity"] = min(metrics[role]["validity"], valid)
    return simulated_canary(world.respond, users, sessions, ts, cfg.gate.alpha)
