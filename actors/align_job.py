"""The align job: one alignment round of the product's loop, or the loop itself (``genrec align``).

One round (:func:`run_align_round`), in order:

1. **window** — the archive's newest ``window_days`` (:func:`window_bounds`: it ends at the newest
   ``served`` / ``user-events`` record; 0 = the whole archive);
2. **split** — the window's engaged user events as a leave-one-out split over the *parent's* catalog order
   (:func:`split_in_catalog`: item index ``i`` is the parent's item ``i``; events of items the parent does
   not know are dropped and counted);
3. **reward model** — served ⋈ rewards of the window with each user's history **as of the served time**
   (:mod:`actors.reward_data`: ``PointInTimeHistory`` over every archived user event, so history before
   the window counts too), trained on the earlier part and reported (per-head AUC / calibration) on the
   newest ``rm_eval_share`` (:func:`fit_reward_model`); or the latest stored one (``reward_model: latest``).
   Its weights are stored as safetensors + JSON under the registry's ``reward_models/<candidate>/``
   (:class:`RewardModelStore`) and the candidate's ``data_window`` names it;
4. **round** — :func:`actors.aligner.run_round` with :class:`~models.reward_model.scorer.RewardModelScorer`
   (``feedback`` mode: the window's served sessions with their real rewards); the simulator's world, when
   there is one, is the true scorer (reward-hacking stop);
5. **gate** — :func:`actors.gate_job.run_gate_job` on the candidate against its parent, on the same split
   (verdict written to the registry);
6. **arm** — a passing candidate goes into the configured experiment arm
   (:func:`serving.rollout.assign_arm_model`, the experiments YAML rewritten atomically; replicas take it
   with ``POST /v1/admin/experiments/reload``). A failing one never does.

Continuous mode (:func:`run_every`): rounds every ``every`` seconds in this process until SIGTERM /
SIGINT — a plain loop meant to run under ``ray job submit -- genrec align --every 6h`` (Ray's job manager
supervises, logs and stops the driver; the training steps go to the cluster through Ray Train with
``ray_workers``). A stop request aborts a running round where it is: the registry's publish writes
``meta.json`` last and the reward-model store its ``config.json`` last, so a round cut anywhere leaves no
half version and the next round starts cleanly.

Invariant: a candidate enters an arm only after its verdict passed (``assign_arm_model`` checks it again).
References: OneRec (Deng et al. 2025, arXiv 2502.18965) §2.4 reward model and IPA; OneRec-V2 feedback mode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
REWARD_MODEL_CHOICES = ("train", "latest")


# ---- config ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AlignJobConfig:
    """What ``genrec align`` does (section ``align:`` of genrec.yaml).

    ``archive`` / ``registry``: where data and versions live. ``mode``: ``reward_model`` or ``feedback``.
    ``window_days``: the archive's newest window a round reads (0 = all of it). ``reward_model``: ``train``
    a fresh session reward model each round, or reuse the ``latest`` stored one (trained when none is).
    ``rm_eval_share``: newest share of the window's reward examples held out for the per-head report.
    ``rm_d_model`` / ``rm_epochs`` / ``rm_max_seconds``: the reward model's width, epochs and time budget.
    ``min_examples``: fewer joined sessions than this refuses the round (nothing to learn a reward from).
    ``round``: :class:`models.alignment.config.AlignConfig` fields; ``gate``: :class:`actors.gate_job.GateJobConfig`
    fields (``gate: {gate: {max_ndcg_drop: 0.02}}`` for the bounds). ``experiment`` / ``arm`` /
    ``experiments_file``: where a passing candidate goes (all three or none). ``ray_workers``: 0 trains in
    this process, N through Ray Train with N workers. ``every``: seconds between rounds (0 = one round).
    ``auto_promote`` (opt-in, needs the experiment): before each round, the experiment's report from the
    archive decides whether the arm's model has won (:func:`serving.experiments.promotion.decide_promotion`:
    sequential, significant on every primary metric, guardrails clean, at least ``promote_min_users`` users
    per arm); a winner becomes the promoted version, so the round that follows starts from it (rounds chain).
    """

    archive: str = ".genrec/archive"
    registry: str = ".genrec/registry"
    mode: str = "reward_model"
    window_days: float = 7.0
    reward_model: str = "train"
    rm_eval_share: float = 0.2
    rm_d_model: int = 32
    rm_epochs: int = 20
    rm_max_seconds: float = 120.0
    max_history: int = 50
    min_examples: int = 50
    round: dict = field(default_factory=dict, hash=False)
    gate: dict = field(default_factory=dict, hash=False)
    experiment: str = ""
    arm: str = ""
    experiments_file: str = ""
    ray_workers: int = 0
    every: float = 0.0
    auto_promote: bool = False
    promote_min_users: int = 200

    def __post_init__(self) -> None:
        from models.alignment.config import MODES

        if self.mode not in MODES:
            raise ValueError(f"align.mode={self.mode!r}: use one of {MODES}")
        if not self.archive or not self.registry:
            raise ValueError("align.archive and align.registry must name the Parquet archive and the model "
                             "registry (e.g. .genrec/archive, .genrec/registry)")
        if self.reward_model not in REWARD_MODEL_CHOICES:
            raise ValueError(f"align.reward_model={self.reward_model!r}: use 'train' (a fresh one each round) "
                             "or 'latest' (reuse the newest stored one)")
        for name in ("window_days", "rm_max_seconds", "every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"align.{name}={v!r} must be a number >= 0 (0 = {'all' if name == 'window_days' else 'none'})")
        if not 0.0 < self.rm_eval_share < 1.0:
            raise ValueError(f"align.rm_eval_share={self.rm_eval_share} must be in (0, 1), e.g. 0.2")
        for name in ("rm_d_model", "rm_epochs", "max_history", "min_examples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"align.{name}={v!r} must be a positive int")
        if self.rm_d_model % 2:
            raise ValueError(f"align.rm_d_model={self.rm_d_model} must be even (two attention heads)")
        if isinstance(self.ray_workers, bool) or not isinstance(self.ray_workers, int) or self.ray_workers < 0:
            raise ValueError(f"align.ray_workers={self.ray_workers!r} must be an int >= 0 (0 = in this process)")
        named = [bool(self.experiment), bool(self.arm), bool(self.experiments_file)]
        if any(named) and not all(named):
            raise ValueError("align.experiment, align.arm and align.experiments_file go together: name all three "
                             "(where a passing candidate goes) or none")
        if self.auto_promote and not all(named):
            raise ValueError("align.auto_promote needs align.experiment, align.arm and align.experiments_file: "
                             "the experiment whose arm may win and be promoted")
        if not isinstance(self.auto_promote, bool):
            raise ValueError(f"align.auto_promote={self.auto_promote!r} must be true or false")
        if isinstance(self.promote_min_users, bool) or not isinstance(self.promote_min_users, int) or \
                self.promote_min_users < 1:
            raise ValueError(f"align.promote_min_users={self.promote_min_users!r} must be a positive int, e.g. 200")
        if not isinstance(self.round, dict) or not isinstance(self.gate, dict):
            raise ValueError("align.round and align.gate must be mappings of AlignConfig / GateJobConfig fields")
        self.align_config()
        self.gate_config()

    def align_config(self):
        """The round's :class:`AlignConfig` (``round`` fields, ``mode`` from this config). The round's NDCG guard
        holds the gate's bound (``gate.gate.max_ndcg_drop``) unless ``round.guard_max_drop`` names its own, so
        the round keeps the last snapshot the gate's NDCG check would pass."""
        from models.alignment.config import AlignConfig

        d = {**self.round, "mode": self.mode}
        if "guard_max_drop" not in d:
            d["guard_max_drop"] = self.gate_config().gate.max_ndcg_drop
        try:
            return AlignConfig.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"align.round: {e}") from None

    def gate_config(self):
        """The gate's :class:`GateJobConfig` (``gate`` fields; ``gate.gate`` as :class:`GateConfig`)."""
        from actors.gate_job import GateJobConfig
        from models.evaluation.gate import GateConfig

        d = dict(self.gate)
        try:
            if isinstance(d.get("gate"), dict):
                d["gate"] = GateConfig.from_dict(d["gate"])
            return GateJobConfig(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"align.gate: {e}") from None


