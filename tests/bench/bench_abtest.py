"""Suite ``abtest``: the A/B report's statistics proven by simulation (false positives, power, CUPED, SRM).

``genrec bench abtest [--quick]``. Simulated experiments with correlated
sessions (:mod:`serving.experiments.simulate`: a latent propensity and
activity per user, several sessions per user, users randomised 50/50, a
pre-period for CUPED), analysed with the report's user-level estimators
(:mod:`serving.experiments.delta`, checked equal to tea-tasting in the unit
tests) at α = 0.05:

* ``aa_fpr_fixed`` (and ``_cuped``): A/A false-positive rate of the
  fixed-horizon user-level delta-method test, one look at the end;
* ``aa_fpr_sequential_peek10`` (and ``_cuped``): rejects if the confidence
  sequence excludes 0 at any of 10 looks;
* ``aa_fpr_session_welch``: the old report's Welch test over sessions;
* ``aa_fpr_naive_peek10``: the fixed test looked at 10 times.
  Targets: fixed and sequential at or below 0.05 (within the 95 % binomial
  interval ``aa_target_interval_*`` of 0.05 for this many experiments), the
  naive ones visibly above.
* ``power_*``: share of experiments that detect a known injected relative CTR
  effect (``config.effect``);
* ``cuped_variance_ratio_*``: var(CUPED) / var(raw) of the difference;
* ``srm_false_alarm_rate``: chi-square p < 0.001 under a correct split (≈ 0.001).

The same figures on the **synthetic world's closed loop** (``world_*``,
:mod:`serving.experiments.world_sim`): the world's users (drifting topic
tastes, log-normal activity, fatigue, items arriving over time) are hashed to
two arms by the experiments' own assignment code with a new salt per
experiment; each arm's policy serves sessions ("noisy top items": the best of
8 candidates under ``beta · affinity`` + Gumbel noise), the world's reaction
model answers them, and each answer becomes the reward joiners' components and
``RewardSpec`` reward. A pre-period under the control policy gives the CUPED
covariates (users without one get zeros, as in the report).

* ``world_aa_fpr_*``: A/A false-positive rates on CTR (primary), the same
  tests as above, plus ``world_aa_fpr_fixed_<metric>`` for the other metrics;
* ``world_srm_false_alarm_rate``: over the A/A runs' exposed users, and
  ``world_srm_false_alarm_rate_salts`` over many more salts of the hash alone;
* ``world_power_*``: A/B runs whose treatment serves with a larger ``beta``
  (a better policy; its mean CTR lift is ``world_ab_mean_lift_ctr``);
* ``world_cuped_variance_ratio_<metric>``: var(CUPED) / var(raw) per metric;
* ``world_report_max_p_diff``: one A/B run put through the report itself
  (``build_reward_report`` on the run's reward records, tea-tasting) against
  the vectorised estimators used for the thousands of runs: the largest
  difference of a p-value (raw and CUPED, every metric).
"""

from __future__ import annotations

import time

SUITE = "abtest"


def _rates(n_sims: int, cfg, seed: int, chunk: int = 200) -> dict:
    import numpy as np

    from serving.experiments.simulate import evaluate, simulate

    rng = np.random.default_rng(seed)
    acc: dict[str, list] = {}
    done = 0
    while done < n_sims:
        k = min(chunk, n_sims - done)
        for key, v in evaluate(simulate(rng, k, cfg), cfg).items():
            acc.setdefault(key, []).append(np.asarray(v, dtype=float))
        done += k
    return {key: float(np.concatenate(v).mean()) for key, v in acc.items()}


