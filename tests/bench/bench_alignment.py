"""Suite ``alignment``: does one round of preference alignment make served sessions better (issue 16)?

``genrec bench alignment [--quick]``. On the synthetic world (the default world's config with 6,000 users
instead of 2,000, so the test and validation groups hold about 1,200 and 800 users and a 2% NDCG bound and
the closed-loop gain are resolved by more than noise — decision 037; ``--quick`` the small world), with one
seed, in one process:

1. **base** — a generator trained on the world's log through the training job
   (:func:`actors.train_job.run_train_job`, a CPU-seconds budget), published as ``base`` in a temporary
   model registry. SIDs are fitted on the items' topic mixtures (the catalog's "content").
2. **serve + reward model** — sessions served at times in a recent window of the log (the last
   ``window`` share): ``base_share`` of them by the base model (a uniformly drawn one of its
   ``serve_beam`` constrained-beam candidates, seen items excluded, history as of the served time),
   each request of the base model served ``serve_group`` of its beam candidates at once under their own
   request ids (an exploration bucket: several different sessions of one user at one time, the contrast
   the reward model needs to order one user's candidates), the rest by an exploring logging policy (:func:`actors.reward_data.exploration_served`: some slots
   from the user's true best items, the rest by popularity). Why the exploration: the base model's
   sessions are all "good by the model", so the reward model would never see the poor and the very good
   sessions the aligner's candidates range over, and the heads would miss one class; why the base
   share: the aligner asks the reward model to rank the base model's own candidates, so it must have
   seen that distribution (OneRec-V2: on-policy exposures mattered). The world answers
   (:func:`actors.reward_data.simulate_rewards`, through :func:`~actors.reward_data.examples_from_world`),
   the reward model trains on sessions served before ``rm_cut`` with the product's defaults
   (:class:`models.reward_model.training.RewardTrainConfig`: per-slot labels — which served position was
   clicked, liked, skipped, how much of it was watched —, its value counting watch minutes of each item's
   length as the answers' events report it) and is evaluated on the later ones:
   per-head AUC and calibration (``rm_auc_*``, ``rm_ece_*``; per slot ``rm_slot_auc_*``), Spearman of its
   predicted session value vs the world's expected value (``rm_true_spearman``), and the same among each
   user's own beam candidates (``rm_within_user_spearman``, what pair selection needs), beside two
   scorers without a reward model (``generator_logprob_within_user_spearman``,
   ``popularity_within_user_spearman``, :func:`within_user_diagnostics`).
3. **round** — users are split once, seeded, into three disjoint groups: *align* (the only users the
   round samples: candidates, pairs, served sessions of the feedback arm), *validation* (tuning,
   docs/decisions/036-alignment-settings.md) and *test* (every reported closed-loop and offline figure).
   The round's NTP reads the whole fresh window — every user's *training* part (``RoundData.ntp_split``;
   a held-out item is never in it, so no validation or test target is trained on): NTP on the align users
   alone made the policy forget everyone else.
   One round (:func:`actors.aligner.run_round`, ``reward_model`` mode, the world's value as
   ``true_scorer``, training through Ray Train with one worker as the product runs it) with
   :class:`models.alignment.config.AlignConfig`'s defaults, the narrowing guard included (the round keeps
   the last of its snapshots whose NDCG@10 on the align users' held-out items stays within 2% of the base:
   ``round_guard_step``, ``round_guard_ndcg_ratio``; docs/decisions/037-alignment-ndcg-guard.md);
   ``round_s`` is its wall time on the device named in ``round_device``. Then the gate job on a published
   candidate against the base on **every** test user (verdict in ``gate_passed``).
   When the round refuses to publish for reward hacking (or the guard finds no snapshot within its
   bound), the same round is trained again without that check (in process) and measured anyway
   (``aligned_measured_unpublished`` = 1), so the figures say what publishing it would have done.
   Beside it, ``aligned_truth``: the same round with the world's value as the scorer (a perfect reward
   model) — it separates "the round cannot help" from "the reward model is the bottleneck" (``aligned_truth_gain_p``, ``oracle_gap_closed_truth``). And
   ``aligned_feedback``: OneRec-V2's alternative, ``feedback`` mode — the align users' served sessions with
   their real rewards as ±1 advantages, no reward model (``aligned_feedback_gain_p``,
   ``ndcg10_aligned_feedback_over_base``; in process, the same arithmetic as one Ray Train worker).
   A size's ``grid`` (overrides of the defaults) is first tried on the validation users and the winner
   by :func:`pick` runs the reported round (``chosen_on_validation``); FULL re-checks the defaults against
   ``dpo_weight`` 0.5 and the round without the KL anchor (``ntp_kl_weight`` 0) on the validation users,
   QUICK uses ``[{}]`` (the search is docs/decisions/036-alignment-settings.md and 037-alignment-ndcg-guard.md).
4. **closed loop on the test users** — base, aligned, popularity and oracle sessions of the same length,
   for the same users at the same time (the end of the log), each answered ``answers`` times by the
   world under the same request ids for every policy (common random numbers,
   :func:`models.evaluation.closed_loop.closed_loop_rewards`); a user's reward is the mean of their
   answers, the unit of analysis is the user: ``reward_<policy>`` ± a 95% t-interval over users.
   ``aligned_gain_p``: two-sided **paired t-test** over users (``scipy.stats.ttest_rel``) of aligned vs
   base per-user rewards (users are paired by construction; with hundreds of users the mean difference
   is close to normal; the Wilcoxon signed-rank p is in the table as a check). ``oracle_gap_closed`` =
   (aligned − base) / (oracle − base). Offline NDCG@10 / HR@50 of both models on the test users' held-out
   last item (``ndcg10_aligned_over_base`` ≥ 0.98 required, with its 95% paired bootstrap interval over users
   ``_ci95_low`` / ``_ci95_high``: a few hundred users cannot resolve a 2% difference; HR@50 the narrowing
   watch), validity, and
   ``rm_gain_over_true_gain``: the reward model's predicted gain of the aligned sessions over the world's
   expected-value gain on the same sessions (≫ 1 or negative = the reward model is being gamed).

A plot of the closed-loop reward per policy with its interval is written beside BENCHMARKS.md
(``bench_alignment.png``) when the suite is written there.

Sizes: :data:`FULL`, :data:`QUICK`; :data:`TINY` is the size ``tests/infra/test_bench_alignment.py`` runs.
``python tests/bench/bench_alignment.py --curve`` prints the NDCG / value trajectory along a round at every
snapshot (:func:`curve`, ``GENREC_TUNE_GRID``, ``GENREC_TUNE_SEED``; decision 037).
``python tests/bench/bench_alignment.py --tune [--quick]`` runs the validation-side settings search
(``GENREC_TUNE_GRID``: a JSON list of AlignConfig overrides; ``GENREC_TUNE_SIZE``: size overrides, e.g.
``{"serve_group": 1, "rm_rank_weight": 1.0}`` for the reward model's data and loss; ``GENREC_TUNE_RM``: a
JSON list of such overrides, one reward model each on the same base; ``GENREC_TUNE_SEED``: the world's and
the groups' seed, :func:`tune`).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np

SUITE = "alignment"

#: Sizes. ``world``: WorldConfig kwargs (``small`` = WorldConfig.small); ``budget_cpu_s`` base training
#: budget; ``served``: sessions served in the window; ``answers``: closed-loop answers per user and policy;
#: ``serve_group``: base-model sessions served per request (within-user contrast, default 1);
#: ``rm_slot_weight`` / ``rm_session_weight`` / ``rm_session_on_labelled`` / ``rm_rank_weight`` /
#: ``rm_seed``: overrides of the reward model's RewardTrainConfig (absent = its defaults); ``rm_d_model``
#: its width (32); ``rm_watch_minutes`` (True): item lengths in its value. ``gate_users``: test users the gate
#: ranks (0 = every one). TINY's guard bound is loose: a tiny world's few held-out users make NDCG noise.
#: ``world_users`` (absent = the world config's own) overrides the world's number of users: FULL's world is
#: larger than the default one so each test and validation estimate covers more users (served scales with it).
FULL = dict(world="default", world_users=6000, budget_cpu_s=45.0, epochs=40, served=12000, rm_epochs=8, answers=16,
            shares=(0.5, 0.2, 0.3), gate_users=0, canary_users=200, eval_beam_offline=50,
            serve_group=4,
            grid=[{}, {"dpo_weight": 0.5}, {"ntp_kl_weight": 0.0}])
QUICK = dict(world="small", budget_cpu_s=30.0, epochs=40, served=2500, rm_epochs=8, answers=4,
             shares=(0.5, 0.2, 0.3), gate_users=0, canary_users=100, eval_beam_offline=50,
             serve_group=4)
TINY = dict(world="tiny", budget_cpu_s=3.0, epochs=2, served=300, rm_epochs=2, answers=2,
            shares=(0.5, 0.2, 0.3), gate_users=40, canary_users=20, eval_beam_offline=20,
            align=dict(user_share=1.0, steps=10, eval_users=20, guard_every=5, guard_max_drop=0.5),
            truth_round=False)

#: The generator's sizes (two CPU cores; a GPU run can scale them up).
GENERATOR = dict(d_model=48, heads=2, enc_layers=1, dec_layers=1, dropout=0.1, max_history=30, session_len=4)
#: Serving: share of served sessions from the base model, its beam width; the recent window (share of the
#: log's span, at its end) sessions are served in; the reward model trains on sessions before ``RM_CUT``.
BASE_SHARE, SERVE_BEAM, WINDOW, RM_CUT = 0.5, 8, 0.4, 0.8
SEED = 0


def _say(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


# ---- 1. world and base model ------------------------------------------------------------------

@dataclass
class Base:
    world: object
    data: object                 # actors.train_job.Interactions
    split: object                # LeaveOneOut over every user
    item_sids: np.ndarray        # [n_split_items, D] in split order (the generator's catalog)
    world_sids: np.ndarray       # [n_world_items, D] in world order (the reward model's)
    split_to_world: np.ndarray   # [n_split_items] world index of each split item
    model: object                # GenerativeRecommender
    trie: object
    tok: object
    train_s: float
    train_cpu_s: float
    epochs: int


def make_world(kind: str, seed: int, n_users: int | None = None):
    """The suite's world: ``kind`` names the config, ``n_users`` (when given) overrides its number of users."""
    from ingest.synthetic import SyntheticWorld, WorldConfig

    over = {} if n_users is None else {"n_users": int(n_users)}
    cfg = {"default": lambda: WorldConfig(seed=seed, **over), "small": lambda: WorldConfig.small(seed=seed, **over),
           "tiny": lambda: WorldConfig.small(seed=seed, **{"n_users": 150, **over}, n_items=240)}[kind]()
    return SyntheticWorld(cfg)