def parse_duration(text: str) -> float:
    """``30s``, ``30m``, ``6h``, ``1d`` or plain seconds -> seconds (> 0)."""
    s = str(text).strip().lower()
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(s[-1:]) if s else None
    try:
        v = float(s[:-1] if unit else s) * (unit or 1)
    except ValueError:
        v = float("nan")
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"duration {text!r}: give a positive number with s, m, h or d, e.g. 30m or 6h")
    return v


# ---- 1-2. window and split -----------------------------------------------------------------------

@dataclass
class WindowData:
    """The archive's records a round reads: every user event (for point-in-time histories), the window's
    served and reward records, and the window ``[start_ms, end_ms]``."""

    user_events: list
    served: list
    rewards: list
    start_ms: int
    end_ms: int

    def as_dict(self) -> dict:
        return {"start_ms": self.start_ms, "end_ms": self.end_ms, "served": len(self.served),
                "rewards": len(self.rewards),
                "user_events": sum(1 for e in self.user_events if e.ts >= self.start_ms)}


def window_bounds(timestamps: list[int], window_days: float) -> tuple[int, int]:
    """``(start_ms, end_ms)``: the newest ``window_days`` ending at the newest timestamp (0 days = all)."""
    if not timestamps:
        raise ValueError("the archive holds no served or user-event records; run the archiver "
                         "(genrec archive) over a deployment that has served traffic")
    end = int(max(timestamps))
    start = int(min(timestamps)) if window_days <= 0 else end - int(window_days * DAY_MS)
    return start, end


