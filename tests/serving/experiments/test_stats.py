"""A/B statistics: library results against the reference, corrections, confidence sequences, A/A by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from serving.experiments.corrections import adjust_pvalues
from serving.experiments.delta import ratio_diff, ratio_mean_var
from serving.experiments.sequential import always_valid_pvalue, cs_halfwidth, mixture_rho
from serving.experiments.simulate import SimConfig, binomial_interval, evaluate, simulate
from serving.experiments.srm import srm_by_day, srm_pvalues


def _users(seed, n=3000, effect=0.0):
    rng = np.random.default_rng(seed)
    t = rng.random(n) < 0.5
    p = rng.beta(1, 9, n)
    imp = (rng.poisson(3, n) + 1) * 5.0
    eng = rng.binomial(imp.astype(int), np.clip(p * (1 + effect * t), 0, 1)).astype(float)
    pimp = (rng.poisson(3, n) + 1) * 5.0
    peng = rng.binomial(pimp.astype(int), p).astype(float)
    return t, eng, imp, peng, pimp


@pytest.mark.parametrize("seed", [0, 1])
def test_tea_tasting_matches_the_reference_delta_method_and_cuped(seed):
    import pyarrow as pa
    import tea_tasting as tt

    t, eng, imp, peng, pimp = _users(seed)
    tab = pa.table({"variant": np.where(t, "b", "a"), "eng": eng, "imp": imp, "peng": peng, "pimp": pimp})
    res = tt.Experiment(raw=tt.RatioOfMeans("eng", "imp", use_t=False),
                        cup=tt.RatioOfMeans("eng", "imp", "peng", "pimp", use_t=False)).analyze(tab, control="a")
    z = stats.norm.ppf(0.975)
    for key, kw in (("raw", {}), ("cup", {"cov_num": peng, "cov_den": pimp})):
        ref = ratio_diff(eng, imp, t, **kw)
        lib = res[key]
        assert lib.effect_size == pytest.approx(float(ref.diff), rel=1e-9)
        assert (lib.effect_size_ci_upper - lib.effect_size_ci_lower) / (2 * z) == pytest.approx(float(ref.se), rel=1e-9)
        assert lib.rel_effect_size == pytest.approx(float(ref.rel), rel=1e-9)
        assert lib.pvalue == pytest.approx(2 * stats.norm.sf(abs(float(ref.diff / ref.se))), rel=1e-6)
    assert float(ratio_diff(eng, imp, t, cov_num=peng, cov_den=pimp).var_ratio) < 0.9  # CUPED helps here


def test_delta_method_variance_matches_a_bootstrap():
    t, eng, imp, _, _ = _users(3, n=2000)
    n, ratio, var = ratio_mean_var(eng, imp)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(eng), size=(400, len(eng)))
    boot = eng[idx].sum(1) / imp[idx].sum(1)
    assert float(np.sqrt(var / n)) == pytest.approx(float(boot.std()), rel=0.15)


def _holm(p):
    p = np.asarray(p)
    order = np.argsort(p)
    adj = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adj, 1)
    return out


def _bh(p):
    p = np.asarray(p)
    m = len(p)
    order = np.argsort(p)[::-1]
    adj = np.minimum.accumulate(p[order] * m / (m - np.arange(m)))
    out = np.empty_like(p)
    out[order] = np.minimum(adj, 1)
    return out


def test_corrections_match_hand_written_holm_and_bh():
    rng = np.random.default_rng(5)
    for _ in range(20):
        p = rng.random(7) ** 3
        h, hr = adjust_pvalues(p, "holm")
        b, br = adjust_pvalues(p, "bh")
        assert np.allclose(h, _holm(p)) and np.array_equal(hr, _holm(p) <= 0.05)
        assert np.allclose(b, _bh(p)) and np.array_equal(br, _bh(p) <= 0.05)
    adj, rej = adjust_pvalues([0.01, float("nan"), 0.02], "holm")
    assert np.isnan(adj[1]) and not rej[1] and adj[0] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="holm, bh or none"):
        adjust_pvalues([0.1], "sidak")


def test_confidence_sequence_is_wider_and_its_pvalue_agrees():
    rho = mixture_rho(10_000, 0.05)
    for n in (100, 10_000, 1_000_000):
        h = cs_halfwidth(0.01, n, 0.05, rho)
        assert h > 1.96 * 0.01
        assert always_valid_pvalue(h, 0.01, n, rho) == pytest.approx(0.05, rel=1e-9)
    with pytest.raises(ValueError):
        mixture_rho(0, 0.05)


def test_aa_user_level_tests_hold_alpha_and_session_level_welch_does_not():
    """400 A/A experiments of 400 users with correlated sessions (seconds)."""
    cfg = SimConfig(users=400)
    r = evaluate(simulate(np.random.default_rng(11), 400, cfg), cfg)
    n = 400
    for key in ("fixed", "fixed_cuped", "sequential_peek"):
        k = int(r[key].sum())
        assert binomial_interval(k, n)[0] <= 0.05, (key, k / n)  # not inflated
    lo_welch, _ = binomial_interval(int(r["session_welch"].sum()), n)
    lo_peek, _ = binomial_interval(int(r["naive_peek"].sum()), n)
    assert lo_welch > 0.1 and lo_peek > 0.05  # the naive ones are
    assert float(np.mean(r["var_ratio_ctr"])) < 0.8


def test_srm_false_alarm_rate_and_a_broken_day():
    rng = np.random.default_rng(2)
    counts = rng.multinomial(5000, [0.5, 0.5], size=20_000)
    rate = float((srm_pvalues(counts, [1, 1]) < 0.001).mean())
    assert rate < 0.003
    first = np.array([0] * 1000 + [86_400_000] * 1000)
    arms = np.array(["a", "b"] * 500 + ["a"] * 800 + ["b"] * 200)
    days = srm_by_day(first, arms, {"a": 0.5, "b": 0.5})
    assert [d["srm"] for d in days] == [False, True]