def train_base(size: dict, seed: int, say=_say) -> Base:
    """The base generator, trained by the training job on the world's log within a CPU budget."""
    import torch

    from actors.train_job import TrainJobConfig, fit_tokenizer, interactions_from_records, run_train_job
    from models.evaluation.generator_ranker import build_trie
    from models.generator.training import TrainConfig

    world = make_world(size["world"], seed, size.get("world_users"))
    ds = world.dataset()
    data = interactions_from_records("synthetic", ds.user_events, ds.item_events)
    content = np.stack([world.item_topics(i) for i in world.item_ids])                 # [n_world, T]
    content = (content + 0.05 * np.random.default_rng(seed).standard_normal(content.shape)).astype(np.float32)
    tok, world_sids = fit_tokenizer(content, levels=2, codebook_size=16, seed=seed)
    s2w = np.array([world.item_index(str(i)) for i in data.split.item_ids], dtype=np.int64)
    sids = world_sids[s2w]
    out = tempfile.mkdtemp(prefix="bench-align-gen-")
    cfg = TrainJobConfig(data="synthetic", out=os.path.join(out, "gen.safetensors"), generator=dict(GENERATOR),
                         train=TrainConfig(epochs=size["epochs"], batch_size=128, lr=3e-3, patience=0,
                                           eval_every=1000, val_max_users=0, progress=False,
                                           max_seconds=size["budget_cpu_s"], budget_clock="cpu", seed=seed),
                         eval_beam=10, eval_max_users=50, seed=seed)
    t0, c0 = time.time(), time.process_time()
    res = run_train_job(cfg, data=data, tokenizer=tok, item_sids=sids, item_emb=content[s2w], say=say)
    model = res.model.eval()
    trie = build_trie(sids, model.cfg.level_sizes)
    torch.manual_seed(seed)
    return Base(world, data, data.split, sids, world_sids, s2w, model, trie, tok, time.time() - t0,
                time.process_time() - c0, int(res.report.epochs_run))


def publish_base(base: Base, registry, version: str = "base") -> None:
    from models.generator.checkpoint import GeneratorBundle
    from models.sid.tokenizer import tokenizer_to_bytes

    registry.publish(version, GeneratorBundle(base.model, None, tuple(str(i) for i in base.split.item_ids),
                                              base.item_sids, base.tok.version, tokenizer_to_bytes(base.tok)),
                     data_window={"source": "synthetic", "seed": int(base.world.cfg.seed)})


# ---- user groups --------------------------------------------------------------------------------

def sub_split(split, users: np.ndarray):
    """The leave-one-out split restricted to ``users`` (same catalog, same item indices)."""
    from models.evaluation.splits import LeaveOneOut

    return LeaveOneOut(split.user_ids[users], split.item_ids, [split.items[u] for u in users],
                       [split.ts[u] for u in users], [split.types[u] for u in users], split.min_events)