def read_window(archive: str, window_days: float) -> WindowData:
    """The records of the archive's newest window (complete Parquet flushes only)."""
    from pathlib import Path

    from ingest.archive import read_records
    from ingest.contract import REWARDS, SERVED, USER_EVENTS

    if not Path(archive).is_dir():
        raise ValueError(f"archive {archive!r} is not a directory; point --archive at the archiver's root "
                         "(archive.root in genrec.yaml)")
    events = sorted(read_records(archive, USER_EVENTS), key=lambda e: e.ts)
    served = read_records(archive, SERVED)
    start, end = window_bounds([e.ts for e in events] + [s.ts for s in served], window_days)
    served = [s for s in served if start <= s.ts <= end]
    ids = {s.request_id for s in served}
    rewards = [r for r in read_records(archive, REWARDS) if r.request_id in ids]
    return WindowData(events, served, rewards, start, end)


def split_in_catalog(user_events, item_ids, start_ms: int = 0, end_ms: int | None = None):
    """A leave-one-out split of the engaged events in ``[start_ms, end_ms]`` whose item index ``i`` is
    ``item_ids[i]`` (the parent's catalog order, as :func:`actors.aligner.run_round` requires).

    Returns ``(split, counters)``; events of items not in ``item_ids`` are dropped (``unknown_item``).
    One consumption per run of engagements with the same item (as :func:`actors.train_job.interactions_from_records`).
    """
    from ingest.contract import ENGAGED_TYPES, EVENT_TYPES
    from models.evaluation.splits import LeaveOneOut, SplitConfig

    index = {str(i): k for k, i in enumerate(item_ids)}
    tindex = {t: i for i, t in enumerate(EVENT_TYPES)}
    c: Counter = Counter()
    per: dict[str, list[tuple[int, int, int]]] = {}
    last: dict[str, str] = {}
    for e in sorted(user_events, key=lambda e: e.ts):
        if e.type not in ENGAGED_TYPES or e.ts < start_ms or (end_ms is not None and e.ts > end_ms):
            continue
        if last.get(e.user_id) == e.item_id:
            continue
        last[e.user_id] = e.item_id
        k = index.get(str(e.item_id))
        if k is None:
            c["unknown_item"] += 1
            continue
        rows = per.setdefault(e.user_id, [])
        if any(r[1] == k for r in rows):      # one consumption per (user, item), the first (LeaveOneOut's dedupe)
            c["repeat"] += 1
            continue
        rows.append((int(e.ts), k, tindex[e.type]))
        c["events"] += 1
    if not per:
        raise ValueError("the window holds no engaged event of an item the parent knows; widen --window-days "
                         "or check that the archive holds user-events")
    users = sorted(per)
    arr = [np.asarray(per[u], dtype=np.int64).reshape(-1, 3) for u in users]
    split = LeaveOneOut(np.asarray(users, dtype=object), np.asarray([str(i) for i in item_ids], dtype=object),
                        [a[:, 1].copy() for a in arr], [a[:, 0].copy() for a in arr], [a[:, 2].copy() for a in arr],
                        SplitConfig().min_events)
    c["users"] = len(users)
    return split, c


# ---- 3. reward model -------------------------------------------------------------------------------

