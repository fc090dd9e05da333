"""The simulator's user response model: the pure vectorised core, the world's use of it, and its calibration."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from actors.reward_spec import RewardSpec
from ingest.synthetic import SyntheticWorld, WorldConfig
from ingest.user_response import (EXTRA_TYPES, N_UNIFORMS, ResponseConfig, choice_probabilities, draw_uniforms,
                                  respond_arrays, session_rewards)
from serving.experiments.rewards import session_reward
from user_model_calibration import calibrate

CFG = ResponseConfig()


def _answer(rel, topic=None, shown=None, cfg=CFG, n=4000, k=None, seed=0):
    """``n`` sessions with the same ``rel`` row (a list of K matches), answered with fresh draws."""
    rel = np.broadcast_to(np.asarray(rel, dtype=float), (n, len(rel))).copy()
    K = rel.shape[1] if k is None else k
    topic = np.broadcast_to(np.arange(K) if topic is None else np.asarray(topic), (n, K)).copy()
    shown = np.ones((n, K), dtype=bool) if shown is None else np.broadcast_to(np.asarray(shown), (n, K)).copy()
    return respond_arrays(cfg, rel, topic, shown, draw_uniforms(np.random.default_rng(seed), n, K))


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(WorldConfig.small(0))


# ---- the pure model ----------------------------------------------------------------------------

def test_config_is_validated_and_errors_name_the_field():
    with pytest.raises(ValueError, match="temperature=0"):
        ResponseConfig(temperature=0)
    with pytest.raises(ValueError, match="examine_decay=1.5"):
        ResponseConfig(examine_decay=1.5)
    with pytest.raises(ValueError, match="extras"):
        ResponseConfig(extras=(0.5,))
    with pytest.raises(ValueError, match="draws"):
        ResponseConfig(draws=0)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['temp'\]"):
        ResponseConfig.of({"temp": 1.0})
    assert ResponseConfig.of({"patience": 3.0}).patience == 3.0
    assert ResponseConfig.of(None) == ResponseConfig()
    with pytest.raises(ValueError, match="shape|must be"):
        respond_arrays(CFG, np.zeros((2, 3)), np.zeros((2, 3), int), np.ones((2, 3), bool), np.zeros((2, 3, 1)))


def test_no_click_dominates_for_bad_items_and_clicks_grow_with_the_match():
    m = np.linspace(0, 1, 11)
    p_click, p_dis = choice_probabilities(CFG, m)
    assert np.all(np.diff(p_click) > 0) and np.all(np.diff(p_dis) < 0)
    assert p_click[0] < 0.01 and 1 - p_click[0] - p_dis[0] > 0.9      # the no-click option wins for a bad item
    assert p_click[-1] > 0.4                                         # a best item is clicked often
    bad, good = _answer([0.05] * 6), _answer([1.0] + [0.95] * 5, topic=np.arange(6))
    assert bad.click.mean() < 0.02 and good.click.mean() > 5 * bad.click.mean()
    assert (good.watch_frac[good.click].mean() > bad.watch_frac[bad.click].mean() + 0.3)  # watch grows with match
    assert not (bad.click & (bad.skip | bad.dislike)).any() and not (bad.skip & bad.dislike).any()
    assert ((bad.click | bad.skip | bad.dislike) == bad.examined).all()  # every examined item has one outcome


def test_quality_raises_clicks_at_the_same_match():
    rel, topic, shown = np.full((20000, 3), 0.5), np.tile(np.arange(3), (20000, 1)), np.ones((20000, 3), bool)
    u = draw_uniforms(np.random.default_rng(1), 20000, 3)
    lo, hi = (respond_arrays(CFG, rel, topic, shown, u, np.full((20000, 3), q)) for q in (0.0, 1.0))
    assert hi.click.mean() > 1.5 * lo.click.mean()
    mid = respond_arrays(CFG, rel, topic, shown, u)                 # no quality: ½, between the two
    assert lo.click.sum() <= mid.click.sum() <= hi.click.sum()


def test_examination_decays_with_position():
    r = _answer([0.5] * 8, cfg=ResponseConfig(patience=1e9), n=20000)   # nobody leaves
    ex = r.examined.mean(0)
    assert r.reached.all()
    np.testing.assert_allclose(ex, CFG.examine_decay ** np.arange(8), atol=0.015)


def test_leaving_stops_every_later_event():
    r = _answer([0.0] * 8, cfg=ResponseConfig(patience=1.0), n=3000)
    assert r.left.mean() > 0.5
    # reached is a prefix of the session: once gone, the user reaches nothing further
    assert (np.diff(r.reached.astype(int), axis=1) <= 0).all()
    for j in np.flatnonzero(r.left)[:200]:
        last = int(np.flatnonzero(r.reached[j]).max())
        assert last < 7 and (r.skip[j, last] or r.dislike[j, last])       # left after passing an item
        assert not (r.examined[j, last + 1:] | r.click[j, last + 1:] | r.skip[j, last + 1:]).any()
    # engaging items keep users: far fewer leave
    assert _answer([1.0] * 8, topic=np.arange(8), cfg=ResponseConfig(patience=1.0), n=3000).left.mean() < \
        r.left.mean() - 0.2


def test_dislikes_appear_for_bad_matches_only():
    bad, good = _answer([0.0] * 6, n=20000), _answer([1.0] * 6, topic=np.arange(6), n=20000)
    assert bad.dislike.sum() > 100
    assert good.dislike.sum() < bad.dislike.sum() / 20


def test_fatigue_for_same_topic_items():
    same, diverse = _answer([1.0] * 6, topic=np.zeros(6, int)), _answer([1.0] * 6, topic=np.arange(6))
    assert same.click[:, 0].mean() == pytest.approx(diverse.click[:, 0].mean(), abs=1e-12)  # same draws
    assert same.click[:, 3:].mean() < diverse.click[:, 3:].mean() - 0.1
    assert same.match[:, 1][same.examined[:, 0]].max() <= CFG.fatigue + 1e-12


def test_unshown_slots_are_skipped_over_but_keep_their_position():
    shown = np.array([True, False, True, True])
    r = _answer([1.0, 1.0, 1.0, 1.0], topic=np.arange(4), shown=shown, n=5000)
    assert not (r.reached[:, 1] | r.examined[:, 1] | r.click[:, 1]).any()
    assert r.examined[:, 2].mean() == pytest.approx(CFG.examine_decay ** 2, abs=0.03)


def test_vectorised_answers_equal_answering_each_session_alone():
    rng = np.random.default_rng(3)
    S, K = 40, 7
    rel, topic = rng.random((S, K)), rng.integers(3, size=(S, K))
    shown = rng.random((S, K)) > 0.1
    u = draw_uniforms(rng, S, K)
    batch = respond_arrays(CFG, rel, topic, shown, u)
    for j in range(S):
        one = respond_arrays(CFG, rel[j:j + 1], topic[j:j + 1], shown[j:j + 1], u[j:j + 1])
        for f in ("reached", "examined", "click", "dislike", "skip", "extras", "watch_frac", "match", "left"):
            np.testing.assert_array_equal(getattr(one, f)[0], getattr(batch, f)[j], err_msg=f)


def test_session_rewards_is_the_reward_specs_scalar():
    r = _answer([0.9, 0.2, 0.7, 0.0], topic=np.arange(4), n=200)
    counts = r.counts()
    watch = r.watch_ms(np.full((200, 4), 120_000)).sum(1)
    spec = RewardSpec()
    got = session_rewards(counts, watch, spec.weights, spec.watch_cap_min)
    from actors.reward_spec import COUNTED, scalar_reward

    for j in range(0, 200, 17):
        comp = {COUNTED[t]: float(c[j]) for t, c in counts.items()} | {"watch_ms": float(watch[j])}
        assert got[j] == pytest.approx(scalar_reward(spec, comp))
    assert set(counts) == {"impression", "click", "watch", "skip", "dislike", *EXTRA_TYPES}
    assert N_UNIFORMS == 4 + len(EXTRA_TYPES)


# ---- the world's use of it ---------------------------------------------------------------------

def test_respond_is_reproducible_by_request_id_and_is_the_shared_model(world):
    ts = world.cfg.start_ts_ms + world.cfg.duration_ms
    items = world.best_items("u5", 4, ts) + ["i3", "nope", "i7"]
    a = world.respond("u5", items, "req-1", ts)
    assert a == world.respond("u5", items, "req-1", ts)
    assert [e.event_id for e in a] == [f"req-1-{n}" for n in range(len(a))]
    assert all(e.request_id == "req-1" and e.ts >= ts for e in a)
    assert all(x.ts <= y.ts for x, y in zip(a, a[1:]))
    assert not any(e.position == 5 for e in a)                    # the unknown id is not shown
    others = [world.respond("u5", items, f"req-{n}", ts) for n in range(2, 30)]
    assert any(o != a for o in others)
    # the events are the arrays of the shared core, drawn from (world seed, request id)
    idx = world.session_index(items)[None, :]
    rel, topic, shown, _, quality = world.session_arrays(np.array([5]), idx, np.array([ts]))
    u = draw_uniforms(np.random.default_rng([world.cfg.seed, 3, zlib.crc32(b"req-1")]), 1, len(items))
    counts = respond_arrays(world.response, rel, topic, shown, u, quality).counts()
    for t, c in counts.items():
        assert sum(e.type == t for e in a) == int(c[0]), t


def test_expected_value_is_the_mean_reward_of_respond(world):
    ts = world.cfg.start_ts_ms + world.cfg.duration_ms
    sessions = {"best": world.best_items("u9", 5, ts), "mixed": ["i1", "i2", "i3", "i4", "i5"]}
    for name, items in sessions.items():
        ev = world.expected_value("u9", items, ts, draws=4000)
        got = np.array([session_reward(world.respond("u9", items, f"ev-{name}-{n}", ts)) for n in range(1500)])
        assert abs(got.mean() - ev) < 4 * got.std() / np.sqrt(got.size) + 0.05, (name, got.mean(), ev)
    batch = world.expected_values(["u9", "u9", "u1"], [sessions["best"], sessions["mixed"], ["i1", "zz"]], ts)
    assert batch[0] == pytest.approx(world.expected_value("u9", sessions["best"], ts))
    assert batch[2] == pytest.approx(world.expected_value("u1", ["i1"], ts))   # unknown ids are not shown
    assert batch[0] > batch[1]
    # the reward is configurable: weights only on clicks → the expected click count plus capped watch minutes
    clicks_only = world.expected_value("u9", sessions["best"], ts, reward={"weights": {"click": 1.0},
                                                                          "watch_cap_min": 0.0})
    assert 0 < clicks_only < 5
    with pytest.raises(ValueError, match="duration_aware"):
        world.expected_value("u9", sessions["best"], ts, reward={"duration_aware": True})


def test_calibration_popularity_well_below_oracle_and_realistic_click_rate(world):
    """The calibration of docs/decisions/030: on the small world a few percent of served items are clicked
    under random or popularity sessions; the order is random < popularity < oracle < fatigue-aware oracle,
    with the oracle's sessions worth clearly more than popularity's."""
    s = calibrate(world, n_users=200, draws=32)
    for p in ("random", "popularity"):
        assert 0.01 <= s[p]["click_rate"] <= 0.10, (p, s[p])
        assert s[p]["leave_rate"] > s["oracle"]["leave_rate"] + 0.2
        assert s[p]["dislike_rate"] > 2 * s["oracle"]["dislike_rate"]
    assert s["oracle"]["mean_reward"] > s["popularity"]["mean_reward"] + 2.0, s
    assert s["oracle"]["click_rate"] > 2 * s["popularity"]["click_rate"]
    assert s["popularity"]["mean_reward"] > s["random"]["mean_reward"] + 0.2   # items' shared appeal (quality)
    assert s["oracle_diverse"]["mean_reward"] > s["oracle"]["mean_reward"]      # fatigue rewards variety
