"""Closed-loop A/B experiments on the synthetic world: faithful to its users, hashed like the real split,
analysed like the report, and a small A/A run where the user-level tests hold α and session-level Welch does not."""

from __future__ import annotations

import numpy as np
import pytest

from actors.reward_spec import RewardSpec, scalar_reward, session_components
from ingest.contract import Served
from serving.experiments.config import Analysis, Arm, Experiment
from serving.experiments.report import build_reward_report
from serving.experiments.simulate import binomial_interval
from serving.experiments.units import pre_period_sums
from serving.experiments.world_sim import WORLD_METRICS, ClosedLoop, WorldExpConfig, rates

SMALL = WorldExpConfig(world_seed=3, n_users=400, n_items=600, n_topics=12, sessions_per_period=8.0)


@pytest.fixture(scope="module")
def loop():
    return ClosedLoop(SMALL)


def test_vectorised_answers_match_the_worlds_respond(loop):
    """The same served sessions answered by ``SyntheticWorld.respond`` (event records, joined as the reward
    joiners do) and by the vectorised model: the same means per session, within sampling error."""
    rng = np.random.default_rng(0)
    n = 1500
    user = rng.integers(loop.n_users, size=n)
    ts = loop.t_exp + rng.integers(0, loop.period_ms, size=n)
    items = loop.serve(rng, user, ts, np.full(n, 2.0))
    w = loop.world
    ref = {k: [] for k in ("clicks", "likes", "skips", "watch_ms", "engaged", "events", "reward")}
    spec = RewardSpec()
    for j in range(n):
        s = Served(request_id=f"r{j}", user_id=w.user_ids[user[j]], ts=int(ts[j]), model_version="v1",
                   experiment="", arm="", items=[w.item_ids[i] for i in items[j]], sids=[[0]] * items.shape[1],
                   scores=[0.0] * items.shape[1])
        comp = session_components(s, w.respond(s.user_id, s.items, s.request_id, s.ts))
        for k in ref:
            ref[k].append(scalar_reward(spec, comp) if k == "reward" else comp.get(k, 0.0))
    comp = loop.answer(rng, user, items, ts)
    vec = {**comp, "reward": loop.reward(comp)}
    for k, v in ref.items():
        a, b = np.asarray(v, dtype=float), np.asarray(vec[k], dtype=float)
        se = np.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 4 * se + 1e-9, (k, a.mean(), b.mean(), se)
    assert np.mean(ref["clicks"]) > 0.3  # the policy serves things these users click


def test_the_reward_is_the_joiners_scalar_reward(loop):
    rng = np.random.default_rng(1)
    user = rng.integers(loop.n_users, size=50)
    ts = loop.t_exp + rng.integers(0, loop.period_ms, size=50)
    comp = loop.answer(rng, user, loop.serve(rng, user, ts, np.ones(50)), ts)
    r = loop.reward(comp)
    for j in range(50):
        assert r[j] == pytest.approx(scalar_reward(RewardSpec(), {k: float(v[j]) for k, v in comp.items()}))


def test_users_are_split_by_the_experiments_hash_and_sessions_fall_in_their_periods(loop):
    run = loop.run(np.random.default_rng(2), "salt-x")
    exp = Experiment("world", (Arm("a"), Arm("b")), salt="salt-x")
    assert np.array_equal(run.treated, [exp.arm_for(u).name == "b" for u in loop.world.user_ids])
    assert (run.pre.ts < loop.t_exp).all() and (run.exp.ts >= loop.t_exp).all()
    assert (run.exp.ts < loop.t_exp + loop.period_ms).all()
    out = loop.evaluate(run)
    assert 0 < out["users_without_pre_period"] < out["users"] <= loop.n_users


def test_one_run_through_the_report_gives_the_vectorised_p_values(loop):
    """The report (tea-tasting on reward records) and the vectorised estimators agree, with and without CUPED."""
    rng = np.random.default_rng(4)
    import dataclasses

    better = ClosedLoop(dataclasses.replace(SMALL, beta_treatment=2.0), world=loop.world)
    run = better.run(rng, "report-check", effect=True)
    mine = better.evaluate(run)
    recs, pre = better.reward_records(run)
    exp = Experiment("world", (Arm("a"), Arm("b")), salt="report-check",
                     analysis=Analysis(primary=("ctr",), secondary=("mean_reward", "watch_ms", "skip_rate")))
    for cov in (None, pre_period_sums(pre)):
        rep = build_reward_report(exp, recs, pre_period=cov, looks=1)
        assert rep["users"] == mine["users"] and rep["analysis"]["cuped"] == (cov is not None)
        for k in WORLD_METRICS:
            got = rep["arms"]["b"]["metrics"][k]["vs_control"]
            assert got["p_value"] == pytest.approx(mine[f"p_cuped_{k}" if cov else f"p_{k}"], abs=1e-6)
            if cov:
                assert got["variance_ratio"] == pytest.approx(mine[f"var_ratio_{k}"], rel=1e-6)


def test_small_closed_loop_aa_holds_alpha_and_session_welch_does_not(loop):
    """150 A/A experiments of 400 users (seconds): the user-level tests are not inflated; the session-level
    Welch test of the old report is, visibly."""
    n = 150
    r = rates(loop, n, seed=5, effect=False, tag="aa")
    for key in ("fixed", "fixed_cuped", "sequential_peek"):
        assert binomial_interval(round(r[key] * n), n)[0] <= 0.05, (key, r[key])
        assert r[key] <= 0.1, (key, r[key])
    assert r["session_welch"] > r["fixed"] + 0.04 and r["session_welch"] > 0.09, r
    assert r["naive_peek"] > r["sequential_peek"]
    assert r["srm"] <= 0.02
    assert all(r[f"var_ratio_{k}"] < 1 for k in WORLD_METRICS)  # the pre-period explains something
