"""One round of Iterative Preference Alignment: parent version in, gated candidate version out.

OneRec's IPA (Deng et al. 2025, arXiv 2502.18965) with DPO (Rafailov et al. 2023), the math in
:mod:`models.alignment`. A round (:func:`run_round`):

1. loads the parent version from the registry (:class:`actors.model_registry.ModelRegistry`); it is both
   the policy's starting point and the frozen reference;
2. samples ``user_share`` of the users and generates N candidate sessions for each with the parent:
   the final beam of a **constrained** beam search of width N (:func:`models.decoding.beam_all.beam_candidates`),
   or N constrained samples; every generated item is checked against the catalog (validity must be 100%);
3. scores them with a *scorer* (``score(histories, sessions) -> [U, N]``, the reward model or, on the
   simulator, the world's true value), takes chosen = best, rejected = worst (or one of the bottom k),
   and keeps the ``pair_keep_share`` of the pairs with the largest relative score gap;
   in ``feedback`` mode it uses served sessions' real rewards as ±1 advantages instead (OneRec-V2);
4. trains NTP on fresh data + λ·DPO through Ray Train (``TorchTrainer``, ``num_workers`` data-parallel
   workers; one on this machine) or in-process; the narrowing guard (:mod:`models.alignment.guard`)
   snapshots the policy every ``guard_every`` steps and keeps the last snapshot whose NDCG@10 on the
   split's held-out users not sampled for pairs stays within ``guard_max_drop`` of the parent's (none
   holding: not published);
5. measures: NTP / DPO loss, reward margin, KL to the reference, validity, coverage@10, HR@50 and
   NDCG@10 on the held-out split for parent and candidate, and the scorer's predicted gain beside the
   true gain when a ``true_scorer`` (the simulator) is given. A predicted gain without a true gain is
   reward hacking: the round says so and does not publish;
6. publishes the candidate atomically with the round's metrics (the registry writes ``meta.json`` last,
   so a round killed at any point leaves no version). Gating and rollout are the registry's / gate's job.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from actors.ray_train import RayTrainConfig, RayTrainError, Worker, run_ray_training  # RayTrainConfig: re-exported
from models.alignment.config import AlignConfig
from models.alignment.guard import GuardResult, is_checkpoint, keep_checkpoint
from models.alignment.logprob import session_logprob, token_kl, token_logprobs
from models.alignment.pairs import feedback_advantages, select_pairs
from models.alignment.train import AlignData, FeedbackData, PairData, train_alignment
from models.evaluation.metrics import validity
from models.evaluation.ranker import Histories, seen_mask
from models.evaluation.splits import LeaveOneOut
from models.generator.model import GenerativeRecommender, HistoryBatch

log = logging.getLogger(__name__)


# ---- inputs ------------------------------------------------------------------------------------

class Scorer(Protocol):
    """Scores candidate sessions: ``sessions`` int64 [U, N, K] catalog item indices (−1 empty) of the users
    whose ``histories`` are given -> float [U, N] (higher = better). The aligner passes
    :class:`UserHistories`, so a scorer may read ``histories.user_ids`` (raw ids) too."""

    def score(self, histories: Histories, sessions: np.ndarray) -> np.ndarray: ...


@dataclass
class UserHistories(Histories):
    """:class:`Histories` that also name their users (raw ids), for scorers that need them (the simulator)."""

    user_ids: list | None = None


@dataclass
class ServedSessions:
    """Feedback mode's data: M sessions served to users with their real rewards (OneRec-V2).

    ``users`` [M] user indices of the split; ``items`` [M, K] catalog item indices served (−1 empty);
    ``rewards`` [M]; ``disliked`` [M] bool (optional). The history of each is the user's training
    history in the split (what the policy saw when serving).
    """

    users: np.ndarray
    items: np.ndarray
    rewards: np.ndarray
    disliked: np.ndarray | None = None


@dataclass
class RoundData:
    """What a round reads: the leave-one-out split (the users it samples, its held-out comparison and, by
    default, its fresh NTP data) and, optionally, the catalog SIDs (default: the parent version's), served
    sessions for feedback mode and ``ntp_split``: the fresh window's NTP data when it is wider than the
    users the round may sample (OneRec IPA: NTP on the fresh data, DPO on a small share of users — NTP on
    the sampled users' data alone forgets everyone else). Only ``ntp_split.train()`` is read, so its
    held-out items stay unseen. Item index ``i`` of every split must be item ``i`` of the catalog."""

    split: LeaveOneOut
    item_sids: np.ndarray | None = None   # [n_items, D]
    served: ServedSessions | None = None
    ntp_split: LeaveOneOut | None = None


class AlignmentError(RuntimeError):
    """A round that cannot run (no users, no pairs, a broken catalog); the message names the fix."""


@dataclass
class RoundReport:
    """What one round did and measured; stored as the candidate's metrics in the registry."""

    parent: str
    version: str
    mode: str
    published: bool = False
    refused: str = ""                  # why the round did not publish ("" when it did)
    reward_hacking: bool = False
    guard_refused: bool = False        # the narrowing guard found no snapshot within its bound
    backend: str = "inprocess"         # "ray" (Ray Train) or "inprocess"
    n_users: int = 0
    n_candidates: int = 0
    n_pairs: int = 0
    eval_heldout: bool = False         # parent vs candidate compared on users the round did not train on
    steps: int = 0
    guard_step: int = 0                # the step the narrowing guard kept (0: no guard, or none held)
    guard_users: int = 0               # held-out users the guard ranked
    guard_ndcg_parent: float = float("nan")
    guard_ndcg: float = float("nan")   # NDCG@10 of the kept snapshot on the guard's users
    guard_checked: list = field(default_factory=list)   # [step, NDCG@10] of the snapshots evaluated, newest first
    ntp_examples: int = 0              # fresh NTP examples the round trained on (RoundData.ntp_split's, else split's)
    ntp_loss: float = float("nan")     # mean over the last quarter of steps
    dpo_loss: float = float("nan")     # same (feedback mode: the bounded loss)
    reward_margin: float = float("nan")  # β·(Δ_chosen − Δ_rejected) of all pairs after training
    margin_before: float = float("nan")  # log π(chosen) − log π(rejected), parent
    margin_after: float = float("nan")   # same, candidate
    pair_accuracy: float = float("nan")  # share of pairs with a positive reward margin after training
    kl_ref: float = float("nan")       # exact KL(π_θ ‖ π_ref) summed over a session, on the candidate's sessions
    validity: float = float("nan")     # share of generated items that are catalog items (must be 1)
    coverage10_parent: float = float("nan")
    coverage10: float = float("nan")
    hr50_parent: float = float("nan")
    hr50: float = float("nan")
    ndcg10_parent: float = float("nan")
    ndcg10: float = float("nan")
    predicted_value_parent: float = float("nan")
    predicted_value: float = float("nan")
    predicted_gain: float = float("nan")
    true_value_parent: float | None = None
    true_value: float | None = None
    true_gain: float | None = None
    round_s: float = 0.0
    train_s: float = 0.0
    config: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        tg = "n/a" if self.true_gain is None else f"{self.true_gain:+.4f}"
        return (f"align {self.parent} -> {self.version} [{self.mode}, {self.backend}]: {self.n_pairs} pairs / "
                f"{self.n_users} users, ntp {self.ntp_loss:.4f} dpo {self.dpo_loss:.4f} "
                f"margin {self.reward_margin:+.4f} kl {self.kl_ref:.4f}; validity {self.validity:.3f}; "
                f"ndcg@10 {self.ndcg10_parent:.4f}->{self.ndcg10:.4f} hr@50 {self.hr50_parent:.4f}->{self.hr50:.4f} "
                f"cov@10 {self.coverage10_parent:.3f}->{self.coverage10:.3f}; "
                + (f"guard kept step {self.guard_step}/{self.steps} (ndcg@10 {self.guard_ndcg_parent:.4f}->"
                   f"{self.guard_ndcg:.4f} on {self.guard_users} held-out users); " if self.guard_users else "")
                + f"predicted gain {self.predicted_gain:+.4f}, true gain {tg}; "
                + ("published" if self.published else f"NOT published: {self.refused}"))


# ---- scorers -----------------------------------------------------------------------------------

class WorldValueScorer:
    """The synthetic world's true value of sessions (:meth:`ingest.synthetic.SyntheticWorld.expected_values`),
    as a :class:`Scorer`: the simulator's ground truth, for tests and the true-gain check.

    ``item_ids`` [n_items] raw ids of the catalog indices; ``ts`` the time the sessions are served
    (default: the end of the world's stream); ``draws`` Monte-Carlo draws (common random numbers, so the
    difference of two sessions' values has little noise). Needs ``histories.user_ids`` (:class:`UserHistories`).
    """

    def __init__(self, world, item_ids, ts: int | None = None, draws: int | None = None, seed: int = 0) -> None:
        self.world = world
        self.item_ids = [str(i) for i in item_ids]
        self.ts = int(ts if ts is not None else world.cfg.start_ts_ms + world.cfg.duration_ms)
        self.draws, self.seed = draws, seed

    def score(self, histories: Histories, sessions: np.ndarray) -> np.ndarray:
        users = getattr(histories, "user_ids", None)
        if users is None:
            raise ValueError("WorldValueScorer needs the users' raw ids: pass UserHistories(user_ids=...)")
        sessions = np.asarray(sessions, dtype=np.int64)                       # [U, N, K]
        U, N, _ = sessions.shape
        uid = [str(users[u]) for u in range(U) for _ in range(N)]
        sess = [[self.item_ids[i] for i in row if i >= 0] for row in sessions.reshape(U * N, -1)]
        vals = self.world.expected_values(uid, sess, self.ts, draws=self.draws, seed=self.seed)
        return np.asarray(vals, dtype=np.float64).reshape(U, N)


def reward_hacking(predicted_gain: float, predicted_parent: float, true_gain: float, true_parent: float,
                   tolerance: float) -> bool:
    """True when the scorer predicts a relative gain above ``tolerance`` and the true value does not rise:
    the aligned model learnt what the scorer likes, not what users value."""
    rel_pred = predicted_gain / max(abs(predicted_parent), 1e-9)
    rel_true = true_gain / max(abs(true_parent), 1e-9)
    return bool(rel_pred > tolerance and rel_true <= 0.0)


# ---- helpers -----------------------------------------------------------------------------------

def _hist_batch(model: GenerativeRecommender, h: Histories, item_sids: np.ndarray) -> HistoryBatch:
    from models.generator.features import history_batch

    c = model.cfg
    return history_batch(h.items, item_sids, c.max_history, c.n_time_buckets, types=h.types, ts=h.ts)


def _sids_of(items: np.ndarray, item_sids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Catalog indices [..., K] (−1 empty) -> codes [..., K, D] (0 where empty) and mask [..., K]."""
    items = np.asarray(items, dtype=np.int64)
    mask = items >= 0
    sids = np.where(mask[..., None], item_sids[np.maximum(items, 0)], 0)
    return torch.from_numpy(np.ascontiguousarray(sids)), torch.from_numpy(mask)


def generate_candidates(model: GenerativeRecommender, histories: Histories, item_sids: np.ndarray, trie,
                        cfg: AlignConfig, *, n: int | None = None, batch_size: int = 64
                        ) -> tuple[np.ndarray, np.ndarray]:
    """N constrained candidate sessions per user (seen items excluded): items int64 [U, N, K] (−1 empty)
    and the decoder's log-probabilities [U, N]. ``cfg.generation`` picks beam (the final beam of width
    N) or N samples; ``n`` overrides N (1 with beam = the served session, :func:`beam_session`'s)."""
    from models.decoding.beam_all import beam_candidates
    from models.decoding.constraint import SidConstraint
    from models.decoding.generate import generate
    from models.decoding.settings import DecodeSettings

    n = n or cfg.n_candidates
    K = model.cfg.session_len
    constraint = SidConstraint.of(trie, "cpu")
    items, scores = [], []
    n_items = len(item_sids)
    for s in range(0, len(histories), batch_size):
        h = histories.subset(slice(s, s + batch_size))
        hb = _hist_batch(model, h, item_sids)
        seen = seen_mask(h, n_items)
        if cfg.generation == "beam" or n == 1:
            res = beam_candidates(model, hb, constraint, beam_width=n, session_len=K, seen=seen)
            items.append(res.items.numpy())
            scores.append(res.scores.numpy())
        else:
            b = len(h)
            rep = torch.arange(b).repeat_interleave(n)
            hb_rep = HistoryBatch(*(t[rep] for t in hb))
            st = DecodeSettings(mode="sample", temperature=cfg.temperature, seed=cfg.seed + s, session_len=K)
            res = generate(model, hb_rep, constraint, st, seen=seen[rep])
            items.append(res.items.numpy().reshape(b, n, K))
            scores.append(res.scores.sum(-1).numpy().reshape(b, n))
    if not items:
        return np.zeros((0, n, K), np.int64), np.zeros((0, n))
    return np.concatenate(items), np.concatenate(scores)


def _score(scorer, histories: UserHistories, sessions: np.ndarray) -> np.ndarray:
    out = np.asarray(scorer.score(histories, sessions), dtype=np.float64)
    if out.shape != sessions.shape[:2]:
        raise AlignmentError(f"the scorer returned shape {out.shape} for sessions {sessions.shape}; it must "
                             "return one score per session [U, N]")
    return out


@torch.no_grad()
def _logprobs(model, hb: HistoryBatch, sids: torch.Tensor, mask: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([session_logprob(model, HistoryBatch(*(t[s:s + batch] for t in hb)), sids[s:s + batch],
                                      mask[s:s + batch]) for s in range(0, len(sids), batch)]) \
        if len(sids) else torch.zeros(0)


def offline_metrics(model: GenerativeRecommender, split: LeaveOneOut, item_sids: np.ndarray, trie,
                    max_users: int) -> dict[str, float]:
    """HR@50, NDCG@10 and coverage@10 on the held-out test split (the narrowing watch), full ranking;
    ``ndcg10_per_user`` [U] for paired comparisons."""
    from models.evaluation.generator_ranker import GeneratorRanker
    from models.evaluation.metrics import MetricsConfig, evaluate_ranking, ndcg_per_case, target_ranks

    cases = split.test()
    if max_users and len(cases) > max_users:
        cases = cases.subset(np.arange(max_users))
    ranked = GeneratorRanker(model, item_sids, beam_width=50, trie=trie).rank(cases.histories, 50)
    m = evaluate_ranking(ranked, cases.targets, len(item_sids), MetricsConfig(hr_ks=(50,), ndcg_ks=(10,),
                                                                               coverage_k=10))
    return {"hr50": m["hr@50"], "ndcg10": m["ndcg@10"], "coverage10": m["coverage@10"],
            "invalid_rate": m["invalid_rate"], "ndcg10_per_user": ndcg_per_case(target_ranks(ranked, cases.targets), 10)}


@torch.no_grad()
def guard_ndcg(model: GenerativeRecommender, cases, item_sids: np.ndarray, trie, beam: int = 50) -> float:
    """NDCG@10 of ``model`` on held-out ``cases`` (:class:`models.evaluation.splits.Cases`), full ranking by
    constrained beam search of width ``beam`` (the narrowing guard's measure, as :func:`offline_metrics`)."""
    from models.evaluation.generator_ranker import GeneratorRanker
    from models.evaluation.metrics import ndcg_per_case, target_ranks

    ranked = GeneratorRanker(model.eval(), item_sids, beam_width=beam, trie=trie).rank(cases.histories, beam)
    return float(ndcg_per_case(target_ranks(ranked.cpu().numpy(), cases.targets), 10).mean())


def train_guarded(model, core: GenerativeRecommender, data: AlignData, cfg: AlignConfig, guard_cases=None, *,
                  rank: int = 0, world_size: int = 1, device="cpu") -> tuple[list[dict], GuardResult | None]:
    """:func:`models.alignment.train.train_alignment` with the narrowing guard: rank 0 snapshots the policy at
    :func:`~models.alignment.guard.is_checkpoint` steps (in host memory: ``steps / guard_every`` copies of
    the weights), and after the last step loads the snapshot :func:`~models.alignment.guard.keep_checkpoint`
    keeps (the last step's when none held: the round measures and refuses it). Every worker takes all
    ``cfg.steps`` steps (data-parallel workers must); only rank 0's weights come back.
    ``guard_cases`` None or ``cfg.guard_every`` 0: no guard (the last step is kept)."""
    if guard_cases is None or not cfg.guard_every or rank != 0:
        return train_alignment(model, core, data, cfg, rank=rank, world_size=world_size, device=device), None
    from models.evaluation.generator_ranker import build_trie

    trie = build_trie(data.item_sids, core.cfg.level_sizes)
    snap = lambda: {k: v.detach().to("cpu", copy=True) for k, v in core.state_dict().items()}  # noqa: E731
    parent_ndcg = guard_ndcg(core, guard_cases, data.item_sids, trie)
    core.eval()                                   # the ranker left it in eval; training keeps dropout off too
    snaps: dict[int, dict] = {}

    def on_step(i: int, _m: dict) -> None:
        if is_checkpoint(i + 1, cfg.steps, cfg.guard_every):
            snaps[i + 1] = snap()

    hist = train_alignment(model, core, data, cfg, rank=rank, world_size=world_size, device=device, on_step=on_step)

    def ndcg_at(step: int) -> float:
        core.load_state_dict(snaps[step])
        return guard_ndcg(core, guard_cases, data.item_sids, trie)

    res = keep_checkpoint(parent_ndcg, list(snaps), ndcg_at, cfg.guard_max_drop, n_users=len(guard_cases.targets))
    # none held: the last step comes back, to be measured (reward hacking too) and refused, never published
    core.load_state_dict(snaps[res.kept_step if res.held else max(snaps)])
    return hist, res


# ---- training backends -------------------------------------------------------------------------

def _tail_mean(history: list[dict], key: str) -> float:
    vals = [h[key] for h in history if key in h]
    if not vals:
        return float("nan")
    tail = vals[-max(1, len(vals) // 4):]
    return float(np.mean(tail))


_METRIC_KEYS = ("loss", "ntp_loss", "dpo_loss", "feedback_loss", "reward_margin")


def _align_worker(worker: Worker, core: GenerativeRecommender, payload: dict) -> dict:
    """One Ray Train worker's part of a round (:func:`actors.ray_train.run_ray_training`'s ``worker_fn``):
    its shard of the pairs and NTP examples, the model DDP-wrapped when there are several workers; returns
    the tail means of its step metrics."""
    # an MoE decoder leaves unrouted experts without gradients: DDP must look for unused parameters
    model = worker.wrap(core, find_unused_parameters=bool(core.cfg.moe_experts))
    hist, guard = train_guarded(model, core, payload["data"], payload["align_cfg"], payload.get("guard"),
                                rank=worker.rank, world_size=worker.world_size, device=worker.device)
    metrics = {k: _tail_mean(hist, k) for k in _METRIC_KEYS}
    metrics["steps"] = len(hist)
    if guard is not None:
        metrics["guard"] = guard.to_dict()
    return metrics


def train_with_ray(policy: GenerativeRecommender, data: AlignData, cfg: AlignConfig,
                   ray_cfg: RayTrainConfig, guard_cases=None) -> tuple[GenerativeRecommender, dict]:
    """Run :func:`train_guarded` through Ray Train's ``TorchTrainer``
    (:func:`actors.ray_train.run_ray_training`); returns the trained policy (read back from rank 0's
    safetensors checkpoint) and rank 0's metrics (``guard``: the guard's result, when it ran)."""
    import functools

    try:
        res = run_ray_training(_align_worker, functools.partial(GenerativeRecommender, policy.cfg), policy,
                               {"data": data, "align_cfg": cfg, "guard": guard_cases}, ray_cfg, name="align")
    except RayTrainError as e:
        raise AlignmentError(str(e)) from None
    out = GenerativeRecommender(policy.cfg)
    out.load_state_dict(res.state)
    return out.eval(), res.metrics


def train_in_process(policy: GenerativeRecommender, data: AlignData, cfg: AlignConfig,
                     guard_cases=None) -> tuple[GenerativeRecommender, dict]:
    """The same loop in this process (unit tests, quick runs)."""
    hist, guard = train_guarded(policy, policy, data, cfg, guard_cases)
    m = {k: _tail_mean(hist, k) for k in _METRIC_KEYS}
    m["steps"] = len(hist)
    if guard is not None:
        m["guard"] = guard.to_dict()
    return policy.eval(), m


# ---- the round ---------------------------------------------------------------------------------

def _sample_users(split: LeaveOneOut, cfg: AlignConfig) -> np.ndarray:
    """User indices with a training history, ``user_share`` of them (at most ``max_users``), seeded."""
    train = split.train()
    have = np.array([u for u in range(split.n_users) if len(train.items[u])], dtype=np.int64)
    n = max(1, int(round(cfg.user_share * len(have))))
    if cfg.max_users:
        n = min(n, cfg.max_users)
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.choice(have, size=min(n, len(have)), replace=False)) if len(have) else have


def _eval_users(split: LeaveOneOut, sampled: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray, bool]:
    """Users whose sessions compare parent and candidate: users the round did NOT train on (the gain must
    generalise), ``eval_users`` of them, seeded; the sampled users themselves when no other user is left."""
    train = split.train()
    rest = np.array([u for u in range(split.n_users) if len(train.items[u]) and u not in set(sampled.tolist())],
                    dtype=np.int64)
    pool, heldout = (rest, True) if len(rest) else (sampled, False)
    if cfg.eval_users and len(pool) > cfg.eval_users:
        pool = np.sort(np.random.default_rng([cfg.seed, 1]).choice(pool, cfg.eval_users, replace=False))
    return pool, heldout


def _user_histories(split: LeaveOneOut, users: np.ndarray) -> UserHistories:
    """The training-part histories of ``users`` (the held-out validation / test items stay unseen)."""
    tr = split.train()
    return UserHistories([tr.items[u] for u in users], [tr.ts[u] for u in users], [tr.types[u] for u in users],
                         user_ids=[split.user_ids[u] for u in users])


def _guard_cases(split: LeaveOneOut, cfg: AlignConfig, sampled: np.ndarray | None = None):
    """The narrowing guard's held-out users: the split's test cases (their last item is never trained on)
    of users the round did not sample for pairs (DPO trains on their histories, so they would read
    higher than users the round never saw; all of them when every user was sampled), ``guard_users`` of
    them at most (seeded), or None when the split has none."""
    cases = split.test()
    if not len(cases):
        return None
    if sampled is not None and len(sampled):
        rest = np.flatnonzero(~np.isin(cases.users, sampled))
        if len(rest):
            cases = cases.subset(rest)
    if cfg.guard_users and len(cases) > cfg.guard_users:
        cases = cases.subset(np.sort(np.random.default_rng([cfg.seed, 2]).choice(len(cases), cfg.guard_users,
                                                                                   replace=False)))
    return cases


def _ntp_examples(split: LeaveOneOut, n_items: int, session_len: int):
    from models.generator.features import FlatEvents
    from models.generator.sessions import SessionConfig, build_sessions

    tr = split.train()
    ev = FlatEvents.from_sequences(tr.items, tr.types, tr.ts, n_items=n_items)
    return build_sessions(ev, SessionConfig(session_len=session_len))


def run_round(config: AlignConfig, registry, data: RoundData, scorer: Scorer | None, *, parent: str,
              version: str, true_scorer: Scorer | None = None, ray_train: RayTrainConfig | None = None,
              data_window: dict | None = None,
              before_publish: Callable[[GenerativeRecommender, RoundReport], None] | None = None,
              say: Callable[[str], None] = log.info) -> RoundReport:
    """One alignment round from ``parent`` to a candidate ``version`` (see the module docstring).

    ``scorer`` scores sessions in ``reward_model`` mode (in ``feedback`` mode it is optional and only
    gives the predicted gain); ``true_scorer`` is the simulator's truth (enables the reward-hacking stop);
    ``ray_train`` None trains in this process, else through Ray Train. ``before_publish(model, report)``
    is called just before the publish (a hook for the gate or tests). Returns the :class:`RoundReport`;
    the candidate is published only when validity is 100% and no reward hacking was seen.
    """
    t0 = time.time()
    cfg = config
    if cfg.mode == "reward_model" and scorer is None:
        raise AlignmentError("mode 'reward_model' needs a scorer (the session reward model); or use mode='feedback'")
    if cfg.mode == "feedback" and data.served is None:
        raise AlignmentError("mode 'feedback' needs served sessions with rewards (RoundData.served)")
    if any(v.version == version for v in registry.versions()):
        raise AlignmentError(f"version {version!r} already exists in {registry.uri}; name the candidate anew")
    bundle = registry.load(parent)
    ref: GenerativeRecommender = bundle.model.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    split = data.split
    item_sids = data.item_sids if data.item_sids is not None else bundle.item_sids
    item_sids = None if item_sids is None else np.asarray(item_sids, dtype=np.int64)
    if item_sids is None or item_sids.ndim != 2 or len(item_sids) != split.n_items:
        raise AlignmentError(f"catalog SIDs {None if item_sids is None else item_sids.shape} do not cover the "
                             f"split's {split.n_items} items; pass RoundData(item_sids=...) in split item order")
    if bundle.item_ids and [str(i) for i in bundle.item_ids] != [str(i) for i in split.item_ids]:
        raise AlignmentError("the parent's catalog item_ids are not the split's items in order; build the split "
                             "from the same catalog (item index i must be item i)")
    ntp_split = data.ntp_split if data.ntp_split is not None else split
    if ntp_split.n_items != split.n_items:
        raise AlignmentError(f"ntp_split has {ntp_split.n_items} items, the split {split.n_items}; build both from "
                             "the same catalog (item index i must be item i)")
    from models.evaluation.generator_ranker import build_trie

    trie = build_trie(item_sids, ref.cfg.level_sizes)
    K = ref.cfg.session_len
    report = RoundReport(parent=parent, version=version, mode=cfg.mode, backend="ray" if ray_train else "inprocess",
                         n_candidates=cfg.n_candidates, config=cfg.to_dict())

    # -- 1. users, candidates, pairs (or served feedback) --
    users = _sample_users(split, cfg)
    if not len(users):
        raise AlignmentError("no user has a training history in the split; nothing to align on")
    hist = _user_histories(split, users)
    hb = _hist_batch(ref, hist, item_sids)
    report.n_users = len(users)
    pairs = feedback = None
    gen_items: list[np.ndarray] = []
    if cfg.mode == "reward_model":
        cand, _ = generate_candidates(ref, hist, item_sids, trie, cfg)                 # [U, N, K]
        gen_items.append(cand)
        scores = _score(scorer, hist, cand)                                             # [U, N]
        full = (cand >= 0).all(-1)
        p = select_pairs(scores, full, bottom_k=cfg.bottom_k, min_gap=cfg.min_score_gap,
                         keep_share=cfg.pair_keep_share, rng=np.random.default_rng(cfg.seed))
        report.n_pairs = len(p)
        say(f"round {version}: {len(users)} users x {cfg.n_candidates} candidates, {len(p)} pairs "
            f"(mean score gap {float(p.gap.mean()) if len(p) else 0.0:.4f})")
        if not len(p):
            raise AlignmentError("no preference pairs: every user's candidates score the same; raise "
                                 "n_candidates or check the scorer")
        cs, cm = _sids_of(cand[p.user, p.chosen], item_sids)
        rs, rm = _sids_of(cand[p.user, p.rejected], item_sids)
        ph = HistoryBatch(*(t[torch.from_numpy(p.user)] for t in hb))
        pairs = PairData(ph, cs, cm, rs, rm, _logprobs(ref, ph, cs, cm), _logprobs(ref, ph, rs, rm))
    else:
        sv = data.served
        adv = feedback_advantages(sv.users, sv.rewards, sv.disliked)
        keep = np.flatnonzero(adv != 0)
        report.n_pairs = len(keep)
        if not len(keep):
            raise AlignmentError("no served session differs from its user's mean reward; nothing to learn")
        fh = _user_histories(split, np.asarray(sv.users)[keep])
        fhb = _hist_batch(ref, fh, item_sids)
        ss, sm = _sids_of(np.asarray(sv.items)[keep], item_sids)
        with torch.no_grad():
            old = token_logprobs(ref(fhb, torch.where(sm[..., None], ss, 0)).logits, ss)      # [M, K, D]
        feedback = FeedbackData(fhb, ss, sm, torch.from_numpy(adv[keep].astype(np.int64)), old)
        say(f"round {version}: feedback mode, {len(keep)} served sessions with a ±1 advantage")

    # -- 2. train --
    ntp = _ntp_examples(ntp_split, len(item_sids), K)
    report.ntp_examples = len(ntp)
    adata = AlignData(ntp, item_sids, pairs, feedback)
    policy = copy.deepcopy(ref)
    for p_ in policy.parameters():
        p_.requires_grad_(True)
    guard_cases = _guard_cases(split, cfg, users if cfg.mode == "reward_model" else None) if cfg.guard_every else None
    if cfg.guard_every and guard_cases is None:
        say(f"round {version}: no held-out user in the split, so the NDCG guard cannot run; the last step is kept")
    t_train = time.time()
    if ray_train is not None:
        policy, tm = train_with_ray(policy, adata, cfg, ray_train, guard_cases)
    else:
        policy, tm = train_in_process(policy, adata, cfg, guard_cases)
    report.train_s = time.time() - t_train
    report.steps = int(tm.get("steps", cfg.steps))
    guard = tm.get("guard")
    if guard:
        report.guard_step, report.guard_users = int(guard["kept_step"]), int(guard["n_users"])
        report.guard_ndcg_parent, report.guard_ndcg = float(guard["parent_ndcg"]), float(guard["kept_ndcg"])
        report.guard_checked = [list(c) for c in guard["checked"]]
        say(f"round {version}: NDCG guard on {report.guard_users} held-out users, parent "
            f"{report.guard_ndcg_parent:.4f}, snapshots (step, NDCG@10) "
            f"{[(int(a), round(b, 4)) for a, b in report.guard_checked]}: "
            + (f"kept step {report.guard_step}" if report.guard_step else "none held"))
    report.ntp_loss = float(tm.get("ntp_loss", float("nan")))
    report.dpo_loss = float(tm.get("dpo_loss" if cfg.mode == "reward_model" else "feedback_loss", float("nan")))

    # -- 3. measure --
    if pairs is not None:
        pc = _logprobs(policy, pairs.hist, pairs.chosen, pairs.chosen_mask)
        pr = _logprobs(policy, pairs.hist, pairs.rejected, pairs.rejected_mask)
        delta = cfg.beta * ((pc - pairs.ref_chosen) - (pr - pairs.ref_rejected))
        report.reward_margin = float(delta.mean())
        report.pair_accuracy = float((delta > 0).float().mean())
        report.margin_before = float((pairs.ref_chosen - pairs.ref_rejected).mean())
        report.margin_after = float((pc - pr).mean())
    ev_users, report.eval_heldout = _eval_users(split, users, cfg)
    ev_hist = _user_histories(split, ev_users)
    one = AlignConfig(**{**cfg.to_dict(), "generation": "beam"})
    parent_sess, _ = generate_candidates(ref, ev_hist, item_sids, trie, one, n=cfg.eval_beam)
    new_sess, _ = generate_candidates(policy, ev_hist, item_sids, trie, one, n=cfg.eval_beam)
    parent_sess, new_sess = parent_sess[:, :1], new_sess[:, :1]                        # [E, 1, K]: the served session
    gen_items += [parent_sess, new_sess]
    report.validity = min(validity(g, len(item_sids)) for g in gen_items)
    ns, nm = _sids_of(new_sess[:, 0], item_sids)
    ehb = _hist_batch(ref, ev_hist, item_sids)
    with torch.no_grad():
        _, pl = session_logprob(policy.eval(), ehb, ns, nm, return_logits=True)
        _, rl = session_logprob(ref, ehb, ns, nm, return_logits=True)
    report.kl_ref = float(token_kl(pl, rl, nm, ref.cfg.sid_len).mean())
    mp = offline_metrics(ref, split, item_sids, trie, cfg.eval_users)
    ma = offline_metrics(policy, split, item_sids, trie, cfg.eval_users)
    report.hr50_parent, report.ndcg10_parent, report.coverage10_parent = mp["hr50"], mp["ndcg10"], mp["coverage10"]
    report.hr50, report.ndcg10, report.coverage10 = ma["hr50"], ma["ndcg10"], ma["coverage10"]
    if ma["invalid_rate"] > 0:
        report.validity = min(report.validity, 1.0 - ma["invalid_rate"])
    if scorer is not None:
        vp, va = _score(scorer, ev_hist, parent_sess)[:, 0], _score(scorer, ev_hist, new_sess)[:, 0]
        report.predicted_value_parent, report.predicted_value = float(vp.mean()), float(va.mean())
        report.predicted_gain = float(va.mean() - vp.mean())
    if true_scorer is not None:
        tp, ta = _score(true_scorer, ev_hist, parent_sess)[:, 0], _score(true_scorer, ev_hist, new_sess)[:, 0]
        report.true_value_parent, report.true_value = float(tp.mean()), float(ta.mean())
        report.true_gain = float(ta.mean() - tp.mean())
        if scorer is not None and reward_hacking(report.predicted_gain, report.predicted_value_parent,
                                                 report.true_gain, report.true_value_parent, cfg.hack_tolerance):
            report.reward_hacking = True
            report.refused = (f"REWARD HACKING: the scorer predicts a gain of {report.predicted_gain:+.4f} "
                              f"({report.predicted_value_parent:.4f} -> {report.predicted_value:.4f}) but the true "
                              f"value changes by {report.true_gain:+.4f}; the round stops without publishing")
            log.warning(report.refused)
    if guard and not report.guard_step:
        report.guard_refused = True
    if report.guard_refused and not report.refused:
        report.refused = (f"NDCG GUARD: no snapshot of the round kept NDCG@10 on {report.guard_users} held-out users "
                          f"within {cfg.guard_max_drop:.1%} of the parent's {report.guard_ndcg_parent:.4f} (checked "
                          f"{report.guard_checked}); the candidate would narrow the list, not publishing")
    if report.validity < 1.0 and not report.refused:
        report.refused = (f"validity {report.validity:.4f} < 100%: a generated item is not in the catalog; "
                          "the constraint is broken, not publishing")
    report.round_s = time.time() - t0

    # -- 4. publish (atomic in the registry: meta.json last) --
    if report.refused:
        say(report.summary())
        return report
    if before_publish is not None:
        before_publish(policy, report)
    from models.generator.checkpoint import GeneratorBundle

    cand_bundle = GeneratorBundle(policy, None, tuple(bundle.item_ids), bundle.item_sids, bundle.tokenizer_version,
                                  bundle.tokenizer)
    report.published = True
    report.round_s = time.time() - t0
    try:
        registry.publish(version, cand_bundle, parent=parent, data_window=data_window or {},
                         metrics={"alignment": report.as_dict()})
    except BaseException:
        report.published = False
        raise
    say(report.summary())
    return report
