"""The reward joiner's pure engine: windows, watermark, lateness, late/orphan counting, reward spec."""

from __future__ import annotations

import random

import pytest

from actors.reward_joiner import RewardJoinerConfig, output_partitions
from actors.reward_spec import RewardSpec, scalar_reward, session_components, watch_percentile
from actors.reward_window import RewardWindows, source_key
from ingest.contract import Served, UserEvent

SOURCES = [source_key("served", 0), source_key("user-events", 0)]


def served(rid, ts, user="u1", n=3):
    return Served(request_id=rid, user_id=user, ts=ts, model_version="v1", experiment="exp", arm="a",
                  items=[f"i{k}" for k in range(n)], sids=[[k] for k in range(n)], scores=[0.0] * n)


def ev(eid, rid, ts, type="click", user="u1", **kw):
    return UserEvent(event_id=eid, user_id=user, item_id=kw.pop("item", "i0"), type=type, ts=ts,
                     request_id=rid, **kw)


def heartbeat(w: RewardWindows, ts: int) -> list:
    """Advance both sources to ``ts`` (events without a request id) and close what is due."""
    w.add_events(0, [ev(f"hb{ts}", None, ts)])
    w.add_served(0, [served(f"hb{ts}", ts, user="hb")])
    return w.advance()


def test_window_closes_only_when_the_watermark_passes_its_end():
    w = RewardWindows(SOURCES, window_ms=1000, lateness_ms=0)
    w.add_served(0, [served("r1", 100)])
    w.add_events(0, [ev("e1", "r1", 500), ev("e2", "r1", 1100, type="like")])
    assert w.advance() == []                      # watermark 100 (served partition)
    assert heartbeat(w, 1100) == []               # end 1100 is not passed yet (strict)
    out = heartbeat(w, 1101)
    assert [r.request_id for r in out] == ["r1"]
    r = out[0]
    assert r.components["clicks"] == 1 and r.components["likes"] == 1 and r.components["impressions"] == 3
    assert r.window_closed_ts == 1100 and r.ts == 100
    assert w.open_sessions == 2                   # the heartbeat sessions stay open


def test_allowed_lateness_holds_the_watermark_back_and_late_events_are_counted():
    w = RewardWindows(SOURCES, window_ms=1000, lateness_ms=500)
    w.add_served(0, [served("r1", 0)])
    assert heartbeat(w, 1400) == []               # watermark 900: still open
    w.add_events(0, [ev("e1", "r1", 950)])        # 450 ms behind its partition: within lateness
    out = heartbeat(w, 1600)                      # watermark 1100 > 1000
    assert out[0].components["clicks"] == 1
    w.add_events(0, [ev("e2", "r1", 990)])        # its session has closed
    w.add_events(0, [ev("e3", "hb1600", 5000)])   # after its window's end
    w.advance()
    c = w.counter_dict()
    assert c["late"] == {"window_closed": 1, "outside_window": 1}
    assert c["joined"] == 1


def test_orphans_wait_for_their_served_record_then_are_counted():
    w = RewardWindows(SOURCES, window_ms=1000, lateness_ms=0)
    w.add_events(0, [ev("e1", "r1", 200), ev("e2", "nobody", 210)])  # events ahead of the served topic
    w.add_served(0, [served("r1", 150)])
    assert w.advance() == [] and w.waiting_events == 1
    out = heartbeat(w, 1200)
    assert out[0].request_id == "r1" and out[0].components["clicks"] == 1
    assert w.counter_dict()["orphans"] == 1 and w.waiting_events == 0


def test_duplicates_count_once_and_sessions_without_feedback_get_a_reward():
    w = RewardWindows(SOURCES, window_ms=1000)
    w.add_served(0, [served("r1", 0), served("r2", 10), served("r1", 0)])
    w.add_events(0, [ev("e1", "r1", 5), ev("e1", "r1", 5), ev("e2", "r1", 6, type="watch", watch_ms=30_000)])
    out = heartbeat(w, 2000)
    got = {r.request_id: r for r in out}
    assert set(got) == {"r1", "r2"}
    assert got["r1"].components["clicks"] == 1 and got["r1"].components["watch_ms"] == 30_000
    assert got["r2"].components["events"] == 0 and got["r2"].reward == 0.0
    c = w.counter_dict()
    assert c["duplicates"] == 1 and c["duplicate_served"] == 1 and c["closed_without_feedback"] == 1