def _world(quick: bool) -> tuple[dict, dict]:
    """The closed-loop figures and their config (see the module docstring)."""
    import dataclasses

    import numpy as np

    from serving.experiments.config import Arm, Experiment
    from serving.experiments.simulate import binomial_interval
    from serving.experiments.srm import srm_pvalues
    from serving.experiments.world_sim import PRIMARY, WORLD_METRICS, ClosedLoop, WorldExpConfig, rates

    t0 = time.perf_counter()
    n_aa, n_ab, n_salts = (100, 50, 200) if quick else (1000, 500, 5000)
    cfg = WorldExpConfig(n_users=1000, sessions_per_period=8.0, beta_control=1.0, beta_treatment=1.75)
    loop = ClosedLoop(cfg)
    aa = rates(loop, n_aa, seed=11, effect=False, tag="world-aa")
    ab = rates(loop, n_ab, seed=12, effect=True, tag="world-ab")
    # SRM of the hash alone, over many more salts: users per arm among the world's users
    users = loop.world.user_ids
    counts = np.zeros((n_salts, 2))
    for i in range(n_salts):
        exp = Experiment("world", (Arm("a"), Arm("b")), salt=f"world-srm-{i}")
        b = sum(1 for u in users if exp.arm_for(u).name == "b")
        counts[i] = (len(users) - b, b)
    srm_salts = float((srm_pvalues(counts, [1, 1]) < 0.001).mean())
    check = _report_check(loop, np.random.default_rng(13))
    lo, hi = binomial_interval(round(0.05 * n_aa), n_aa)
    m = {
        "world_aa_fpr_fixed": aa["fixed"],
        "world_aa_fpr_fixed_cuped": aa["fixed_cuped"],
        "world_aa_fpr_sequential_peek10": aa["sequential_peek"],
        "world_aa_fpr_sequential_peek10_cuped": aa["sequential_peek_cuped"],
        "world_aa_fpr_session_welch": aa["session_welch"],
        "world_aa_fpr_naive_peek10": aa["naive_peek"],
        **{f"world_aa_fpr_fixed_{k}": aa[f"fixed_{k}"] for k in WORLD_METRICS if k != PRIMARY},
        "world_aa_target_interval_low": round(lo, 4),
        "world_aa_target_interval_high": round(hi, 4),
        "world_srm_false_alarm_rate": aa["srm"],
        "world_srm_false_alarm_rate_salts": srm_salts,
        "world_power_fixed": ab["fixed"],
        "world_power_fixed_cuped": ab["fixed_cuped"],
        "world_power_sequential": ab["sequential_peek"],
        "world_power_sequential_cuped": ab["sequential_peek_cuped"],
        "world_power_fixed_mean_reward": ab["fixed_mean_reward"],
        "world_power_fixed_cuped_mean_reward": ab["fixed_cuped_mean_reward"],
        "world_ab_mean_lift_ctr": round(ab[f"rel_{PRIMARY}"], 4),
        **{f"world_cuped_variance_ratio_{k}": round(ab[f"var_ratio_{k}"], 4) for k in WORLD_METRICS},
        "world_report_max_p_diff": check,
        "world_users_exposed": round(aa["users"], 1),
        "world_sessions_per_exposed_user": round(aa["sessions"] / aa["users"], 2),
        "world_share_without_pre_period": round(aa["users_without_pre_period"] / aa["users"], 4),
        "world_sim_seconds": round(time.perf_counter() - t0, 1),
    }
    conf = {"world_aa_experiments": n_aa, "world_ab_experiments": n_ab, "world_srm_salts": n_salts,
            **{(k if k.startswith("world_") else f"world_{k}"): v for k, v in dataclasses.asdict(cfg).items()
               if k != "reward_spec"},
            "world_reward_spec": "RewardSpec() defaults"}
    return m, conf


