"""Closed-loop A/B experiments on the synthetic world: its users answer served sessions (numpy, vectorised).

:mod:`serving.experiments.simulate` proves the statistics on a per-user
generative model (a latent click propensity per user). This module runs them
on the project's own closed loop instead: the users of
:class:`ingest.synthetic.SyntheticWorld` (drifting topic tastes, activity,
fatigue, items that arrive over time) are randomised to two arms by the
experiments' own assignment code (:meth:`serving.experiments.config.Experiment.arm_for`,
a hash of salt and user; a new salt per simulated experiment), each arm serves
sessions with its policy, the world's reaction model answers them, and each
session's answer becomes the components and scalar reward the reward joiners
write (:mod:`actors.reward_spec`: counts per event type, capped watch minutes,
distinct engaged positions). The same user-level estimators as the report
(:mod:`serving.experiments.delta`, checked equal to tea-tasting; one run is
also put through :func:`serving.experiments.report.build_reward_report` by the
benchmark) then test every metric.

**Policy** (both arms alike in an A/A run): each of the ``k`` slots of a
session shows the best of ``candidates`` items (half drawn by popularity, half
uniformly, among the items that exist at that time and were not shown earlier
in the session) under the utility ``beta · affinity + Gumbel noise`` — the
world's "noisy top items". ``beta`` is how personalised the policy is: 0 is
popularity alone; a treatment with a larger ``beta`` is a known, real
improvement (the A/B runs).

**Answers**: the world's user response model (:mod:`ingest.user_response`,
the code behind :meth:`SyntheticWorld.respond`), called on all of a period's
sessions at once through :meth:`SyntheticWorld.respond_arrays`: attention
decaying with position, a logit choice between click, pass (a skip) and
dislike by the match (true relative affinity × fatigue per earlier examined
same-topic item; 0 for a repeat or an item that does not exist yet) and the
item's quality (its popularity percentile), watch
fraction growing with the match, likes/shares/comments/follows/purchases after
a click, and leaving when bored (no impression or event after that). ``respond``
builds event records one session at a time (about a millisecond each): too slow
for the thousands of simulated experiments here, so this module reads the same
model's arrays instead; a unit test checks its per-session means against
``respond`` itself.

**Periods**: a pre-period (everybody on the control policy: the CUPED
covariates, as the report reads them from rewards served before the first
exposure) and the experiment period, ``period_days`` each; every user's
session count per period is Poisson(activity × ``sessions_per_period``) with
the world's log-normal activity, so some users have no pre-period sessions
(zero covariates, as :func:`serving.experiments.units.covariate_columns`
gives them) and some are never exposed (not in the experiment). Looks: the
data served up to each of ``looks`` evenly spaced times.

Invariant: no I/O; everything random is drawn from the ``rng`` passed in (the
world itself from its seed), so a seed reproduces a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.experiments.delta import ratio_diff
from serving.experiments.sequential import cs_halfwidth, mixture_rho

#: Per-user columns the closed loop produces (a subset of serving.experiments.metrics.USER_COLUMNS).
COLUMNS = ("sessions", "impressions", "engaged", "reward", "watch_ms", "skips")
#: Metrics tested on the world (every session has impression events, so ``feedback_rate`` has no variance
#: there; dislikes are rare and not among them): name → (numerator, denominator).
WORLD_METRICS = {"ctr": ("engaged", "impressions"), "mean_reward": ("reward", "sessions"),
                 "watch_ms": ("watch_ms", "sessions"), "skip_rate": ("skips", "impressions")}
#: The primary metric (the tests' decisions and the power are on it).
PRIMARY = "ctr"


@dataclass(frozen=True)
class WorldExpConfig:
    """One closed-loop experiment's world, periods, policies and looks (see the module docstring)."""

    world_seed: int = 0
    n_users: int = 2000
    n_items: int = 3000
    n_topics: int = 16
    period_days: float = 14.0
    sessions_per_period: float = 3.0
    k: int = 6
    candidates: int = 8
    beta_control: float = 1.0
    beta_treatment: float = 1.0
    looks: int = 10
    alpha: float = 0.05
    reward_spec: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.n_users < 20 or self.n_items < self.k + 1 or self.k < 1 or self.candidates < 1 or self.looks < 1:
            raise ValueError(f"WorldExpConfig: n_users >= 20, n_items > k >= 1, candidates, looks >= 1; got {self}")
        if self.period_days <= 0 or self.sessions_per_period <= 0 or not 0 < self.alpha < 1:
            raise ValueError(f"WorldExpConfig: period_days, sessions_per_period > 0, alpha in (0, 1); got {self}")
        if self.beta_control < 0 or self.beta_treatment < 0:
            raise ValueError(f"WorldExpConfig: policy betas must be >= 0; got {self}")

    def world_config(self):
        from ingest.synthetic import WorldConfig

        return WorldConfig(seed=self.world_seed, n_users=self.n_users, n_items=self.n_items,
                           n_topics=self.n_topics, days=2 * self.period_days)