def test_components_watch_fraction_and_engaged_positions():
    s = served("r", 0, n=5)
    evs = [ev("a", "r", 1, position=3), ev("b", "r", 2, type="watch", watch_ms=30_000, position=3,
                                          context={"item_length_ms": 60_000}),
           ev("c", "r", 3, type="like", position=1), ev("d", "r", 4, type="watch", watch_ms=5_000, position=4),
           ev("e", "r", 5, type="skip", position=0)]
    comp = session_components(s, evs)
    assert comp["watch_fraction"] == 0.5 and comp["watch_fraction_items"] == 1  # length known for one only
    assert comp["engaged"] == 3 and comp["engaged_first_position"] == 1
    assert comp["skips"] == 1 and comp["watch_ms"] == 35_000
    assert "watch_fraction" not in session_components(s, evs[3:])                # no length known: absent
    assert session_components(s, list(reversed(evs))) == comp                    # arrival order is irrelevant


def test_reward_spec_weights_cap_and_validation():
    spec = RewardSpec(weights={"click": 1.0, "skip": -0.5}, watch_cap_min=2.0)
    comp = {"clicks": 2.0, "skips": 1.0, "watch_ms": 10 * 60_000.0}
    assert scalar_reward(spec, comp) == 2.0 - 0.5 + 2.0
    with pytest.raises(ValueError, match="unknown event type"):
        RewardSpec(weights={"clik": 1.0})
    with pytest.raises(ValueError, match="watch_cap_min"):
        RewardSpec(watch_cap_min=-1)
    assert RewardSpec.of({"watch_cap_min": 3}).watch_cap_min == 3
    with pytest.raises(ValueError, match="unknown field"):
        RewardSpec.of({"cap": 3})
    cfg = RewardJoinerConfig(window_s=2, reward={"duration_aware": True})
    assert cfg.reward.duration_aware and cfg.window_ms == 2000
    with pytest.raises(ValueError, match="window_s"):
        RewardJoinerConfig(window_s=0)


def test_duration_aware_reward_ranks_watch_time_within_the_users_own_history():
    assert watch_percentile(5.0, []) == 0.5
    assert watch_percentile(5.0, [1.0, 2.0, 3.0]) == pytest.approx(3.5 / 4)
    assert watch_percentile(2.0, [1.0, 2.0, 3.0]) == pytest.approx(2.0 / 4)
    spec = RewardSpec(weights={}, duration_aware=True, duration_weight=4.0, history_sessions=3)
    w = RewardWindows(SOURCES, window_ms=100, spec=spec)
    watches = [10_000, 20_000, 5_000, 30_000, 30_000]
    for k, ms in enumerate(watches):
        w.add_served(0, [served(f"r{k}", k * 1000, user="heavy")])
        w.add_events(0, [ev(f"e{k}", f"r{k}", k * 1000 + 1, type="watch", watch_ms=ms, user="heavy")])
    out = heartbeat(w, 10_000)
    rewards = [r.reward for r in out if r.user_id == "heavy"]
    # r0 first: 0.5; r1 beats [10s]: 0.75; r2 below [10s,20s]: 1/6; r3 top of 3: 7/8; r4 ties the top (history
    # keeps the last 3 sessions: 20s, 5s, 30s): (2 + 1) / 4
    assert rewards == pytest.approx([4 * 0.5, 4 * 0.75, 4 / 6, 4 * 7 / 8, 4 * 3 / 4])