def reward_examples(window: WindowData, item_ids, max_session: int, max_history: int = 50):
    """Point-in-time reward-model examples of the window's served sessions (``(RewardExamples, counters)``)."""
    from actors.reward_data import examples_from_records

    index = {str(i): k for k, i in enumerate(item_ids)}
    return examples_from_records(window.served, window.rewards, window.user_events, index, max_session, max_history)


def _item_lengths(window: WindowData, item_ids) -> np.ndarray:
    """The parent's items' lengths (ms, 0 = unknown) as players reported them in the events: the reward
    model's value counts watch minutes (:meth:`models.reward_model.model.RewardModel.set_item_lengths`)."""
    from actors.reward_data import item_lengths_from_events

    return item_lengths_from_events(window.user_events, {str(i): k for k, i in enumerate(item_ids)}, len(item_ids))


@dataclass
class RewardModelFit:
    """A trained reward model and how it did on the later window it did not train on."""

    model: object                  # models.reward_model.model.RewardModel
    report: dict                   # rm_auc_<head>, rm_ece_<head>, ... (+ rm_true_spearman when known)
    n_train: int
    n_eval: int
    eval_from_ms: int
    train_s: float

    def summary(self) -> str:
        from models.reward_model.data import HEADS

        aucs = ", ".join(f"{h} {self.report.get(f'rm_auc_{h}', float('nan')):.3f}" for h in HEADS)
        sp = self.report.get("rm_true_spearman")
        return (f"reward model: trained on {self.n_train} sessions in {self.train_s:.1f} s; AUC on the later "
                f"{self.n_eval} sessions: {aucs}" + ("" if sp is None else f"; Spearman with the true value {sp:.3f}"))


def fit_reward_model(examples, item_sids: np.ndarray, level_sizes, *, eval_share: float = 0.2, d_model: int = 32,
                     epochs: int = 20, max_seconds: float = 120.0, max_history: int = 50, seed: int = 0,
                     item_length_ms: np.ndarray | None = None) -> RewardModelFit:
    """Train the session reward model on the earlier examples and report it on the newest ``eval_share``
    (per-head AUC and calibration, :func:`models.reward_model.metrics.head_report`; Spearman with
    ``examples.true_value`` when the simulator gave one). Reusable by benchmarks."""
    from models.reward_model.metrics import head_report, rank_correlation
    from models.reward_model.model import RewardModelConfig
    from models.reward_model.training import RewardTrainConfig, predict, train_reward_model

    train, later = examples.split_by_time(eval_share)
    if len(train) < 2 or len(later) < 1:
        raise ValueError(f"{len(examples)} reward examples cannot be split into a training and a later window; "
                         "collect more served sessions with rewards")
    mcfg = RewardModelConfig(n_items=len(item_sids), level_sizes=tuple(int(x) for x in level_sizes), d_model=d_model,
                             heads=2, max_history=max_history, max_session=int(examples.sessions.shape[1]))
    t0 = time.perf_counter()
    res = train_reward_model(train, mcfg, RewardTrainConfig(epochs=epochs, max_seconds=max_seconds, seed=seed),
                             item_sids=np.asarray(item_sids, dtype=np.int64), item_length_ms=item_length_ms)
    rates, value = predict(res.model, later)
    report = head_report(rates, later.targets)
    if later.true_value is not None:
        report["rm_true_spearman"] = rank_correlation(value, later.true_value)
    return RewardModelFit(res.model, report, len(train), len(later), int(later.ts.min()), time.perf_counter() - t0)