def _report_check(loop, rng) -> float:
    """Largest |p(report) − p(vectorised)| over the world metrics, raw and CUPED, on one A/B run."""
    from serving.experiments.config import Analysis, Arm, Experiment
    from serving.experiments.report import build_reward_report
    from serving.experiments.units import pre_period_sums
    from serving.experiments.world_sim import PRIMARY, WORLD_METRICS

    run = loop.run(rng, "world-report-check", effect=True)
    mine = loop.evaluate(run)
    exp_recs, pre_recs = loop.reward_records(run)
    others = tuple(k for k in WORLD_METRICS if k != PRIMARY)
    exp = Experiment("world", (Arm("a"), Arm("b")), salt="world-report-check", control="a",
                     analysis=Analysis(primary=(PRIMARY,), secondary=others, sequential=True,
                                       planned_users=loop.cfg.n_users))
    worst = 0.0
    for pre in (None, pre_period_sums(pre_recs)):
        rep = build_reward_report(exp, exp_recs, pre_period=pre, looks=1)
        for k in WORLD_METRICS:
            got = rep["arms"]["b"]["metrics"][k]["vs_control"]["p_value"]
            want = mine[f"p_cuped_{k}" if pre is not None else f"p_{k}"]
            worst = max(worst, abs(got - want))
    return float(f"{worst:.3g}")


def run(quick: bool = False, dataset: str | None = None) -> dict:
    import numpy as np

    from serving.experiments.simulate import SimConfig, binomial_interval
    from serving.experiments.srm import srm_pvalues

    t0 = time.perf_counter()
    n_aa, n_pow = (400, 200) if quick else (4000, 1000)
    users = 500 if quick else 2000
    effect = 0.2
    aa_cfg = SimConfig(users=users)
    pow_cfg = SimConfig(users=users, effect=effect)
    aa = _rates(n_aa, aa_cfg, seed=1)
    pw = _rates(n_pow, pow_cfg, seed=2)
    lo, hi = binomial_interval(round(0.05 * n_aa), n_aa)
    n_srm, srm_users = (50_000, 10_000) if quick else (400_000, 10_000)
    rng = np.random.default_rng(3)
    w = np.array([0.25, 0.25, 0.5])
    srm2 = float((srm_pvalues(rng.multinomial(srm_users, [0.5, 0.5], size=n_srm), [1, 1]) < 0.001).mean())
    srm3 = float((srm_pvalues(rng.multinomial(srm_users, w, size=n_srm), w) < 0.001).mean())
    metrics = {
        "aa_fpr_fixed": aa["fixed"],
        "aa_fpr_fixed_cuped": aa["fixed_cuped"],
        "aa_fpr_sequential_peek10": aa["sequential_peek"],
        "aa_fpr_sequential_peek10_cuped": aa["sequential_peek_cuped"],
        "aa_fpr_session_welch": aa["session_welch"],
        "aa_fpr_naive_peek10": aa["naive_peek"],
        "aa_target_interval_low": round(lo, 4),
        "aa_target_interval_high": round(hi, 4),
        "power_fixed": pw["fixed"],
        "power_fixed_cuped": pw["fixed_cuped"],
        "power_sequential": pw["sequential_peek"],
        "power_sequential_cuped": pw["sequential_peek_cuped"],
        "cuped_variance_ratio_ctr": round(aa["var_ratio_ctr"], 4),
        "cuped_variance_ratio_sessions_per_user": round(aa["var_ratio_sessions"], 4),
        "srm_false_alarm_rate": (srm2 + srm3) / 2,
        "srm_false_alarm_rate_2arms": srm2,
        "srm_false_alarm_rate_3arms": srm3,
        "sim_seconds": round(time.perf_counter() - t0, 1),
    }
    world, world_conf = _world(quick)
    metrics.update(world)
    return {
        "config": {"aa_experiments": n_aa, "power_experiments": n_pow, "users": users, "effect": effect,
                   "alpha": aa_cfg.alpha, "looks": aa_cfg.looks, "sessions_mean": aa_cfg.sessions_mean,
                   "items": aa_cfg.items, "base_ctr": aa_cfg.base_ctr, "concentration": aa_cfg.concentration,
                   "srm_experiments": n_srm, "srm_users": srm_users,
                   "library": "tea-tasting 1.14.0 (report); numpy reference (simulation)", **world_conf},
        "metrics": metrics,
    }