def test_snapshot_roundtrip_then_same_results_as_without_it():
    rng = random.Random(3)
    stream = []
    for k in range(300):
        t0 = k * 50
        stream.append(("s", served(f"r{k}", t0, user=f"u{k % 7}")))
        for j in range(rng.randrange(4)):
            stream.append(("e", ev(f"e{k}-{j}", f"r{k}", t0 + rng.randrange(800), user=f"u{k % 7}",
                                  type=rng.choice(["click", "like", "watch", "skip"]), watch_ms=rng.randrange(9000))))
    stream.sort(key=lambda x: x[1].ts)
    spec = RewardSpec(duration_aware=True)

    def run(cut: int | None):
        w = RewardWindows(SOURCES, window_ms=1000, lateness_ms=200, spec=spec)
        out = []
        for i, (kind, rec) in enumerate(stream):
            if i == cut:
                w = RewardWindows.from_bytes(w.snapshot(), SOURCES, spec)
            (w.add_served if kind == "s" else w.add_events)(0, [rec])
            out += w.advance()
        return out, w.counter_dict()

    base = run(None)
    assert len(base[0]) > 250
    assert run(len(stream) // 2) == base


def test_watermark_waits_for_every_source_and_idle_ones_can_be_excluded():
    w = RewardWindows(SOURCES + [source_key("served", 2)], window_ms=10)
    w.add_served(0, [served("r1", 0)])
    heartbeat(w, 100)
    assert w.advance() == []                                 # served/2 has no record yet
    assert [r.request_id for r in w.advance(exclude=[source_key("served", 2)])] == ["r1"]


def test_output_partitions_follow_the_key_when_counts_divide():
    assert output_partitions((1, 3), 4, 2) == (1,)
    assert output_partitions((0, 2), 4, 2) == (0,)
    assert output_partitions((0,), 3, 2) == (0, 1)


def _stream(n: int = 300, seed: int = 3):
    rng = random.Random(seed)
    stream = []
    for k in range(n):
        t0 = k * 50
        stream.append(("s", served(f"r{k}", t0, user=f"u{k % 7}")))
        for j in range(rng.randrange(4)):
            stream.append(("e", ev(f"e{k}-{j}", f"r{k}", t0 + rng.randrange(800), user=f"u{k % 7}",
                                  type=rng.choice(["click", "like", "watch", "skip"]), watch_ms=rng.randrange(9000),
                                  position=rng.choice([None, 0, 1, 2]),
                                  context=rng.choice([None, {"item_length_ms": 60_000}]))))
    stream.sort(key=lambda x: x[1].ts)
    return stream


def test_a_version_1_snapshot_is_still_read():
    import msgspec

    from actors import reward_window as rw

    stream, spec = _stream(), RewardSpec(duration_aware=True)
    by_rid = {rec.request_id: rec for kind, rec in stream if kind == "s"}
    w = RewardWindows(SOURCES, window_ms=1000, lateness_ms=200, spec=spec)
    cut = len(stream) // 2
    for kind, rec in stream[:cut]:
        (w.add_served if kind == "s" else w.add_events)(0, [rec])
        w.advance()
    v1 = rw._SnapshotV1(
        version=1, window_ms=w.window_ms, lateness_ms=w.lateness_ms, watermark=w.watermark, newest=dict(w.newest),
        sessions=[rw._SessionV1(by_rid[rid], list(evs.values()) if evs else [])
                  for rid, (_, evs) in w.sessions.items()],
        pending=[e for p in w.pending.values() for e in p.values()], closed=dict(w.closed),
        history={u: list(h) for u, h in w.history.items()}, counters=dict(w.counters))
    restored = RewardWindows.from_bytes(msgspec.msgpack.encode(v1), SOURCES, spec)
    assert restored.snapshot() == w.snapshot()
    with pytest.raises(ValueError, match="newer than this code"):
        RewardWindows.from_bytes(msgspec.msgpack.encode([99]), SOURCES, spec)


def test_the_joiners_wire_rewards_are_the_engines_rewards_byte_for_byte():
    import msgspec

    from actors.reward_codec import WireReward

    stream, spec = _stream(seed=8), RewardSpec(duration_aware=True)
    outs = []
    for record in (None, WireReward):
        w = RewardWindows(SOURCES, window_ms=1000, lateness_ms=200, spec=spec,
                          **({} if record is None else {"record": record}))
        out = []
        for kind, rec in stream:
            (w.add_served if kind == "s" else w.add_events)(0, [rec])
            out += w.advance()
        out += heartbeat(w, 10**6)
        outs.append([msgspec.json.encode(r) for r in out])
    assert outs[0] == outs[1] and len(outs[0]) > 250