class RewardModelStore:
    """Reward models beside the registry's versions: ``<registry>/reward_models/<name>/weights.safetensors``
    and ``config.json`` (:mod:`models.reward_model.checkpoint`). The config, written last, holds the weights'
    SHA-256: a model exists only when its config does and the digest matches (a save cut midway leaves
    nothing that loads)."""

    AREA = "reward_models"

    def __init__(self, registry):
        self.registry = registry
        self.root = f"{registry.uri}/{self.AREA}"   # for messages: where the models live

    def save(self, name: str, model, metadata: dict | None = None) -> str:
        from models.reward_model.checkpoint import encode

        weights, _ = encode(model)
        meta = {**(metadata or {}), "weights_sha256": hashlib.sha256(weights).hexdigest(),
                "saved_ms": int(time.time() * 1000)}
        _, config = encode(model, meta)
        self.registry.put_artifact(self.AREA, name, "weights.safetensors", weights)
        return self.registry.put_artifact(self.AREA, name, "config.json", config)   # last: completes the model

    def names(self) -> list[str]:
        """Complete reward models, oldest first."""
        out = []
        for name in self.registry.artifact_names(self.AREA):
            raw = self.registry.read_artifact(self.AREA, name, "config.json")
            if raw is not None:
                cfg = json.loads(raw.decode())
                out.append((int(cfg.get("metadata", {}).get("saved_ms", 0)), name))
        return [n for _, n in sorted(out)]

    def load(self, name: str):
        """``(RewardModel, metadata)``; ValueError when the files are missing or do not match."""
        from models.reward_model.checkpoint import decode, read_config

        config = self.registry.read_artifact(self.AREA, name, "config.json")
        weights = self.registry.read_artifact(self.AREA, name, "weights.safetensors")
        if config is None or weights is None:
            raise ValueError(f"reward model {name!r} is not complete in {self.root}; train one (reward_model: train)")
        want = read_config(config).get("metadata", {}).get("weights_sha256")
        if want != hashlib.sha256(weights).hexdigest():
            raise ValueError(f"reward model {name!r}: weights do not match the SHA-256 in its config; train anew")
        return decode(weights, config)

    def latest(self):
        """``(name, model, metadata)`` of the newest complete reward model, or None."""
        names = self.names()
        if not names:
            return None
        model, meta = self.load(names[-1])
        return names[-1], model, meta


# ---- 4-6. one round -------------------------------------------------------------------------------

@dataclass
class AlignJobResult:
    """What one round did: the data it read, the reward model, the round, the gate, the arm."""

    parent: str
    version: str
    window: dict
    split: dict
    reward_model: str = ""
    rm_report: dict = field(default_factory=dict)
    round: object = None            # actors.aligner.RoundReport
    gate: object = None             # actors.gate_job.GateJobResult
    assigned: str = ""              # "experiment/arm" the candidate went into ("" = none)
    refused: str = ""               # why the round stopped before a verdict ("" = it got one)
    round_s: float = 0.0
    promotion: dict | None = None   # auto_promote: the decision taken before the round (promote, reasons)

    @property
    def passed(self) -> bool:
        return bool(self.gate is not None and self.gate.verdict.passed)

    @property
    def exit_code(self) -> int:
        """0: the gate passed; 1: the gate failed; 2: the round was refused (nothing published)."""
        return 0 if self.passed else (2 if self.refused else 1)

    def to_dict(self) -> dict:
        return {"parent": self.parent, "version": self.version, "window": self.window, "split": self.split,
                "reward_model": self.reward_model, "rm_report": self.rm_report,
                "round": None if self.round is None else self.round.as_dict(),
                "gate": None if self.gate is None else self.gate.stored, "assigned": self.assigned,
                "refused": self.refused, "passed": self.passed, "round_s": round(self.round_s, 3),
                "promotion": self.promotion}


def default_version(parent: str, now: float | None = None) -> str:
    """``<parent>-a<UTC time>``, e.g. ``v1-a20261207T0450``."""
    return f"{parent}-a{time.strftime('%Y%m%dT%H%M%S', time.gmtime(time.time() if now is None else now))}"[:64]


def served_sessions(window: WindowData, split, item_ids):
    """Feedback mode's :class:`actors.aligner.ServedSessions`: the window's served sessions with a reward,
    of users in the split, items as catalog indices (unknown items become empty slots)."""
    from actors.aligner import ServedSessions

    uindex = {str(u): k for k, u in enumerate(split.user_ids)}
    index = {str(i): k for k, i in enumerate(item_ids)}
    by_id = {s.request_id: s for s in window.served}
    rows = [(by_id[r.request_id], r) for r in window.rewards if r.request_id in by_id]
    rows = [(s, r) for s, r in rows if str(s.user_id) in uindex and s.items]
    if not rows:
        return None
    k = max(len(s.items) for s, _ in rows)
    items = np.full((len(rows), k), -1, dtype=np.int64)
    for j, (s, _) in enumerate(rows):
        for p, it in enumerate(s.items):
            items[j, p] = index.get(str(it), -1)
    return ServedSessions(np.array([uindex[str(s.user_id)] for s, _ in rows], dtype=np.int64), items,
                          np.array([r.reward for _, r in rows], dtype=np.float64),
                          np.array([r.components.get("dislikes", 0.0) > 0 for _, r in rows], dtype=bool))


def run_align_round(cfg: AlignJobConfig, *, parent: str | None = None, version: str | None = None, world=None,
                    say: Callable[[str], None] = log.info) -> AlignJobResult:
    """One round (see the module docstring). ``world``: the synthetic world when the deployment is the
    simulator (true scorer of the round, canary of the gate); otherwise the gate config's ``world`` decides."""
    from actors.aligner import AlignmentError, RayTrainConfig, RoundData, WorldValueScorer, run_round
    from actors.gate_job import make_world, run_gate_job
    from actors.model_registry import ModelRegistry, RegistryError
    from actors.train_job import Interactions
    from models.reward_model.scorer import RewardModelScorer

    t0 = time.time()
    registry = ModelRegistry(cfg.registry)
    promotion = promote_if_won(cfg, registry, say) if cfg.auto_promote and not parent else None
    parent = parent or registry.promoted()
    if not parent:
        raise RegistryError(f"no parent: the registry {registry.uri} has no promoted version; name one with "
                            "--parent or promote one (genrec models promote)")
    version = version or default_version(parent)
    bundle = registry.load(parent)
    if not bundle.item_ids or bundle.item_sids is None or not len(bundle.item_sids):
        raise RegistryError(f"parent {parent!r} carries no catalog (item ids and SIDs); align versions published "
                            "with their catalog (genrec train --registry)")
    item_ids = [str(i) for i in bundle.item_ids]
    gate_cfg, align_cfg = cfg.gate_config(), cfg.align_config()

    window = read_window(cfg.archive, cfg.window_days)
    split, sc = split_in_catalog(window.user_events, item_ids, window.start_ms, window.end_ms)
    res = AlignJobResult(parent, version, window.as_dict(), dict(sc), promotion=promotion)
    say(f"window {time.strftime('%Y-%m-%d %H:%M', time.gmtime(window.start_ms / 1000))} .. "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(window.end_ms / 1000))} UTC: {len(window.served):,} served "
        f"sessions, {len(window.rewards):,} rewards; split of {split.n_users:,} users over the parent's "
        f"{len(item_ids):,} items ({sc['unknown_item']:,} events of unknown items dropped)")

    scorer, served = None, None
    if cfg.mode == "reward_model":
        store = RewardModelStore(registry)
        latest = store.latest() if cfg.reward_model == "latest" else None
        if latest is not None:
            res.reward_model, model, meta = latest
            res.rm_report = dict(meta.get("report", {}))
            say(f"reward model: the latest stored one, {res.reward_model!r}")
        else:
            ex, ec = reward_examples(window, item_ids, bundle.model.cfg.session_len, cfg.max_history)
            if len(ex) < cfg.min_examples:
                res.refused = (f"{len(ex)} served sessions with rewards in the window (< min_examples "
                               f"{cfg.min_examples}): not enough to train a reward model; widen --window-days or "
                               "let rewards flow longer")
                res.round_s = time.time() - t0
                say(res.refused)
                return res
            fit = fit_reward_model(ex, bundle.item_sids, bundle.model.cfg.level_sizes, eval_share=cfg.rm_eval_share,
                                   d_model=cfg.rm_d_model, epochs=cfg.rm_epochs, max_seconds=cfg.rm_max_seconds,
                                   max_history=cfg.max_history, seed=align_cfg.seed,
                                   item_length_ms=_item_lengths(window, item_ids))
            model, res.rm_report = fit.model, fit.report
            say(fit.summary())
            res.reward_model = version
            store.save(version, model, {"parent": parent, "window": res.window, "report": fit.report,
                                        "n_train": fit.n_train, "n_eval": fit.n_eval, "counters": dict(ec)})
        scorer = RewardModelScorer(model)
    else:
        served = served_sessions(window, split, item_ids)
        if served is None:
            res.refused = "feedback mode: no served session with a reward in the window; let rewards flow"
            res.round_s = time.time() - t0
            say(res.refused)
            return res

    if world is None and gate_cfg.world not in ("auto", "none"):
        world = make_world(gate_cfg)
    truth = WorldValueScorer(world, item_ids) if world is not None else None
    ray_train = RayTrainConfig(num_workers=cfg.ray_workers) if cfg.ray_workers else None
    try:
        report = run_round(align_cfg, registry, RoundData(split, item_sids=bundle.item_sids, served=served), scorer,
                           parent=parent, version=version, true_scorer=truth, ray_train=ray_train,
                           data_window={**res.window, "reward_model": res.reward_model, "archive": cfg.archive},
                           say=say)
    except AlignmentError as e:
        res.refused = f"round refused: {e}"
        res.round_s = time.time() - t0
        say(res.refused)
        return res
    res.round = report
    if not report.published:
        res.refused = report.refused
        res.round_s = time.time() - t0
        return res

    data = Interactions(split, [""] * split.n_items, f"archive:{cfg.archive}[window]")
    res.gate = run_gate_job(registry, version, parent, gate_cfg, data=data, world=world, say=say)
    if res.passed and cfg.experiment:
        from serving.rollout import assign_arm_model

        assign_arm_model(cfg.experiments_file, cfg.experiment, cfg.arm, version, registry)
        res.assigned = f"{cfg.experiment}/{cfg.arm}"
        say(f"{version} now serves arm {cfg.arm!r} of {cfg.experiment!r} in {cfg.experiments_file} "
            "(replicas: POST /v1/admin/experiments/reload)")
    res.round_s = time.time() - t0
    return res