@dataclass(frozen=True)
class Sessions:
    """Served sessions with their answers (arrays over sessions)."""

    user: np.ndarray      # int, world user index
    ts: np.ndarray        # int64 ms
    items: np.ndarray     # (S, k) world item indices
    comp: dict            # component name → float array (the Reward.components the joiners write)
    reward: np.ndarray    # the scalar reward (RewardSpec)


@dataclass(frozen=True)
class Run:
    """One simulated experiment: the assignment, the pre-period and the experiment's sessions."""

    salt: str
    treated: np.ndarray   # (U,) 0/1 by the experiment's hash of salt and user
    pre: Sessions
    exp: Sessions


class ClosedLoop:
    """Serve → answer → reward on one synthetic world: :meth:`run` draws one, :meth:`evaluate` tests it."""

    def __init__(self, cfg: WorldExpConfig = WorldExpConfig(), world=None):
        from actors.reward_spec import COUNTED, RewardSpec
        from ingest.synthetic import SyntheticWorld

        self.cfg = cfg
        self.world = world if world is not None else SyntheticWorld(cfg.world_config())
        w = self.world
        self.n_users, self.n_items = w.cfg.n_users, w.cfg.n_items
        self.activity = w.user_activity / w.user_activity.mean()
        # Popularity draws come from a fixed pool (2^16 draws from the world's popularity, made once):
        # a gather instead of a binary search per candidate.
        pool_rng = np.random.default_rng([cfg.world_seed, 17])
        self.pop_pool = np.minimum(np.searchsorted(np.cumsum(w.item_popularity), pool_rng.random(1 << 16)),
                                   self.n_items - 1).astype(np.int32)
        self.item_topics = w._item_topics
        self.arrival = w.item_arrival_ms
        self.length = w.item_length_ms
        self.topic = w.item_primary
        self.initial = np.flatnonzero(self.arrival == w.cfg.start_ts_ms)
        self.t_start = w.cfg.start_ts_ms                      # pre-period start
        self.period_ms = int(cfg.period_days * 86_400_000)
        self.t_exp = self.t_start + self.period_ms            # first possible exposure
        self.spec = RewardSpec.of(cfg.reward_spec or None)
        self.counted = COUNTED

    # -- serve and answer ----------------------------------------------------------------------

    def serve(self, rng: np.random.Generator, user: np.ndarray, ts: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """``(S, k)`` items: each slot the best of the candidates under ``beta · affinity + Gumbel``.

        Affinity is the world's relative affinity (its ``_rel_affinity``), computed as the session's taste
        at ``ts`` (the linear mix of the user's two tastes) times the candidates' topic mixtures: the same
        numbers, from a small table instead of gathers in the users × items affinity tables.
        """
        w, cfg = self.world, self.cfg
        S, k, C, I = user.size, cfg.k, cfg.candidates, self.n_items
        out = np.empty((S, k), dtype=np.int64)
        if S == 0:
            return out
        wt = np.asarray(w._w(ts), dtype=np.float32)[:, None]
        taste = (1 - wt) * w._p0[user] + wt * w._p1[user]                     # (S, T)
        amax = np.maximum((1 - wt[:, 0]) * w._amax0[user] + wt[:, 0] * w._amax1[user], 1e-9)[:, None]
        n_pop = C // 2
        rows = np.arange(S)
        for p in range(k):
            cand = np.empty((S, C), dtype=np.int64)
            cand[:, :n_pop] = self.pop_pool[rng.integers(self.pop_pool.size, size=(S, n_pop))]
            cand[:, n_pop:] = rng.integers(I, size=(S, C - n_pop))
            aff = np.einsum("sct,st->sc", np.take(self.item_topics, cand, axis=0), taste) / amax
            # − log Exp(1) is Gumbel(0, 1): the same draw as rng.gumbel, a few times faster in float32
            with np.errstate(divide="ignore"):  # an exact 0 draw is +inf: that candidate wins, as it should
                util = beta[:, None] * np.clip(aff, 0.0, 1.0) - np.log(rng.standard_exponential((S, C), np.float32))
            bad = self.arrival[cand] > ts[:, None]
            for q in range(p):
                bad |= cand == out[:, q:q + 1]
            util[bad] = -np.inf
            best = util.argmax(axis=1)
            c = cand[rows, best]
            none = ~np.isfinite(util[rows, best])  # rare: nothing usable among the candidates
            c[none] = self.initial[rng.integers(self.initial.size, size=int(none.sum()))]
            out[:, p] = c
        return out

    def answer(self, rng: np.random.Generator, user: np.ndarray, items: np.ndarray, ts: np.ndarray) -> dict:
        """The reward components of each session's answer (the world's user response model, vectorised)."""
        from actors.reward_spec import COUNTED

        w = self.world
        S, k = items.shape
        r = w.respond_arrays(w.draw_uniforms(rng, S, k), user, items, ts)
        counts = r.counts()
        comp = {"impressions": np.full(S, float(k)), "ratings": np.zeros(S)}
        comp.update({COUNTED[t]: c for t, c in counts.items()})
        comp["watch_ms"] = r.watch_ms(self.length[items]).sum(1).astype(float)
        comp["engaged"] = comp["clicks"].copy()      # distinct positions with an engaged event: the clicked ones
        comp["events"] = sum(counts.values())
        return comp

    def reward(self, comp: dict) -> np.ndarray:
        """The scalar reward of each session: :func:`actors.reward_spec.scalar_reward`, vectorised."""
        spec = self.spec
        r = np.zeros_like(comp["impressions"])
        for etype, wgt in sorted(spec.weights.items()):
            key = self.counted.get(etype)
            if key is not None and key in comp:
                r = r + wgt * comp[key]
        if spec.duration_aware:
            raise ValueError("the closed-loop simulation scores watch time as capped minutes; "
                             "duration_aware needs each user's history (not simulated)")
        return r + np.minimum(comp["watch_ms"] / 60_000.0, spec.watch_cap_min)

    def sessions(self, rng: np.random.Generator, start_ms: int, beta_of_user: np.ndarray) -> Sessions:
        """One period's sessions: Poisson(activity × mean) per user, uniform times, served and answered."""
        n = rng.poisson(self.activity * self.cfg.sessions_per_period)
        user = np.repeat(np.arange(self.n_users), n)
        ts = start_ms + rng.integers(0, self.period_ms, size=user.size)
        items = self.serve(rng, user, ts, beta_of_user[user])
        comp = self.answer(rng, user, items, ts)
        return Sessions(user, ts, items, comp, self.reward(comp))

    def run(self, rng: np.random.Generator, salt: str, effect: bool = False) -> Run:
        """One experiment: users hashed to arms a/b under ``salt``; b serves ``beta_treatment`` when ``effect``."""
        from serving.experiments.config import Arm, Experiment

        exp = Experiment("world", (Arm("a"), Arm("b")), salt=salt)
        treated = np.fromiter((exp.arm_for(u).name == "b" for u in self.world.user_ids), dtype=float,
                              count=self.n_users)
        cfg = self.cfg
        pre = self.sessions(rng, self.t_start, np.full(self.n_users, cfg.beta_control))
        beta = np.where(treated > 0, cfg.beta_treatment if effect else cfg.beta_control, cfg.beta_control)
        return Run(salt, treated, pre, self.sessions(rng, self.t_exp, beta))

    # -- the tests -----------------------------------------------------------------------------

    def user_sums(self, s: Sessions, looks: int | None = None) -> dict[str, np.ndarray]:
        """Per-user sums of :data:`COLUMNS`: ``(U,)`` or, with ``looks``, ``(looks, U)`` cumulative by look."""
        vals = {"sessions": np.ones(s.user.size), "impressions": s.comp["impressions"],
                "engaged": s.comp["engaged"], "reward": s.reward, "watch_ms": s.comp["watch_ms"],
                "skips": s.comp["skips"]}
        U = self.n_users
        if looks is None:
            return {c: np.bincount(s.user, weights=v, minlength=U).astype(float) for c, v in vals.items()}
        look = np.minimum((s.ts - self.t_exp) * looks // self.period_ms, looks - 1)
        idx = look * U + s.user
        return {c: np.cumsum(np.bincount(idx, weights=v, minlength=looks * U).reshape(looks, U), axis=0)
                for c, v in vals.items()}

    def evaluate(self, run: Run) -> dict[str, float]:
        """The decisions of every test on ``run`` (1 = rejects "no difference") and CUPED's variance ratios.

        On the primary metric (:data:`PRIMARY`): ``fixed`` (user-level delta
        method at the end), ``sequential_peek`` (the confidence sequence
        excludes 0 at any look), ``naive_peek`` (the fixed test at any look),
        ``session_welch`` (Welch over sessions' CTRs, the old report), each also
        ``_cuped``; per metric ``fixed_<metric>``, ``sequential_<metric>`` and
        ``var_ratio_<metric>`` (var(CUPED) / var(raw) of the difference); ``srm``
        (chi-square p < 0.001 on exposed users); ``rel_<metric>`` the lift, ``diff_<metric>`` the
        difference, ``p_<metric>`` / ``p_cuped_<metric>`` the fixed test's p-values at the end.
        """
        from scipy import stats

        from serving.experiments.srm import srm_pvalues

        cfg = self.cfg
        z = stats.norm.ppf(1 - cfg.alpha / 2)
        rho = mixture_rho(cfg.n_users, cfg.alpha)
        t = run.treated
        cum = self.user_sums(run.exp, cfg.looks)
        pre = self.user_sums(run.pre)
        w = (cum["sessions"] > 0).astype(float)             # (looks, U): exposed by each look
        out: dict[str, float] = {}
        for m, (num, den) in WORLD_METRICS.items():
            d = ratio_diff(cum[num], cum[den], t, w)
            dc = ratio_diff(cum[num], cum[den], t, w, cov_num=pre[num], cov_den=pre[den])
            with np.errstate(invalid="ignore"):
                rej = np.abs(d.diff) > z * d.se
                rej_c = np.abs(dc.diff) > z * dc.se
                seq = np.abs(d.diff) > cs_halfwidth(d.se, d.n, cfg.alpha, rho)
                seq_c = np.abs(dc.diff) > cs_halfwidth(dc.se, dc.n, cfg.alpha, rho)
            out[f"fixed_{m}"] = float(rej[-1])
            out[f"fixed_cuped_{m}"] = float(rej_c[-1])
            out[f"sequential_{m}"] = float(seq.any())
            out[f"sequential_cuped_{m}"] = float(seq_c.any())
            out[f"var_ratio_{m}"] = float(dc.var_ratio[-1])
            out[f"rel_{m}"] = float(d.rel[-1])
            out[f"diff_{m}"] = float(d.diff[-1])
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"p_{m}"] = float(2 * stats.norm.sf(np.abs(d.diff[-1] / d.se[-1])))
                out[f"p_cuped_{m}"] = float(2 * stats.norm.sf(np.abs(dc.diff[-1] / dc.se[-1])))
            if m == PRIMARY:
                out.update(fixed=float(rej[-1]), fixed_cuped=float(rej_c[-1]), naive_peek=float(rej.any()),
                           sequential_peek=float(seq.any()), sequential_peek_cuped=float(seq_c.any()))
        # Naive: every session an independent observation (its CTR), Welch's t-test at the end.
        ctr = run.exp.comp["engaged"] / run.exp.comp["impressions"]
        arm = t[run.exp.user] > 0
        a, b = ctr[~arm], ctr[arm]
        out["session_welch"] = float(len(a) > 1 and len(b) > 1
                                     and stats.ttest_ind(b, a, equal_var=False).pvalue < cfg.alpha)
        exposed = w[-1] > 0
        counts = np.array([[(exposed & (t == 0)).sum(), (exposed & (t > 0)).sum()]])
        out["srm"] = float(srm_pvalues(counts, [1, 1])[0] < 0.001)
        out["users"] = float(exposed.sum())
        out["sessions"] = float(run.exp.user.size)
        out["users_without_pre_period"] = float((exposed & (pre["sessions"] == 0)).sum())
        return out

    # -- records, for the report ---------------------------------------------------------------

    def reward_records(self, run: Run, experiment: str = "world") -> tuple[list, list]:
        """``(experiment rewards, pre-period rewards)`` of ``run`` as contract records (what the joiners write)."""
        from ingest.contract import Reward

        def recs(s: Sessions, arm_of, exp_name: str, prefix: str) -> list:
            out = []
            keys = list(s.comp)
            cols = [s.comp[c] for c in keys]
            uid = self.world.user_ids
            for j in range(s.user.size):
                u = int(s.user[j])
                out.append(Reward(request_id=f"{prefix}{j}", user_id=uid[u], experiment=exp_name, arm=arm_of(u),
                                  model_version="v1", components={c: float(v[j]) for c, v in zip(keys, cols)},
                                  reward=float(s.reward[j]), window_closed_ts=int(s.ts[j]) + 1_800_000,
                                  ts=int(s.ts[j])))
            return out

        arms = np.where(run.treated > 0, "b", "a")
        return (recs(run.exp, lambda u: str(arms[u]), experiment, f"{run.salt}-x"),
                recs(run.pre, lambda u: "", "", f"{run.salt}-p"))


def rates(loop: ClosedLoop, n_runs: int, seed: int, effect: bool, tag: str) -> dict[str, float]:
    """Mean of :meth:`ClosedLoop.evaluate` over ``n_runs`` experiments (salt ``{tag}-{i}``), NaN-free means."""
    rng = np.random.default_rng(seed)
    acc: dict[str, list[float]] = {}
    for i in range(n_runs):
        for key, v in loop.evaluate(loop.run(rng, f"{tag}-{i}", effect)).items():
            acc.setdefault(key, []).append(v)
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in acc.items()} | \
        {"runs": float(n_runs)}