def user_groups(split, shares: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Disjoint, seeded groups of users with a held-out item: align / valid / test (sorted indices)."""
    users = np.array([u for u, s in enumerate(split.items) if len(s) >= split.min_events], dtype=np.int64)
    perm = np.random.default_rng([seed, 36]).permutation(users)
    a = int(round(shares[0] * len(perm)))
    v = a + int(round(shares[1] * len(perm)))
    return {"align": np.sort(perm[:a]), "valid": np.sort(perm[a:v]), "test": np.sort(perm[v:])}


# ---- 2. serving and the reward model ----------------------------------------------------------

class WorldIndexScorer:
    """A reward-model scorer (catalog = the world's items) seen from the split's item indices: maps the
    histories' and sessions' split indices to world indices and scores (what the aligner calls)."""

    def __init__(self, inner, split_to_world: np.ndarray) -> None:
        self.inner, self.s2w = inner, np.asarray(split_to_world, dtype=np.int64)

    def _map(self, a):
        a = np.asarray(a, dtype=np.int64)
        return np.where(a >= 0, self.s2w[np.maximum(a, 0)], a)

    def histories(self, h):
        from models.evaluation.ranker import Histories

        return Histories([self._map(x) for x in h.items], h.ts, h.types)

    def score(self, histories, sessions):
        return self.inner.score(self.histories(histories), self._map(sessions))


def _user_histories(items, ts, types, user_ids):
    from actors.aligner import UserHistories

    return UserHistories(list(items), list(ts), list(types), user_ids=list(user_ids))


def served_by_base(base: Base, n: int, k: int, seed: int, t0: int, t1: int, group: int = 1):
    """``n`` sessions of the base model at times in ``[t0, t1)``: users by activity, history as of the served
    time (the log's engaged events), a uniformly drawn one of the ``SERVE_BEAM`` beam candidates.
    ``group`` > 1: ``n / group`` requests, each served ``group`` different beam candidates under their own
    request ids at the same time (an exploration bucket: the within-user contrast the reward model needs
    to order one user's candidates)."""
    from actors.aligner import generate_candidates
    from actors.reward_data import PointInTimeHistory
    from ingest.contract import ENGAGED_TYPES, Served
    from models.alignment.config import AlignConfig

    world, split = base.world, base.split
    index = {str(i): j for j, i in enumerate(split.item_ids)}
    pit = PointInTimeHistory(world.user_events, index, ENGAGED_TYPES)
    rng = np.random.default_rng([seed, 11])
    act = world.user_activity / world.user_activity.sum()
    m = max(1, n // group)
    users = rng.choice(len(world.user_ids), size=m, p=act)
    times = np.sort(rng.integers(t0, t1, size=m))
    uids = [world.user_ids[u] for u in users]
    h = pit.histories(uids, times.tolist(), GENERATOR["max_history"])
    hist = _user_histories(h.items, h.ts, h.types, uids)
    cand, _ = generate_candidates(base.model, hist, base.item_sids, base.trie,
                                  AlignConfig(n_candidates=SERVE_BEAM), n=SERVE_BEAM)          # [n, B, K]
    out = []
    for j in range(m):
        for g, c in enumerate(rng.permutation(cand.shape[1])[:group]):
            items = [str(split.item_ids[i]) for i in cand[j, c] if i >= 0][:k]
            if items:
                out.append(Served(request_id=f"base-{seed}-{j}" + (f"-{g}" if group > 1 else ""), user_id=uids[j],
                                  ts=int(times[j]), model_version="base", experiment="", arm="", items=items,
                                  sids=[[] for _ in items], scores=[0.0] * len(items)))
    return out


def train_reward(base: Base, size: dict, seed: int, say=_say, keep: dict | None = None) -> tuple[object, dict]:
    """Serve in the recent window, answer, train the reward model on the earlier part, report on the later.
    ``keep`` (a dict), when given, receives the served sessions and their rewards (``served``, ``rewards``,
    same order) for the feedback arm."""
    import torch

    from actors.reward_data import examples_from_world, exploration_served
    from models.reward_model.metrics import head_report, rank_correlation, slot_head_report
    from models.reward_model.model import RewardModelConfig
    from models.reward_model.scorer import RewardModelScorer
    from models.reward_model.training import RewardTrainConfig, predict, predict_slots, train_reward_model

    world = base.world
    K = base.model.cfg.session_len
    end = world.cfg.start_ts_ms + world.cfg.duration_ms
    t0 = int(end - WINDOW * world.cfg.duration_ms)
    n_base = int(round(BASE_SHARE * size["served"]))
    t = time.time()
    served = served_by_base(base, n_base, K, seed, t0, end, group=size.get("serve_group", 1))
    served += exploration_served(world, size["served"] - n_base, K, seed=seed, start_ts=t0, end_ts=end)
    served.sort(key=lambda s: (s.ts, s.request_id))
    wex = examples_from_world(world, served, max_session=K)
    ex = wex.examples
    if keep is not None:
        keep.update(served=served, rewards=wex.rewards)
    cut = int(end - (1 - RM_CUT) * WINDOW * world.cfg.duration_ms)
    train, test = ex.split_at(cut)
    say(f"served {len(served)} sessions ({n_base} by the base model) in the last {WINDOW:.0%} of the log; "
        f"reward model: {len(train)} train, {len(test)} later-window examples ({time.time() - t:.0f}s)")
    d_model = int(size.get("rm_d_model", 32))
    cfg = RewardModelConfig(n_items=len(world.item_ids),
                            level_sizes=tuple(int(x) + 1 for x in base.world_sids.max(0)),
                            d_model=d_model, heads=2, max_history=GENERATOR["max_history"], max_session=K)
    rm_seed = int(size.get("rm_seed", seed))   # the reward model's own seed (the served data keep ``seed``)
    torch.manual_seed(rm_seed)
    t = time.time()
    over = {k[3:]: size[k] for k in ("rm_slot_weight", "rm_session_weight", "rm_session_on_labelled",
                                     "rm_rank_weight") if k in size}   # else the product's defaults
    res = train_reward_model(train, cfg, RewardTrainConfig(epochs=size["rm_epochs"], patience=3, batch_size=128,
                                                           lr=1e-2, seed=rm_seed, **over),
                             item_sids=base.world_sids,
                             item_length_ms=wex.item_length_ms if size.get("rm_watch_minutes", True) else None)
    rates, value = predict(res.model, test)
    m = head_report(rates, test.targets)
    if test.slot_targets is not None:
        m.update(slot_head_report(predict_slots(res.model, test), test.slot_targets))
        m["rm_slot_labelled_share"] = wex.counters["slot_labelled"] / max(1, len(ex))
    sess = [[world.item_ids[i] for i in row if i >= 0] for row in test.sessions]
    tv = world.expected_values(list(test.user_ids), sess, np.asarray(test.ts, dtype=np.int64))
    m["rm_true_spearman"] = rank_correlation(value, tv)
    m["rm_train_examples"], m["rm_test_examples"] = float(len(train)), float(len(test))
    m["rm_train_s"] = time.time() - t
    say(f"reward model: AUC click {m['rm_auc_click']:.3f} like {m['rm_auc_like']:.3f} watch {m['rm_auc_watch']:.3f} "
        f"skip {m['rm_auc_skip']:.3f}; Spearman vs true value {m['rm_true_spearman']:.3f} ({m['rm_train_s']:.0f}s)")
    return WorldIndexScorer(RewardModelScorer(res.model), base.split_to_world), m


def within_user_diagnostics(base: Base, scorers: dict, users: np.ndarray, n: int = 16) -> dict[str, float]:
    """Within-user Spearman with the world's value among each user's own ``n`` beam candidates (what pair
    selection needs), for each of ``scorers`` (name -> Scorer) and two reference scorers that need no reward
    model: ``generator_logprob`` (the parent's own log-probability of the candidate) and ``popularity``
    (mean log(1 + training-log count) of the session's items) — what a reward model has to beat."""
    from actors.aligner import WorldValueScorer, generate_candidates
    from models.alignment.config import AlignConfig
    from models.reward_model.metrics import within_user_rank_correlation

    split = base.split
    tr = split.train()
    hist = _user_histories([tr.items[u] for u in users], [tr.ts[u] for u in users], [tr.types[u] for u in users],
                           [split.user_ids[u] for u in users])
    cand, logp = generate_candidates(base.model, hist, base.item_sids, base.trie, AlignConfig(n_candidates=n))
    true = WorldValueScorer(base.world, split.item_ids).score(hist, cand)                # [U, N]
    counts = np.bincount(np.concatenate([np.asarray(x, np.int64) for x in tr.items] or [np.zeros(0, np.int64)]),
                         minlength=len(split.item_ids))
    lc = np.log1p(counts.astype(np.float64))
    real = cand >= 0
    pop = (np.where(real, lc[np.maximum(cand, 0)], 0.0).sum(-1) / np.maximum(real.sum(-1), 1))   # [U, N]
    out = {name: within_user_rank_correlation(sc.score(hist, cand), true) for name, sc in scorers.items()}
    out["generator_logprob"] = within_user_rank_correlation(np.asarray(logp, np.float64), true)
    out["popularity"] = within_user_rank_correlation(pop, true)
    return out


def feedback_sessions(base: Base, served, rewards, users: np.ndarray):
    """The served sessions of ``users`` (split indices) with their real rewards, as the feedback arm's
    :class:`actors.aligner.ServedSessions` in the sub-split of ``users`` (user j = ``users[j]``); items in
    split indices, padded with −1 to the session length."""
    from actors.aligner import ServedSessions

    split, K = base.split, base.model.cfg.session_len
    pos = {str(split.user_ids[u]): j for j, u in enumerate(users)}
    index = {str(i): j for j, i in enumerate(split.item_ids)}
    us, items, rw = [], [], []
    for s, r in zip(served, rewards):
        if s.user_id not in pos:
            continue
        row = [index.get(str(i), -1) for i in s.items][:K]
        us.append(pos[s.user_id])
        items.append(row + [-1] * (K - len(row)))
        rw.append(float(r.reward))
    return ServedSessions(np.asarray(us, dtype=np.int64), np.asarray(items, dtype=np.int64).reshape(-1, K),
                          np.asarray(rw, dtype=np.float64))


def round_data(base: Base, groups: dict, kept: dict):
    """The round's inputs: the align users' split (the users it samples, pairs, its own held-out check),
    NTP on every user's training part (the fresh window; held-out items are never in it), the align users'
    served sessions with real rewards (feedback mode)."""
    from actors.aligner import RoundData

    fb = feedback_sessions(base, kept["served"], kept["rewards"], groups["align"]) if kept else None
    return RoundData(sub_split(base.split, groups["align"]), served=fb, ntp_split=base.split)


# ---- 4. closed loop and offline metrics on one user group -------------------------------------

def _ci(x: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval over users."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float(x.mean()) if len(x) else float("nan"), float("nan")
    return float(x.mean()), float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def evaluate_group(base: Base, models: dict, users: np.ndarray, answers: int, scorer=None, offline: bool = True,
                   beam_offline: int = 50, with_baselines: bool = True) -> dict:
    """Every policy's sessions for ``users`` (split indices) at the end of the log, answered ``answers`` times
    under shared request ids; per-user rewards, the expected values, offline metrics of each model.

    ``models``: name -> GenerativeRecommender (sessions of ``session_len`` by constrained beam, width 4,
    the one served). Returns ``{"per_user": {policy: [U]}, "value": {policy: [U]}, "offline": {name: {...}},
    "predicted": {name: [U]}, "validity": float, "users": [ids]}``.
    """
    from actors.aligner import generate_candidates, offline_metrics
    from models.evaluation.metrics import validity
    from models.alignment.config import AlignConfig
    from models.evaluation.closed_loop import closed_loop_rewards
    from models.evaluation.policies import baseline_sessions
    from serving.experiments.rewards import session_reward

    world, split = base.world, base.split
    K = base.model.cfg.session_len
    uids = [str(split.user_ids[u]) for u in users]
    ts = int(max(int(t[-1]) for t in split.ts if len(t))) + 60_000
    hist = _user_histories([split.items[u] for u in users], [split.ts[u] for u in users],
                           [split.types[u] for u in users], uids)
    sessions, gen, val = {}, {}, 1.0
    for name, model in models.items():
        s, _ = generate_candidates(model, hist, base.item_sids, base.trie, AlignConfig(), n=4)   # [U, 4, K]
        gen[name] = s[:, :1]                                                                       # [U, 1, K]
        val = min(val, validity(s, len(base.item_sids)))
        sessions[name] = [[str(split.item_ids[i]) for i in row if i >= 0] for row in s[:, 0]]
    if with_baselines:
        sessions.update(baseline_sessions(world, uids, K, ts, seed=SEED, policies=("popularity", "oracle")))
    per_user = {p: np.zeros(len(uids)) for p in sessions}
    for r in range(answers):
        res = closed_loop_rewards(uids, sessions, world.respond, session_reward, ts, request_prefix=f"bench-al{r}")
        for p in sessions:
            per_user[p] += res.per_user[p] / answers
    value = {p: np.asarray(world.expected_values(uids, s, ts), dtype=np.float64) for p, s in sessions.items()}
    out = {"per_user": per_user, "value": value, "validity": val, "users": uids, "offline": {}, "predicted": {}}
    if scorer is not None:
        out["predicted"] = {n: np.asarray(scorer.score(hist, g), dtype=np.float64)[:, 0] for n, g in gen.items()}
    if offline:
        sub = sub_split(split, users)
        for name, model in models.items():
            out["offline"][name] = offline_metrics(model, sub, base.item_sids, base.trie, 0) if beam_offline == 50 \
                else _offline(model, sub, base, beam_offline)
    return out


def _offline(model, split, base: Base, beam: int) -> dict:
    """offline_metrics with a narrower beam (tiny runs): HR@50 needs 50 results, so HR@k at the beam width."""
    from models.evaluation.generator_ranker import GeneratorRanker
    from models.evaluation.metrics import MetricsConfig, evaluate_ranking, ndcg_per_case, target_ranks

    cases = split.test()
    ranked = GeneratorRanker(model, base.item_sids, beam_width=beam, trie=base.trie).rank(cases.histories, beam)
    m = evaluate_ranking(ranked, cases.targets, len(base.item_sids),
                         MetricsConfig(hr_ks=(beam,), ndcg_ks=(10,), coverage_k=10))
    return {"hr50": m[f"hr@{beam}"], "ndcg10": m["ndcg@10"], "coverage10": m["coverage@10"],
            "invalid_rate": m["invalid_rate"], "ndcg10_per_user": ndcg_per_case(target_ranks(ranked, cases.targets), 10)}


def ratio_ci(a: np.ndarray, b: np.ndarray, seed: int = SEED) -> tuple[float, float]:
    """95% paired bootstrap interval (BCa, ``scipy.stats.bootstrap``, resampling users) of mean(a) / mean(b):
    how far a few hundred users' NDCG@10 ratio can be trusted (NaN when there is nothing to resample)."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or not b.any():
        return float("nan"), float("nan")
    res = stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) / np.maximum(y.mean(axis), 1e-12),
                          paired=True, vectorized=True, n_resamples=2000, method="BCa", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare(ev: dict, a: str = "aligned", b: str = "base") -> dict:
    """Paired comparison of ``a`` vs ``b`` over the same users (realised rewards and expected values)."""
    from scipy import stats

    d = ev["per_user"][a] - ev["per_user"][b]
    dv = ev["value"][a] - ev["value"][b]
    t = stats.ttest_rel(ev["per_user"][a], ev["per_user"][b])
    w = stats.wilcoxon(d) if np.any(d != 0) else None
    tv = stats.ttest_rel(ev["value"][a], ev["value"][b])
    return {"gain": float(d.mean()), "gain_ci95": _ci(d)[1], "p": float(t.pvalue),
            "p_wilcoxon": float(w.pvalue) if w is not None else 1.0,
            "value_gain": float(dv.mean()), "value_p": float(tv.pvalue)}


# ---- the pipeline -----------------------------------------------------------------------------

def run_pipeline(size: dict, *, seed: int = SEED, align=None, use_ray: bool = True, gate: bool = True,
                 say=_say) -> dict:
    """Steps 1–4 of the module docstring at ``size``; returns ``{"config", "metrics", "tables", "figure"}``
    (``figure``: the closed-loop rewards per policy with their 95% half-widths, for the plot)."""
    import torch

    from actors.aligner import AlignmentError, RayTrainConfig, WorldValueScorer, run_round
    from actors.model_registry import ModelRegistry
    from models.alignment.config import AlignConfig

    torch.set_num_threads(1)
    align = align or AlignConfig(**size.get("align", {}))
    t_all = time.time()
    base = train_base(size, seed, say)
    say(f"base: {base.epochs} epochs in {base.train_s:.0f}s wall / {base.train_cpu_s:.0f} CPU-s")
    reg = ModelRegistry(tempfile.mkdtemp(prefix="bench-align-reg-"))
    publish_base(base, reg)
    kept: dict = {}
    scorer, rm = train_reward(base, size, seed, say, keep=kept)
    groups = user_groups(base.split, size["shares"], seed)
    diag = within_user_diagnostics(base, {"rm": scorer}, groups["valid"][:100])
    rm["rm_within_user_spearman"] = diag["rm"]
    rm["generator_logprob_within_user_spearman"] = diag["generator_logprob"]
    rm["popularity_within_user_spearman"] = diag["popularity"]
    data = round_data(base, groups, kept)
    truth = WorldValueScorer(base.world, base.split.item_ids)
    grid = size.get("grid") or [{}]
    rows, chosen = [], {}
    if len(grid) > 1:
        rows = validate_settings(base, reg, data, scorer, truth, groups["valid"], grid, align, size, say)
        chosen = pick(rows)
        say(f"chosen on the validation users: {chosen}" if chosen is not None
            else "no setting met the rule on the validation users: the round runs on the defaults")
    align = AlignConfig(**{**align.to_dict(), **(chosen or {})})

    ray_cfg, started = None, False
    if use_ray:
        import ray

        ray_cfg = RayTrainConfig(use_gpu=torch.cuda.is_available())
        if not ray.is_initialized():
            os.environ.setdefault("RAY_worker_niceness", "0")
            for attempt in range(3):   # Ray gives its raylet 30 s to register; a loaded host can miss that
                try:
                    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                             configure_logging=False)
                    break
                except Exception:
                    ray.shutdown()
                    if attempt == 2:
                        raise
            started = True
    try:
        rep = run_round(align, reg, data, scorer, parent="base", version="aligned", true_scorer=truth,
                        ray_train=ray_cfg, say=say)
    finally:
        if started:
            import ray

            ray.shutdown()
    device = (f"GPU {torch.cuda.get_device_name(0)}" if ray_cfg is not None and ray_cfg.use_gpu
              else f"CPU ({os.cpu_count()} cores, 1 Ray Train worker)")
    if not rep.published:
        say(f"the round did not publish: {rep.refused}")
    aligned = reg.load("aligned").model.eval() if rep.published else None
    measured_unpublished = False
    if aligned is None and (rep.reward_hacking or rep.guard_refused):
        # what the refused candidate would have done: the same round without the check that refused it (in
        # process, same seed; a reward-hacking refusal keeps the guard, then drops it if the guard refuses
        # too), measured on the test users below and flagged; the product never publishes it
        for j, over in enumerate(([{}] if rep.reward_hacking else []) + [{"guard_every": 0}]):
            rep_u = run_round(AlignConfig(**{**align.to_dict(), **over}), reg, data, scorer, parent="base",
                              version=f"aligned-unchecked{j}", say=say)
            if rep_u.published:
                aligned, measured_unpublished = reg.load(f"aligned-unchecked{j}").model.eval(), True
                break
    truth_model = None
    if size.get("truth_round", True):
        # the same round with a perfect reward model (the world's value scores the candidates): separates
        # "the aligner cannot help" from "the reward model is the bottleneck"
        rep_t = run_round(align, reg, data, truth, parent="base", version="aligned-truth", true_scorer=truth,
                          say=say)
        truth_model = reg.load("aligned-truth").model.eval() if rep_t.published else None
    fb_model, rep_f = None, None
    if size.get("feedback_round", True):
        # OneRec-V2's alternative: served sessions' real rewards as ±1 advantages, no reward model (in
        # process; same arithmetic as one Ray Train worker)
        fcfg = AlignConfig(**{**align.to_dict(), "mode": "feedback", **size.get("feedback", {})})
        try:
            rep_f = run_round(fcfg, reg, data, None, parent="base", version="aligned-feedback", true_scorer=truth,
                              say=say)
            fb_model = reg.load("aligned-feedback").model.eval() if rep_f.published else None
        except AlignmentError as e:   # no served session of the align users differs from its user's mean
            say(f"feedback round not run: {e}")

    gate_metrics, gate_reason = {}, "not run"
    if not rep.published:   # a refused candidate never reaches the gate: it did not pass
        gate_metrics, gate_reason = {"gate_passed": 0.0}, f"not run: the round did not publish ({rep.refused[:80]})"
    if gate and rep.published:
        from actors.gate_job import GateJobConfig, run_gate_job
        from actors.train_job import Interactions

        gdata = Interactions(sub_split(base.split, groups["test"]), [], "synthetic-test-users")
        g = run_gate_job(reg, "aligned", "base", GateJobConfig(world="none", max_users=size["gate_users"],
                                                              canary_users=size["canary_users"],
                                                              session_len=base.model.cfg.session_len, seed=seed),
                         data=gdata, world=base.world, say=say)
        gate_metrics = {"gate_passed": float(g.verdict.passed)}
        gate_reason = g.verdict.reason

    t = time.time()
    models = {"base": base.model} | ({"aligned": aligned} if aligned is not None else {}) | \
        ({"aligned_truth": truth_model} if truth_model is not None else {}) | \
        ({"aligned_feedback": fb_model} if fb_model is not None else {})
    ev = evaluate_group(base, models, groups["test"], size["answers"], scorer=scorer,
                        beam_offline=size["eval_beam_offline"])
    say(f"closed loop on {len(groups['test'])} test users ({time.time() - t:.0f}s)")
    metrics: dict = {}
    fig = {}
    for p in ("base", "aligned", "aligned_feedback", "aligned_truth", "popularity", "oracle"):
        if p in ev["per_user"]:
            mean, hw = _ci(ev["per_user"][p])
            metrics[f"reward_{p}"], metrics[f"reward_{p}_ci95"] = mean, hw
            fig[p] = (mean, hw)
    if aligned is not None:
        c = compare(ev)
        ob, oa = ev["offline"]["base"], ev["offline"]["aligned"]
        pred_gain = float(ev["predicted"]["aligned"].mean() - ev["predicted"]["base"].mean())
        metrics.update({
            "aligned_gain": c["gain"], "aligned_gain_ci95": c["gain_ci95"], "aligned_gain_p": c["p"],
            "aligned_gain_p_wilcoxon": c["p_wilcoxon"],
            "oracle_gap_closed": c["gain"] / (metrics["reward_oracle"] - metrics["reward_base"]),
            "value_base": float(ev["value"]["base"].mean()), "value_aligned": float(ev["value"]["aligned"].mean()),
            "value_gain_p": c["value_p"],
            "ndcg10_base": ob["ndcg10"], "ndcg10_aligned": oa["ndcg10"],
            "ndcg10_aligned_over_base": oa["ndcg10"] / max(ob["ndcg10"], 1e-12),
            **dict(zip(("ndcg10_aligned_over_base_ci95_low", "ndcg10_aligned_over_base_ci95_high"),
                       ratio_ci(oa["ndcg10_per_user"], ob["ndcg10_per_user"]))),
            "hr50_base": ob["hr50"], "hr50_aligned": oa["hr50"],
            "coverage10_base": ob["coverage10"], "coverage10_aligned": oa["coverage10"],
            "rm_predicted_gain": pred_gain, "true_value_gain": c["value_gain"],
            "rm_gain_over_true_gain": pred_gain / c["value_gain"] if c["value_gain"] else float("nan"),
            "aligned_measured_unpublished": float(measured_unpublished),
        })
    if truth_model is not None:
        ct = compare(ev, "aligned_truth")
        metrics.update({"aligned_truth_gain": ct["gain"], "aligned_truth_gain_p": ct["p"],
                        "oracle_gap_closed_truth": ct["gain"] / (metrics["reward_oracle"] - metrics["reward_base"]),
                        "ndcg10_aligned_truth_over_base": ev["offline"]["aligned_truth"]["ndcg10"]
                        / max(ev["offline"]["base"]["ndcg10"], 1e-12)})
    if fb_model is not None:
        cf = compare(ev, "aligned_feedback")
        metrics.update({"aligned_feedback_gain": cf["gain"], "aligned_feedback_gain_p": cf["p"],
                        "value_aligned_feedback": float(ev["value"]["aligned_feedback"].mean()),
                        "aligned_feedback_value_gain_p": cf["value_p"],
                        "oracle_gap_closed_feedback": cf["gain"] / (metrics["reward_oracle"] - metrics["reward_base"]),
                        "ndcg10_aligned_feedback_over_base": ev["offline"]["aligned_feedback"]["ndcg10"]
                        / max(ev["offline"]["base"]["ndcg10"], 1e-12),
                        "hr50_aligned_feedback": ev["offline"]["aligned_feedback"]["hr50"],
                        "round_feedback_sessions": float(rep_f.n_pairs)})
    metrics["validity"] = min(ev["validity"], rep.validity if rep.validity == rep.validity else 1.0)
    metrics.update(rm)
    metrics.update({"round_s": rep.round_s, "round_train_s": rep.train_s, "round_pairs": float(rep.n_pairs),
                    "round_users": float(rep.n_users), "round_published": float(rep.published),
                    "round_reward_hacking": float(rep.reward_hacking), "round_kl_ref": rep.kl_ref,
                    "round_guard_refused": float(rep.guard_refused), "round_guard_step": float(rep.guard_step),
                    "round_guard_users": float(rep.guard_users),
                    "round_guard_ndcg_ratio": rep.guard_ndcg / rep.guard_ndcg_parent if rep.guard_ndcg_parent > 0
                    else float("nan"),
                    "round_pair_accuracy": rep.pair_accuracy, **gate_metrics,
                    "test_users": float(len(groups["test"])), "base_train_cpu_s": base.train_cpu_s,
                    "base_epochs": float(base.epochs)})
    tables = [_table(metrics, fig, ev, len(groups["test"]), size["answers"])]
    if metrics.get("aligned_measured_unpublished") and rep.guard_refused:
        tables.append("**The round refused to publish (NDCG guard: no snapshot kept NDCG@10 within the bound).** "
                      "`aligned` above is the same round without the guard (its last step), measured so the "
                      "figures show what publishing it would have done.")
    if metrics.get("aligned_measured_unpublished") is not None and rep.reward_hacking:
        tables.append("**The round refused to publish (reward hacking).** `aligned` above is the same round's "
                      "candidate trained again without the true-value check, measured so the figures show what "
                      "publishing it would have done; `aligned_truth` is the same round with the world's value "
                      "as the reward model.")
    tables.append(f"Round (on the align users; its own before/after figures on align users it did not pair): "
                  f"`{rep.summary()}`  \nGate: {'PASSED' if gate_metrics.get('gate_passed') else 'not passed'}"
                  f" — {gate_reason}")
    if rows:
        tables.append(settings_table(rows, chosen, len(groups["valid"])))
    config = {"world": size["world"], "world_users": base.world.cfg.n_users, "world_items": base.world.cfg.n_items,
              "seed": seed, "base_budget_cpu_s": size["budget_cpu_s"], "generator": GENERATOR,
              "served_sessions": size["served"], "base_share": BASE_SHARE, "serve_beam": SERVE_BEAM,
              "window": WINDOW, "rm_cut": RM_CUT, "user_groups": {k: len(v) for k, v in groups.items()},
              "answers_per_user": size["answers"], "align": align.to_dict(),
              "chosen_on_validation": chosen, "grid": grid, "backend": rep.backend,
              "round_device": device, "test": "paired t-test over users (scipy.stats.ttest_rel), two-sided",
              "wall_s": round(time.time() - t_all, 1)}
    return {"config": config, "metrics": metrics, "tables": tables, "figure": fig}


def _table(m: dict, fig: dict, ev: dict, n_users: int, answers: int) -> str:
    rows = ["| policy | closed-loop reward per user | 95% CI | expected value |", "|---|---|---|---|"]
    for p, (mean, hw) in fig.items():
        rows.append(f"| {p} | {mean:.3f} | {mean - hw:.3f} .. {mean + hw:.3f} | {float(ev['value'][p].mean()):.3f} |")
    return (f"**Closed loop on {n_users} held-out test users** (each policy's session for the same users at the same "
            f"time, {answers} answers per user under shared request ids; unit = user)\n\n" + "\n".join(rows))


def plot(fig: dict, path) -> str | None:
    """Bar chart of the closed-loop reward per policy with 95% intervals (PNG); None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(fig)
    f, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(range(len(names)), [fig[n][0] for n in names], yerr=[fig[n][1] for n in names], capsize=6,
           color=[{"base": "#7f7f7f", "aligned": "#1f77b4", "aligned_truth": "#9467bd", "aligned_feedback": "#17becf", "popularity": "#ff7f0e",
                   "oracle": "#2ca02c"}.get(n, "#333333") for n in names])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("mean session reward per user")
    ax.set_title("alignment: closed-loop reward on held-out users (95% CI)", fontsize=9)
    f.tight_layout()
    f.savefig(path, dpi=80)
    plt.close(f)
    return str(path)


def run(quick: bool = False, dataset: str | None = None) -> dict:
    out = run_pipeline(QUICK if quick else FULL)
    png = plot(out.pop("figure"), os.path.join(tempfile.mkdtemp(prefix="bench-align-plot-"), "bench_alignment.png"))
    if png:
        out["plots"] = [png]
    return out


# ---- settings search on the validation users --------------------------------------------------

def validate_settings(base: Base, reg, data, scorer, truth, valid_users: np.ndarray, grid: list[dict], align,
                      size: dict, say=_say, prefix: str = "", cache: dict | None = None) -> list[dict]:
    """One round per setting (overrides of ``align``) from the same base and reward model, in process (the
    same arithmetic as one Ray Train worker); each judged on the **validation** users only: closed-loop
    gain (paired t-test), expected-value gain, NDCG@10 ratio and HR@50 on their held-out item. The test
    users are never looked at here."""
    from actors.aligner import run_round
    from models.alignment.config import AlignConfig

    cache = {} if cache is None else cache   # the base's figures on these users, shared by calls on one base
    if "ev0" not in cache:
        cache["ev0"] = evaluate_group(base, {"base": base.model}, valid_users, size["answers"], with_baselines=False,
                                      beam_offline=size["eval_beam_offline"])
    ev0 = cache["ev0"]
    rows = []
    for j, over in enumerate(grid):
        cfg = AlignConfig(**{**align.to_dict(), "eval_users": 50, **over})
        t = time.time()
        rep = run_round(cfg, reg, data, scorer if cfg.mode == "reward_model" else None, parent="base",
                        version=f"{prefix}valid{j}", true_scorer=truth, say=lambda _: None)
        row = {"setting": over, "pairs": rep.n_pairs, "published": rep.published, "round_s": time.time() - t,
               "guard_step": rep.guard_step}
        if rep.published:
            m = reg.load(f"{prefix}valid{j}").model.eval()
            ev = evaluate_group(base, {"aligned": m}, valid_users, size["answers"], with_baselines=False,
                                beam_offline=size["eval_beam_offline"])
            ev["per_user"]["base"], ev["value"]["base"] = ev0["per_user"]["base"], ev0["value"]["base"]
            c = compare(ev)
            va, vb, nv = ev["offline"]["aligned"]["ndcg10"], ev0["offline"]["base"]["ndcg10"], len(valid_users)
            ga, gb, ng = rep.guard_ndcg, rep.guard_ndcg_parent, rep.guard_users
            # the guard's held-out align users and the validation users together: more users per NDCG check
            pooled = (va * nv + ga * ng) / max(vb * nv + gb * ng, 1e-12) if ng else va / max(vb, 1e-12)
            row.update(gain=c["gain"], p=c["p"], value_gain=c["value_gain"], value_p=c["value_p"],
                       ndcg_ratio=va / max(vb, 1e-12), ndcg_ratio_pooled=pooled, ndcg_users_pooled=nv + ng,
                       hr50=ev["offline"]["aligned"]["hr50"], hr50_base=ev0["offline"]["base"]["hr50"])
        else:
            row["refused"] = rep.refused
        say(f"validation {over}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in row.items() if k != "setting"))
        rows.append(row)
    return rows


#: :func:`pick`'s NDCG@10 floor on the validation side: half the gate's 2% bound, the other half a margin for
#: the gap between validation and test users (decision 037 §8).
PICK_MIN_NDCG_RATIO = 0.99
#: :func:`pick`'s significance bar: the closed-loop gain on the validation users (paired t-test over users).
PICK_MAX_P = 0.05


def pick(rows: list[dict]) -> dict | None:
    """The rule: among settings that published, kept NDCG@10 within 1% of the base (ratio >=
    :data:`PICK_MIN_NDCG_RATIO`) on the validation users and the round's guard users together
    (``ndcg_ratio_pooled``: one 270-user check alone spans about ±13%, decision 037; the validation users alone
    when a row has no pooled figure) and raised the closed-loop reward significantly (paired p <
    :data:`PICK_MAX_P` on the validation users: a gain the validation users cannot tell from noise is not one
    to carry to the test users), the one with the largest expected-value gain; None when no setting meets it
    (the round then runs on the defaults)."""
    ok = [r for r in rows if r.get("published")
          and r.get("ndcg_ratio_pooled", r.get("ndcg_ratio", 0.0)) >= PICK_MIN_NDCG_RATIO
          and r.get("gain", 0.0) > 0 and r.get("p", 1.0) < PICK_MAX_P and r.get("value_gain", 0.0) > 0]
    return dict(max(ok, key=lambda r: r["value_gain"])["setting"]) if ok else None


def settings_table(rows: list[dict], chosen: dict | None, n_valid: int) -> str:
    f = lambda r, k: f"{r[k]:.4g}" if isinstance(r.get(k), float) else "—"  # noqa: E731
    out = ["| setting (over the defaults) | pairs | guard kept step | closed-loop gain | p (paired t) | "
           "expected-value gain | p | NDCG@10 ratio | pooled with the guard's users | HR@50 / base | round_s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "defaults"
        hr = f"{f(r, 'hr50')} / {f(r, 'hr50_base')}" if "hr50" in r else "—"
        gain = f(r, "gain") if r.get("published") else "not published: " + r.get("refused", "")[:60]
        out.append(f"| {name}{' **(chosen)**' if r['setting'] == chosen and r.get('published') else ''} | {r['pairs']} "
                   f"| {r.get('guard_step') or '—'} | {gain} | {f(r, 'p')} | {f(r, 'value_gain')} | {f(r, 'value_p')} | {f(r, 'ndcg_ratio')} "
                   f"| {f(r, 'ndcg_ratio_pooled')} | {hr} "
                   f"| {r['round_s']:.0f} |")
    verdict = "" if chosen is not None else "\n\nNo setting met the rule: the reported round ran on the defaults."
    return (f"**Settings tried on the {n_valid} validation users** (not the test users; one in-process round each "
            f"from the same base and reward model; rule: NDCG ratio >= {PICK_MIN_NDCG_RATIO} on these and the round's guard users "
            f"together, positive gains, closed-loop p < {PICK_MAX_P}, largest expected-value gain)\n\n" + "\n".join(out) + verdict)


def tune(size: dict, grid: list[dict], seed: int = SEED, say=_say, rm_grid: list[dict] | None = None) -> list[dict]:
    """Only the settings search (no test-user figures): base, then per reward-model setting of ``rm_grid``
    (size overrides: ``rm_slot_weight``, ``rm_session_weight``, ``rm_rank_weight``, ``rm_d_model``,
    ``serve_group``, ...; default ``[{}]``) a reward model, its diagnostics on the validation users
    (within-user Spearman beside the generator's log-probability and popularity, :func:`within_user_diagnostics`)
    and :func:`validate_settings` of ``grid``. One base for every setting, so they are comparable."""
    from actors.aligner import WorldValueScorer
    from actors.model_registry import ModelRegistry
    from models.alignment.config import AlignConfig

    import torch

    torch.set_num_threads(1)
    base = train_base(size, seed, say)
    reg = ModelRegistry(tempfile.mkdtemp(prefix="bench-align-tune-"))
    publish_base(base, reg)
    groups = user_groups(base.split, size["shares"], seed)
    truth = WorldValueScorer(base.world, base.split.item_ids)
    rows, cache = [], {}
    for i, rm_over in enumerate(rm_grid or [{}]):
        kept: dict = {}
        sz = {**size, **rm_over}
        scorer, rm = train_reward(base, sz, seed, say, keep=kept)
        diag = within_user_diagnostics(base, {"rm": scorer}, groups["valid"][:100])
        say(f"reward model {rm_over}: within-user Spearman (validation users) " +
            ", ".join(f"{k} {v:.3f}" for k, v in diag.items()))
        rm_fig = {k: v for k, v in rm.items() if k.startswith(("rm_auc_", "rm_slot_auc_", "rm_true_spearman"))}
        head = {"rm_setting": rm_over, **{f"within_user_{k}": v for k, v in diag.items()}, **rm_fig}
        vrows = validate_settings(base, reg, round_data(base, groups, kept), scorer, truth, groups["valid"], grid,
                                  AlignConfig(), sz, say, prefix=f"rm{i}-", cache=cache)
        rows += [{**head, **row} for row in vrows] or [head]   # an empty grid: the reward model's figures only
    return rows


def curve(size: dict, grid: list[dict], seed: int = SEED, say=_say) -> list[dict]:
    """The narrowing along a round (validation side, decision 037): for each setting of ``grid`` (overrides
    of AlignConfig's defaults) one in-process round from the same base and reward model, snapshotted every
    ``guard_every`` steps; at **every** snapshot (the guard itself stops at the first that holds) the
    NDCG@10 ratio to the base on the guard's held-out align users (``ndcg_align``) and on the validation users
    (``ndcg_valid``), and the world's expected value of the served session on the validation users (gain and
    paired-t p). The test users are never looked at."""
    import torch
    from scipy import stats

    import actors.aligner as aligner
    from actors.aligner import WorldValueScorer, generate_candidates, run_round
    from actors.model_registry import ModelRegistry
    from models.alignment.config import AlignConfig

    torch.set_num_threads(1)
    base = train_base(size, seed, say)
    reg = ModelRegistry(tempfile.mkdtemp(prefix="bench-align-curve-"))
    publish_base(base, reg)
    kept: dict = {}
    scorer, _ = train_reward(base, size, seed, say, keep=kept)
    groups = user_groups(base.split, size["shares"], seed)
    data, truth, split = round_data(base, groups, kept), WorldValueScorer(base.world, base.split.item_ids), base.split
    vcases, vu = sub_split(split, groups["valid"]).test(), groups["valid"]
    uids = [str(split.user_ids[u]) for u in vu]
    ts = int(max(int(t[-1]) for t in split.ts if len(t))) + 60_000
    vh = _user_histories([split.items[u] for u in vu], [split.ts[u] for u in vu], [split.types[u] for u in vu], uids)

    def value(model) -> np.ndarray:
        s, _ = generate_candidates(model, vh, base.item_sids, base.trie, AlignConfig(), n=4)
        return np.asarray(base.world.expected_values(uids, [[str(split.item_ids[i]) for i in r if i >= 0]
                                                            for r in s[:, 0]], ts), dtype=np.float64)

    real_ndcg, real_keep, points = aligner.guard_ndcg, aligner.keep_checkpoint, []

    def recording_ndcg(model, cases, item_sids, trie, beam=50):
        a = real_ndcg(model, cases, item_sids, trie, beam)
        points.append((a, real_ndcg(model, vcases, item_sids, trie, beam), value(model)))
        return a

    def every_snapshot(parent_ndcg, steps, ndcg_at, max_drop, n_users=0):
        at = {}
        for st in sorted(steps):
            ndcg_at(st)
            at[st] = points[-1]
        points.append(at)
        return real_keep(parent_ndcg, steps, lambda st: at[st][0], max_drop, n_users)

    rows = []
    aligner.guard_ndcg, aligner.keep_checkpoint = recording_ndcg, every_snapshot
    try:
        for j, over in enumerate(grid):
            points.clear()
            cfg = AlignConfig(**{**AlignConfig().to_dict(), "eval_users": 50, **over})
            rep = run_round(cfg, reg, data, scorer, parent="base", version=f"curve{j}", true_scorer=truth,
                            say=lambda _: None)
            a0, v0, val0 = points[0]
            for st, (a, v, val) in points[-1].items():
                rows.append({"setting": over, "step": st, "kept": st == rep.guard_step, "ndcg_align": a / a0,
                             "ndcg_valid": v / v0, "value_gain": float((val - val0).mean()),
                             "value_p": float(stats.ttest_rel(val, val0).pvalue), "base_epochs": base.epochs})
                say(f"{over} step {st}{' (kept)' if st == rep.guard_step else ''}: " + ", ".join(
                    f"{k} {rows[-1][k]:.3g}" for k in ("ndcg_align", "ndcg_valid", "value_gain", "value_p")))
    finally:
        aligner.guard_ndcg, aligner.keep_checkpoint = real_ndcg, real_keep
    return rows


if __name__ == "__main__":
    import json

    if "--curve" in sys.argv[1:]:
        grid = json.loads(os.environ.get("GENREC_TUNE_GRID", "[{}]"))
        size = {**(QUICK if "--quick" in sys.argv[1:] else FULL), **json.loads(os.environ.get("GENREC_TUNE_SIZE", "{}"))}
        print(json.dumps(curve(size, grid, seed=int(os.environ.get("GENREC_TUNE_SEED", SEED))), indent=1, default=str))
    elif "--tune" in sys.argv[1:]:
        grid = json.loads(os.environ.get("GENREC_TUNE_GRID", "[{}]"))
        size = {**(QUICK if "--quick" in sys.argv[1:] else FULL), **json.loads(os.environ.get("GENREC_TUNE_SIZE", "{}"))}
        rm_grid = json.loads(os.environ.get("GENREC_TUNE_RM", "[{}]"))
        print(json.dumps(tune(size, grid, seed=int(os.environ.get("GENREC_TUNE_SEED", SEED)), rm_grid=rm_grid),
                         indent=1, default=str))
    else:
        res = run(quick="--quick" in sys.argv[1:])
        print(json.dumps({k: res[k] for k in ("config", "metrics")}, indent=1, default=str))
