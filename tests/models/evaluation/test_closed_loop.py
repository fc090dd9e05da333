import numpy as np
import pytest

from models.evaluation.closed_loop import closed_loop_rewards


def _world(taste: dict[str, str]):
    calls = []

    def respond(user, items, request_id, ts):
        calls.append((user, tuple(items), request_id, ts))
        return [i for i in items if i.startswith(taste[user])]   # "events": the items the user likes

    return respond, calls


def test_mean_reward_per_policy_with_shared_request_ids():
    respond, calls = _world({"u1": "a", "u2": "b"})
    sessions = {"good": [["a1", "a2"], ["b1", "x"]], "bad": [["x", "y"], ["a1", ""]]}
    res = closed_loop_rewards(["u1", "u2"], sessions, respond, lambda ev: float(len(ev)), ts=7)
    assert res.mean == {"good": 1.5, "bad": 0.0}
    np.testing.assert_array_equal(res.per_user["good"], [2.0, 1.0])
    assert res.as_dict() == {"closed_loop_reward_good": 1.5, "closed_loop_reward_bad": 0.0}
    # same user -> same request id for every policy (common random numbers), empty slots dropped
    ids = {(c[0], c[2]) for c in calls}
    assert ids == {("u1", "cl-0"), ("u2", "cl-1")}
    assert ("u2", ("a1",), "cl-1", 7) in calls


def test_one_session_per_user_is_required():
    respond, _ = _world({"u1": "a"})
    with pytest.raises(ValueError, match="one per user"):
        closed_loop_rewards(["u1"], {"p": [["a"], ["b"]]}, respond, len, ts=0)
    with pytest.raises(ValueError, match="at least one policy"):
        closed_loop_rewards(["u1"], {}, respond, len, ts=0)


def test_closed_loop_stats_on_a_world_order_the_baselines():
    """On a real (small) world: the oracle's sessions are worth more and clicked more than random ones,
    the rates are rates, and every policy is scored."""
    from ingest.synthetic import SyntheticWorld, WorldConfig
    from models.evaluation.closed_loop import STATS, closed_loop_stats
    from models.evaluation.policies import baseline_sessions

    world = SyntheticWorld(WorldConfig(seed=2, n_users=80, n_items=200, n_topics=6, sessions_per_user=3, days=5))
    ts = world.cfg.start_ts_ms + world.cfg.duration_ms
    users = world.user_ids[:80]
    sessions = baseline_sessions(world, users, 5, ts, policies=("random", "oracle"))
    sessions["short"] = [x[:2] + ["", "nope"] for x in sessions["oracle"]]   # empty / unknown ids: not shown
    st = closed_loop_stats(world, users, sessions, ts, draws=16)
    assert set(st) == {"random", "oracle", "short"} and all(set(v) == set(STATS) for v in st.values())
    assert st["oracle"]["mean_reward"] > st["random"]["mean_reward"] + 3 * st["oracle"]["mean_reward_se"]
    assert st["oracle"]["click_rate"] > 2 * st["random"]["click_rate"]
    for v in st.values():
        assert 0 <= v["click_rate"] <= v["click_rate_reached"] <= 1 and 0 <= v["leave_rate"] <= 1
        assert 0 < v["reached_share"] <= 1
    # the first two slots of "short" meet the oracle's draws: the same clicks there, nothing after
    assert st["short"]["leave_rate"] <= st["oracle"]["leave_rate"]
    with pytest.raises(ValueError, match="one per user"):
        closed_loop_stats(world, users, {"p": sessions["oracle"][:3]}, ts)