def promote_if_won(cfg: AlignJobConfig, registry, say: Callable[[str], None] = log.info) -> dict | None:
    """``auto_promote``: promote the experiment arm's model when its report (from the archive) says it won.

    Returns the decision (``promote``, ``reasons``, ``promoted``: the version made default, or None), or None
    when there is nothing to decide yet (no model in the arm, no rewards of the experiment). A refusal by
    the registry (the version's gate failed or never ran) is reported, never forced.
    """
    from serving.experiments.config import ExperimentsConfig
    from serving.experiments.promotion import PromotionRule
    from serving.experiments.report import read_archive_report_records, rewards_of
    from serving.rollout import decide_and_promote

    exp = ExperimentsConfig.from_yaml(Path(cfg.experiments_file)).experiment(cfg.experiment)
    arm = next((a for a in exp.arms if a.name == cfg.arm), None)
    if arm is None or not arm.model_version:
        say(f"auto-promote: arm {cfg.arm!r} of {cfg.experiment!r} serves no model version yet: nothing to decide")
        return None
    records = read_archive_report_records(cfg.archive)
    if not rewards_of(exp.name, records["rewards"]):
        say(f"auto-promote: no rewards of {exp.name!r} in {cfg.archive} yet: nothing to decide")
        return None
    decision, promoted, refused = decide_and_promote(exp, cfg.arm, arm.model_version, records, registry,
                                                     PromotionRule(min_users=cfg.promote_min_users))
    say("auto-promote: " + decision.summary())
    if promoted:
        say(f"auto-promote: {promoted} is now the promoted version (replicas follow it); the next round starts "
            "from it")
    if refused:
        say(f"auto-promote: {refused}")
    return {"arm": cfg.arm, "version": arm.model_version, "promote": decision.promote,
            "reasons": list(decision.reasons) + ([refused] if refused else []), "promoted": promoted}


# ---- continuous mode ------------------------------------------------------------------------------

class StopRequested(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT while a continuous job runs (aborts a round midway)."""


def run_every(round_fn: Callable[[], object], every_s: float, *, stop: threading.Event | None = None,
              max_rounds: int = 0, install_signals: bool = True,
              say: Callable[[str], None] = log.info) -> list:
    """Call ``round_fn`` now and then every ``every_s`` seconds (from the start of each round) until
    SIGTERM / SIGINT, ``stop`` is set, or ``max_rounds`` (0 = no limit) ran. A failing round is logged
    and the loop goes on; a stop request aborts a running round (:class:`StopRequested`). Returns the rounds'
    results (an exception object for a failed round)."""
    stop = stop or threading.Event()
    results: list = []
    old = {}

    def handler(signum, _frame):
        stop.set()
        raise StopRequested(signal.Signals(signum).name)

    if install_signals and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            old[s] = signal.signal(s, handler)
    try:
        while not stop.is_set():
            t = time.monotonic()
            try:
                results.append(round_fn())
            except StopRequested:
                raise
            except Exception as e:  # noqa: BLE001 - one bad round must not end the continuous job
                log.exception("alignment round failed")
                say(f"round failed: {type(e).__name__}: {e}")
                results.append(e)
            if max_rounds and len(results) >= max_rounds:
                break
            wait = max(0.0, every_s - (time.monotonic() - t))
            say(f"next round in {wait:.0f} s")
            stop.wait(wait)
    except StopRequested as e:
        say(f"stopped by {e}: the registry holds only complete versions; the next start begins a fresh round")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return results
