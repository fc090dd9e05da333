"""Reward-model training data: the served ⋈ rewards join, point-in-time histories, the archive and world paths."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from actors.reward_data import (PointInTimeHistory, build_examples, examples_from_archive, examples_from_world,
                                exploration_served, join_rewards)
from ingest.archive import file_name, topic_dir
from ingest.arrow_schemas import to_table
from ingest.contract import REWARDS, SERVED, USER_EVENTS, Reward, Served, UserEvent
from ingest.synthetic import SyntheticWorld, WorldConfig
from models.reward_model.data import EMPTY, UNKNOWN_ITEM

ITEMS = {f"i{k}": k for k in range(10)}


def _served(rid, user, ts, items, version="v1", arm="a"):
    return Served(request_id=rid, user_id=user, ts=ts, model_version=version, experiment="e", arm=arm, items=items,
                  sids=[[] for _ in items], scores=[0.0] * len(items))


def _reward(rid, user, ts, clicks=1.0, version="v1", arm="a", n=2):
    return Reward(request_id=rid, user_id=user, experiment="e", arm=arm, model_version=version,
                  components={"impressions": float(n), "clicks": clicks, "skips": 1.0}, reward=clicks,
                  window_closed_ts=ts + 1, ts=ts)


def _ev(k, user, item, ts, type="click"):
    return UserEvent(event_id=f"e{k}", user_id=user, item_id=item, type=type, ts=ts)


def test_history_is_as_of_the_served_time():
    events = [_ev(0, "u", "i1", 100), _ev(1, "u", "i2", 200), _ev(2, "u", "i3", 300),  # i3 exactly at served ts
              _ev(3, "u", "i4", 301), _ev(4, "u", "i5", 150, "impression"), _ev(5, "v", "i6", 50)]
    h = PointInTimeHistory(reversed(events), ITEMS)        # input order does not matter
    items, types, ts = h.as_of("u", 300)
    assert items.tolist() == [1, 2] and ts.tolist() == [100, 200]   # nothing at or after 300, no impression
    assert h.as_of("u", 100)[0].tolist() == []
    assert h.as_of("nobody", 10**9)[0].tolist() == []
    ex, c = build_examples([(_served("r1", "u", 300, ["i7", "i8"]), _reward("r1", "u", 300))], h, ITEMS, 3)
    hist = ex.histories
    assert hist.items[0].tolist() == [1, 2] and (hist.ts[0] < ex.ts[0]).all()


def test_join_counts_what_it_leaves_out():
    served = [_served("r1", "u", 10, ["i1", "i2"]), _served("r2", "u", 20, ["i3", "nope"], version="v9"),
              _served("r3", "w", 30, ["i4"], arm="ghost"), _served("r1", "u", 10, ["i1"])]
    rewards = [_reward("r1", "u", 10), _reward("r1", "u", 10), _reward("r2", "u", 20, version="v9"),
               _reward("r3", "w", 30, arm="ghost"), _reward("r4", "x", 40)]
    joined, c = join_rewards(served, rewards, known_versions={"v1"}, known_arms={"a"})
    assert [s.request_id for s, _ in joined] == ["r1"]
    assert c["duplicate_served"] == 1 and c["duplicate_reward"] == 1 and c["reward_without_served"] == 1
    assert c["unknown_model_version"] == 1 and c["unknown_arm"] == 1 and c["joined"] == 1
    # without the known lists every version and arm is kept; unknown items get the UNKNOWN_ITEM slot
    joined, _ = join_rewards(served, rewards)
    ex, c2 = build_examples(joined, PointInTimeHistory([], ITEMS), ITEMS, 3)
    assert ex.sessions.tolist() == [[1, 2, EMPTY], [3, UNKNOWN_ITEM, EMPTY], [4, EMPTY, EMPTY]]
    assert c2["unknown_items"] == 1
    np.testing.assert_allclose(ex.targets[0], [0.5, 0.0, np.nan, 0.5])


def test_examples_from_the_archive(tmp_path):
    topics = {
        SERVED: [_served("r1", "u", 1000, ["i1", "i2"]), _served("r2", "u", 5000, ["i3", "i4"], version="old")],
        REWARDS: [_reward("r1", "u", 1000), _reward("r2", "u", 5000, version="old")],
        USER_EVENTS: [_ev(0, "u", "i9", 500), _ev(1, "u", "i1", 1200), _ev(2, "u", "i8", 5000)],
    }
    for topic, recs in topics.items():
        d = topic_dir(tmp_path, topic) / "date=2026-01-01"
        d.mkdir(parents=True)
        n = len(recs)
        pq.write_table(to_table(recs, topic, [0] * n, range(n)), d / file_name(0, 0, n, 0, 1))
    ex, c = examples_from_archive(tmp_path, ITEMS, max_session=2, known_versions={"v1"})
    assert c["unknown_model_version"] == 1 and len(ex) == 1 and ex.request_ids == ["r1"]
    assert ex.histories.items[0].tolist() == [9]
    ex, _ = examples_from_archive(tmp_path, ITEMS, max_session=2)
    assert ex.request_ids == ["r1", "r2"] and ex.histories.items[1].tolist() == [9, 1]   # i8 at 5000 is not in


def test_world_examples_are_point_in_time_and_use_the_joiners_components():
    world = SyntheticWorld(WorldConfig.small(seed=1, n_users=60, n_items=200))
    served = exploration_served(world, 40, 4, seed=3)
    we = examples_from_world(world, served)
    ex = we.examples
    assert len(ex) == 40 and ex.sessions.shape == (40, 4) and we.counters["joined"] == 40
    # every history event strictly precedes its session
    for j in range(len(ex)):
        assert (ex.histories.ts[j] < ex.ts[j]).all()
    # the targets are the reward joiner's components of the world's answer
    r0 = we.rewards[0]
    assert ex.targets[0, 0] == np.float32(min(1.0, r0.components["clicks"] / r0.components["impressions"]))
    assert np.isfinite(ex.targets[:, 0]).all()


# ---- per-slot targets --------------------------------------------------------------------------

def _pev(k, rid, item, pos, type, ts=310, user="u", watch_ms=None, length=None):
    return UserEvent(event_id=f"{rid}-{k}", user_id=user, item_id=item, type=type, ts=ts, request_id=rid,
                     position=pos, watch_ms=watch_ms, context=None if length is None else {"item_length_ms": length})


def _rew(rid, user, ts, events, n):
    from actors.reward_spec import session_components

    comp = session_components(_served(rid, user, ts, [f"i{k}" for k in range(n)]), events)
    return Reward(request_id=rid, user_id=user, experiment="e", arm="a", model_version="v1", components=comp,
                  reward=0.0, window_closed_ts=ts + 1, ts=ts)


def test_slot_targets_say_which_position_was_clicked_liked_skipped_and_watched():
    from actors.reward_data import events_by_request

    items = ["i1", "i2", "i3"]
    ev = [_pev(0, "r1", "i1", 0, "impression"), _pev(1, "r1", "i1", 0, "skip"),
          _pev(2, "r1", "i2", 1, "impression"), _pev(3, "r1", "i2", 1, "click"),
          _pev(4, "r1", "i2", 1, "watch", watch_ms=500, length=1000), _pev(5, "r1", "i2", 1, "like"),
          _pev(6, "r1", "i3", 2, "impression"), _pev(7, "r1", "i3", 2, "dislike")]
    s = _served("r1", "u", 300, items)
    joined = [(s, _rew("r1", "u", 300, ev, 3))]
    ex, c = build_examples(joined, PointInTimeHistory([], ITEMS), ITEMS, 4, session_events=events_by_request(ev))
    st = ex.slot_targets
    assert st.shape == (1, 4, 4) and c["slot_labelled"] == 1
    np.testing.assert_array_equal(st[0, :3, 0], [0, 1, 0])          # click at position 1
    np.testing.assert_array_equal(st[0, :3, 1], [0, 1, 0])          # like at position 1
    np.testing.assert_array_equal(st[0, :3, 3], [1, 0, 1])          # skip at 0, dislike at 2
    assert st[0, 1, 2] == np.float32(0.5) and np.isnan(st[0, [0, 2], 2]).all()   # watch only where clicked
    assert np.isnan(st[0, 3]).all()                                  # the padding slot
    # the session-level targets are the slot labels' means (one click per position)
    np.testing.assert_allclose(ex.targets[0, [0, 1, 3]], np.nanmean(st[0, :3], axis=0)[[0, 1, 3]], rtol=1e-6)
    # an impression the user never reached is still a 0 for click (a 2-event session: all labelled)
    ev2 = [_pev(0, "r2", "i1", 0, "impression"), _pev(1, "r2", "i1", 0, "skip")]
    ex2, _ = build_examples([(_served("r2", "u", 300, ["i1", "i2"]), _rew("r2", "u", 300, ev2, 2))],
                            PointInTimeHistory([], ITEMS), ITEMS, 2, session_events=events_by_request(ev2))
    np.testing.assert_array_equal(ex2.slot_targets[0, :, 0], [0, 0])


def test_slot_targets_are_unknown_without_positions_or_with_other_events():
    from actors.reward_data import events_by_request

    s = _served("r1", "u", 300, ["i1", "i2"])
    no_pos = [_pev(0, "r1", "i1", None, "click")]
    wrong_item = [_pev(0, "r1", "i9", 0, "click")]
    out_of_range = [_pev(0, "r1", "i1", 5, "click")]
    for ev, reason in ((no_pos, "slot_no_position"), (wrong_item, "slot_item_mismatch"),
                       (out_of_range, "slot_no_position")):
        ex, c = build_examples([(s, _rew("r1", "u", 300, ev, 2))], PointInTimeHistory([], ITEMS), ITEMS, 2,
                               session_events=events_by_request(ev))
        assert np.isnan(ex.slot_targets).all() and c[reason] == 1 and c["slot_labelled"] == 0, reason
        assert np.isfinite(ex.targets[0, 0])                          # the session targets still hold
    # fewer events found than the reward counted (late / missing): unknown
    ev = [_pev(0, "r1", "i1", 0, "click"), _pev(1, "r1", "i1", 0, "watch", watch_ms=10)]
    ex, c = build_examples([(s, _rew("r1", "u", 300, ev, 2))], PointInTimeHistory([], ITEMS), ITEMS, 2,
                           session_events=events_by_request(ev[:1]))
    assert np.isnan(ex.slot_targets).all() and c["slot_events_mismatch"] == 1
    # without session_events there are no slot targets at all
    ex, _ = build_examples([(s, _rew("r1", "u", 300, ev, 2))], PointInTimeHistory([], ITEMS), ITEMS, 2)
    assert ex.slot_targets is None


def test_archive_and_world_paths_carry_slot_targets(tmp_path):
    ev = [_pev(0, "r1", "i1", 0, "impression", ts=1001), _pev(1, "r1", "i1", 0, "click", ts=1002),
          _pev(2, "r1", "i2", 1, "impression", ts=1003), _pev(3, "r1", "i2", 1, "skip", ts=1004)]
    topics = {SERVED: [_served("r1", "u", 1000, ["i1", "i2"])], REWARDS: [_rew("r1", "u", 1000, ev, 2)],
              USER_EVENTS: [_ev(9, "u", "i9", 500)] + ev}
    for topic, recs in topics.items():
        d = topic_dir(tmp_path, topic) / "date=2026-01-01"
        d.mkdir(parents=True)
        n = len(recs)
        pq.write_table(to_table(recs, topic, [0] * n, range(n)), d / file_name(0, 0, n, 0, 1))
    ex, c = examples_from_archive(tmp_path, ITEMS, max_session=2)
    assert c["slot_labelled"] == 1
    np.testing.assert_array_equal(ex.slot_targets[0, :, 0], [1, 0])
    np.testing.assert_array_equal(ex.slot_targets[0, :, 3], [0, 1])
    assert ex.histories.items[0].tolist() == [9]                      # the answers are not in its own history

    world = SyntheticWorld(WorldConfig.small(seed=1, n_users=60, n_items=200))
    we = examples_from_world(world, exploration_served(world, 40, 4, seed=3))
    st = we.examples.slot_targets
    assert st.shape == (40, 4, 4) and we.counters["slot_labelled"] == 40
    for j, r in enumerate(we.rewards):   # every click of the joiner's components is at one labelled position
        assert st[j, :, 0].sum() == r.components["clicks"]
        assert st[j, :, 3].sum() == r.components["skips"] + r.components["dislikes"]
    sub = we.examples.subset([3, 1])
    np.testing.assert_array_equal(sub.slot_targets, st[[3, 1]])


def test_item_lengths_come_from_the_events_context():
    from actors.reward_data import item_lengths_from_events

    ev = [_pev(0, "r1", "i2", 0, "watch", ts=10, watch_ms=5, length=60_000),
          _pev(1, "r1", "i2", 0, "watch", ts=5, watch_ms=5, length=30_000),     # older report: not taken
          _pev(2, "r2", "i3", 0, "watch", ts=10, watch_ms=5),                    # no length
          _pev(3, "r2", "nope", 0, "watch", ts=10, watch_ms=5, length=1000)]     # unknown item
    out = item_lengths_from_events(ev, ITEMS, 10)
    assert out.shape == (10,) and out[2] == 60_000 and out[3] == 0 and out.sum() == 60_000
    world = SyntheticWorld(WorldConfig.small(seed=1, n_users=60, n_items=200))
    we = examples_from_world(world, exploration_served(world, 40, 4, seed=3))
    known = we.item_length_ms > 0
    assert known.any() and (we.item_length_ms[known] == world.item_length_ms[known]).all()

