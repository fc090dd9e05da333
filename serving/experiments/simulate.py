"""Simulated A/B experiments with correlated sessions, to prove the report's statistics (numpy only).

Generative model (per simulated experiment): each user has a latent
propensity p_u ~ Beta(κ·μ, κ·(1 − μ)) (mean μ = ``base_ctr``, small κ =
strongly different users) and an activity g_u ~ Gamma(2, ½), is assigned
to treatment with probability ½, and has 1 + Poisson(g_u·(``sessions_mean`` − 1))
sessions (capped) of ``items`` items each; every item is engaged with probability p_u (× (1 + ``effect``) in
treatment). A pre-exposure period of the same shape (no effect) gives the
CUPED covariates. Users arrive in index order: look j of J sees the first
j/J of them with all their sessions.

Sessions of one user share p_u, so they are correlated: a session-level test
treats them as independent and is anti-conservative, the user-level delta
method is not. Invariant: no I/O; everything is drawn from the ``rng`` passed
in, so a seed reproduces a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.experiments.delta import ratio_diff
from serving.experiments.sequential import cs_halfwidth, mixture_rho


@dataclass(frozen=True)
class SimConfig:
    """Size and shape of one simulated experiment (see the module docstring)."""

    users: int = 1000
    sessions_mean: float = 4.0
    max_sessions: int = 12
    items: int = 10
    base_ctr: float = 0.1
    concentration: float = 5.0
    effect: float = 0.0
    looks: int = 10
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.users < 20 or self.items < 1 or self.max_sessions < 1 or self.looks < 1:
            raise ValueError(f"SimConfig: users >= 20, items, max_sessions, looks >= 1; got {self}")
        if not 0 < self.base_ctr < 1 or self.concentration <= 0 or not 0 < self.alpha < 1:
            raise ValueError(f"SimConfig: base_ctr and alpha in (0, 1), concentration > 0; got {self}")
        if self.base_ctr * (1 + self.effect) >= 1:
            raise ValueError("SimConfig: base_ctr × (1 + effect) must stay below 1")


@dataclass(frozen=True)
class SimBatch:
    """``n`` simulated experiments: arrays with leading axis = experiment."""

    treated: np.ndarray        # (n, users) 0/1
    engaged: np.ndarray        # (n, users, max_sessions) engaged items per session
    live: np.ndarray           # (n, users, max_sessions) 1 where the session exists
    pre_engaged: np.ndarray    # (n, users)
    pre_sessions: np.ndarray   # (n, users)


def simulate(rng: np.random.Generator, n: int, cfg: SimConfig) -> SimBatch:
    """Draw ``n`` experiments of ``cfg``."""
    a, b = cfg.concentration * cfg.base_ctr, cfg.concentration * (1 - cfg.base_ctr)
    p = rng.beta(a, b, size=(n, cfg.users))
    treated = (rng.random((n, cfg.users)) < 0.5).astype(float)
    p_eff = np.clip(p * (1 + cfg.effect * treated), 0, 1)
    g = rng.gamma(2.0, 0.5, size=(n, cfg.users))
    k = np.minimum(1 + rng.poisson(g * (cfg.sessions_mean - 1)), cfg.max_sessions)
    live = (np.arange(cfg.max_sessions) < k[..., None]).astype(float)
    engaged = rng.binomial(cfg.items, np.broadcast_to(p_eff[..., None], live.shape)) * live
    k_pre = np.minimum(1 + rng.poisson(g * (cfg.sessions_mean - 1)), cfg.max_sessions)
    pre_engaged = rng.binomial(cfg.items * k_pre, p).astype(float)
    return SimBatch(treated, engaged.astype(float), live, pre_engaged, k_pre.astype(float))


def evaluate(batch: SimBatch, cfg: SimConfig) -> dict[str, np.ndarray]:
    """Per experiment: the decision of each test (1 = rejects "no difference") and CUPED's variance ratio.

    ``fixed``: user-level delta-method z test of CTR at the end; ``fixed_cuped``:
    the same with CUPED; ``sequential_peek``: the confidence sequence excludes
    0 at any of the looks (``_cuped``: on the CUPED estimate); ``naive_peek``: the fixed test rejects at any look;
    ``session_welch``: Welch's t-test over sessions' CTRs at the end.
    ``var_ratio_ctr`` / ``var_ratio_sessions``: var(CUPED) / var(raw) of the
    difference of CTR and of sessions per user.
    """
    from scipy import stats

    z = stats.norm.ppf(1 - cfg.alpha / 2)
    eng = batch.engaged.sum(-1)
    sess = batch.live.sum(-1)
    imp = sess * cfg.items
    pre_imp = batch.pre_sessions * cfg.items
    t = batch.treated
    n_sims, users = t.shape
    rho = mixture_rho(users, cfg.alpha)
    seq = np.zeros(n_sims, dtype=bool)
    seq_cuped = np.zeros(n_sims, dtype=bool)
    peek = np.zeros(n_sims, dtype=bool)
    for j in range(1, cfg.looks + 1):
        w = np.zeros((n_sims, users))
        w[:, : int(round(users * j / cfg.looks))] = 1.0
        d = ratio_diff(eng, imp, t, w)
        ok = np.isfinite(d.se) & (d.se > 0)
        peek |= ok & (np.abs(d.diff) > z * d.se)
        seq |= ok & (np.abs(d.diff) > cs_halfwidth(d.se, d.n, cfg.alpha, rho))
        dc = ratio_diff(eng, imp, t, w, cov_num=batch.pre_engaged, cov_den=pre_imp)
        seq_cuped |= np.isfinite(dc.se) & (np.abs(dc.diff) > cs_halfwidth(dc.se, dc.n, cfg.alpha, rho))
    end = ratio_diff(eng, imp, t)
    fixed = np.abs(end.diff) > z * end.se
    cup = ratio_diff(eng, imp, t, cov_num=batch.pre_engaged, cov_den=pre_imp)
    fixed_cuped = np.abs(cup.diff) > z * cup.se
    ones = np.ones_like(sess)
    per_user = ratio_diff(sess, ones, t, cov_num=batch.pre_sessions, cov_den=ones)
    # Naive: every session an independent observation (its CTR), Welch's t-test.
    ctr_s = batch.engaged / cfg.items
    wt = batch.live * t[..., None]
    wc = batch.live * (1 - t[..., None])
    nt, nc = wt.sum((-1, -2)), wc.sum((-1, -2))
    mt, mc = (wt * ctr_s).sum((-1, -2)) / nt, (wc * ctr_s).sum((-1, -2)) / nc
    vt = (wt * (ctr_s - mt[:, None, None]) ** 2).sum((-1, -2)) / (nt - 1)
    vc = (wc * (ctr_s - mc[:, None, None]) ** 2).sum((-1, -2)) / (nc - 1)
    se = np.sqrt(vt / nt + vc / nc)
    df = (vt / nt + vc / nc) ** 2 / ((vt / nt) ** 2 / (nt - 1) + (vc / nc) ** 2 / (nc - 1))
    welch = 2 * stats.t.sf(np.abs(mt - mc) / se, df) < cfg.alpha
    return {"fixed": fixed, "fixed_cuped": fixed_cuped, "sequential_peek": seq,
            "sequential_peek_cuped": seq_cuped, "naive_peek": peek,
            "session_welch": welch, "var_ratio_ctr": cup.var_ratio, "var_ratio_sessions": per_user.var_ratio}


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson interval of a rate ``k / n``."""
    from scipy import stats

    a = 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi
