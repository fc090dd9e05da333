"""SequenceState against a plain-Python reference: rings, growth, de-dup, checkpoints, reads."""

from __future__ import annotations

import random
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.sequence_state import SequenceConfig, SequenceState
from ingest.contract import EVENT_TYPES, UserEvent


def _events(n, n_users=20, n_items=50, seed=0, dup_rate=0.0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if out and rng.random() < dup_rate:
            out.append(out[rng.randrange(max(0, len(out) - 30), len(out))])  # re-delivery
            continue
        t = rng.choice(EVENT_TYPES)
        out.append(UserEvent(event_id=f"e{i}", user_id=f"u{rng.randrange(n_users)}",
                             item_id=f"i{rng.randrange(n_items)}", type=t, ts=1000 + i,
                             watch_ms=rng.randrange(60_000) if t == "watch" else None))
    return out


def _reference(events, capacity, window, lane_of):
    rings, lanes = {}, {}
    for e in events:
        lane = lanes.setdefault(lane_of(e), deque())
        if e.event_id in lane:
            continue
        lane.append(e.event_id)
        if len(lane) > window:
            lane.popleft()
        rings.setdefault(e.user_id, deque(maxlen=capacity)).append(
            (e.item_id, e.type, e.ts, -1 if e.watch_ms is None else e.watch_ms))
    return {u: list(r) for u, r in rings.items()}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 400), cap=st.integers(1, 40), batch=st.integers(1, 97),
       seed=st.integers(0, 10**6), window=st.integers(1, 50))
def test_matches_reference_for_any_batching(n, cap, batch, seed, window):
    evs = _events(n, seed=seed, dup_rate=0.1)
    lane_of = lambda e: int(e.user_id[1:]) % 3  # noqa: E731
    s = SequenceState(SequenceConfig(capacity=cap, dedup_window=window, initial_users=2, initial_width=1))
    for i in range(0, n, batch):
        chunk = evs[i:i + batch]
        s.apply(chunk, [lane_of(e) for e in chunk])
    assert s.snapshot() == _reference(evs, cap, window, lane_of)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 600), cap=st.integers(1, 40), batch=st.integers(1, 200), seed=st.integers(0, 10**6),
       window=st.integers(1, 80), dup_rate=st.sampled_from([0.0, 0.0, 0.01, 0.05]), restore_at=st.integers(0, 600))
def test_batched_lane_runs_and_restores_match_reference(n, cap, batch, seed, window, dup_rate, restore_at):
    """Long single-lane runs (as a shard polls them) take the set-based de-dup path; a checkpoint
    round trip at any point continues exactly (windows smaller and larger than a run)."""
    evs = _events(n, seed=seed, dup_rate=dup_rate)
    lane_of = lambda e: int(e.user_id[1:]) % 2  # noqa: E731
    cfg = SequenceConfig(capacity=cap, dedup_window=window, initial_users=2, initial_width=1)
    s = SequenceState(cfg)
    for i in range(0, n, batch):
        if i <= restore_at < i + batch:
            s = SequenceState.from_bytes(s.to_bytes(), cfg)
        chunk = evs[i:i + batch]
        s.apply_runs([(lane, [e for e in chunk if lane_of(e) == lane]) for lane in (1, 0)])
    assert s.snapshot() == _reference(evs, cap, window, lane_of)
    assert s.duplicates + s.events_applied == n


def test_window_smaller_than_one_run_keeps_only_the_newest_ids():
    mk = lambda i: UserEvent(event_id=f"e{i}", user_id="u", item_id="i", type="click", ts=i)  # noqa: E731
    for n in (5, 10):  # a run longer than the window, by less and by more than a whole window
        s = SequenceState(SequenceConfig(dedup_window=3))
        assert s.apply_runs([(0, [mk(i) for i in range(n)])]).applied == n   # one run, all new
        assert s.lanes[0].ids == set(s.lanes[0].fifo) == {f"e{n - 3}", f"e{n - 2}", f"e{n - 1}"}
        assert s.apply_runs([(0, [mk(n - 4)])]).applied == 1   # just out of the window: accepted again
        assert s.apply_runs([(0, [mk(n - 1)])]).duplicates == 1  # still in it: dropped
        assert list(s.lanes[0].fifo) == [f"e{n - 2}", f"e{n - 1}", f"e{n - 4}"]
        assert s.lanes[0].ids == set(s.lanes[0].fifo)


def test_duplicates_are_dropped_and_counted():
    e = UserEvent(event_id="x1", user_id="u", item_id="i", type="click", ts=5)
    s = SequenceState()
    r = s.apply([e, e, e])
    assert (r.applied, r.duplicates) == (1, 2)
    assert s.apply([e]).duplicates == 1
    assert s.user_events("u") == [("i", "click", 5, -1)]
    assert s.histories(["u"])["total"].tolist() == [1]


def test_dedup_window_is_bounded_and_per_lane():
    s = SequenceState(SequenceConfig(dedup_window=2))
    mk = lambda i: UserEvent(event_id=f"e{i}", user_id="u", item_id="i", type="click", ts=i)  # noqa: E731
    s.apply([mk(1), mk(2), mk(3)], 0)            # window of lane 0 now holds e2, e3
    assert s.apply([mk(1)], 0).applied == 1        # e1 fell out of the window: accepted again
    assert s.apply([mk(3)], 0).duplicates == 1
    assert s.apply([mk(3)], 1).applied == 1        # other lane, other window


def test_histories_shapes_padding_and_unknown_users():
    s = SequenceState(SequenceConfig(capacity=4))
    s.apply(_events(100, n_users=3, seed=1))
    h = s.histories(["u0", "nobody", "u2"], max_len=6)
    assert h["items"].shape == h["ts"].shape == h["mask"].shape == (3, 6)
    assert h["lengths"].tolist() == [4, 0, 4]
    assert not h["mask"][1].any() and h["last_ts"][1] == -1 and h["total"][1] == 0
    assert (h["items"][~h["mask"]] == -1).all() and (h["event_type"][~h["mask"]] == -1).all()
    # newest last, chronological
    assert (np.diff(h["ts"][0, :4]) > 0).all() and h["ts"][0, 3] == h["last_ts"][0]
    ids = [h["item_ids"][j] for j in h["items"][0, :4]]
    assert ids == [e[0] for e in s.user_events("u0")]
    assert s.histories(["u0"], max_len=2)["ts"][0].tolist() == h["ts"][0, 2:4].tolist()


def test_growth_by_doubling_keeps_data():
    s = SequenceState(SequenceConfig(capacity=64, initial_users=1, initial_width=1))
    evs = _events(3000, n_users=300, seed=2)
    s.apply(evs[:1000])
    before = s.snapshot()
    s.apply(evs[1000:])
    assert s.item.shape[0] >= 300 and s.item.shape[0] & (s.item.shape[0] - 1) == 0
    assert s.width == 16 or s.width == 64 or s.width in (1, 2, 4, 8, 32)
    assert s.snapshot() == _reference(evs, 64, 65_536, lambda e: 0)
    assert all(len(v) <= 64 for v in before.values())
    assert 20 <= s.bytes_per_slot() < 24


def test_checkpoint_roundtrip_then_continue_equals_uninterrupted():
    evs = _events(5000, n_users=40, seed=3, dup_rate=0.05)
    cfg = SequenceConfig(capacity=32, dedup_window=500)
    a = SequenceState(cfg)
    a.apply(evs[:2500])
    b = SequenceState.from_bytes(a.to_bytes(), cfg)
    assert b.snapshot() == a.snapshot()
    a.apply(evs[2500:])
    b.apply(evs[2500:])
    assert b.snapshot() == a.snapshot()
    assert (b.events_applied, b.duplicates) == (a.events_applied, a.duplicates)


def test_sid_slots_fill_in_late():
    s = SequenceState()
    s.apply([UserEvent(event_id="a", user_id="u", item_id="i1", type="click", ts=1)])
    assert s.histories(["u"])["sid_slot"].tolist() == [[-1]]
    s.set_item_sids(["i1", "i2"], [7, 9])
    s.apply([UserEvent(event_id="b", user_id="u", item_id="i2", type="like", ts=2)])
    assert s.histories(["u"])["sid_slot"].tolist() == [[7, 9]]


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="capacity=0"):
        SequenceConfig(capacity=0)
    s = SequenceState(SequenceConfig(capacity=8))
    with pytest.raises(ValueError, match="capacity=4"):
        SequenceState.from_bytes(s.to_bytes(), SequenceConfig(capacity=4))


def test_reads_under_the_lock_never_see_a_torn_batch():
    """One thread applies (lock held only for id registration and the scatter), another reads: every read
    is a consistent state — ring rows in time order, newest == last_ts, length == min(total, capacity)."""
    import threading

    cap = 8
    s = SequenceState(SequenceConfig(capacity=cap, initial_users=1, initial_width=1))
    lock = threading.Lock()
    evs = _events(30_000, n_users=300, n_items=5000, seed=7)   # ts strictly increase with the index
    users = [f"u{i}" for i in range(300)]
    done, errors, reads = threading.Event(), [], [0]

    def reader():
        seen = {}
        while not done.is_set():
            with lock:
                h = s.histories(users)
            for b, u in enumerate(users):
                n, total = int(h["lengths"][b]), int(h["total"][b])
                ts = h["ts"][b, :n]
                if n != min(total, cap) or (n and (np.any(np.diff(ts) <= 0) or ts[-1] != h["last_ts"][b])) \
                        or total < seen.get(u, 0):
                    errors.append((u, n, total, ts.tolist(), int(h["last_ts"][b])))
                seen[u] = total
            reads[0] += 1

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(0, len(evs), 500):
            s.apply_runs([(0, evs[i:i + 500])], lock=lock)
    finally:
        done.set()
        t.join()
    assert not errors, errors[:3]
    assert reads[0] > 0 and s.events_applied == len(evs)


def test_version_1_checkpoints_still_load():
    """The format written before the framed one (.npz arrays, msgpack id chunks) restores the same state."""
    import io

    import msgspec

    cfg = SequenceConfig(capacity=6, dedup_window=10)
    a = SequenceState(cfg)
    a.apply(_events(300, seed=3), 1)
    p = a.snapshot_parts()
    n, w = p["item"].shape
    lengths = np.minimum(p["head"], w)
    rows = np.repeat(np.arange(n), lengths)
    k = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    cols = (p["head"][rows] - lengths[rows] + k) % w
    buf = io.BytesIO()
    np.savez(buf, head=p["head"], last_ts=p["last_ts"], lengths=lengths.astype(np.int32), item_sid=p["item_sid"],
             **{c: p[c][rows, cols] for c in ("item", "etype", "ts", "watch", "sid")})
    enc = msgspec.msgpack.encode
    v1 = enc({"version": 1, "capacity": 6, "user_ids": [enc(p["user_ids"])], "item_ids": [enc(p["item_ids"])],
              "lanes": {k: [enc(a.lanes[int(k)].fifo)] for k in p["lanes"]}, "events_applied": p["events_applied"],
              "duplicates": p["duplicates"], "arrays": buf.getvalue()})
    b = SequenceState.from_bytes(v1, cfg)
    assert b.snapshot() == a.snapshot() and list(b.lanes[1].fifo) == list(a.lanes[1].fifo)
    with pytest.raises(ValueError, match="version 9"):
        SequenceState.from_bytes(enc({"version": 9}), cfg)


def test_lane_view_is_a_stable_snapshot_while_the_lane_goes_on():
    """A checkpoint takes the de-dup window as chunk references; later batches (fast path), one-at-a-time
    adds (the open tail chunk) and evictions must not change what that view describes."""
    from actors.dedup_window import DedupWindow, join_view, window_ids

    lane = DedupWindow(window=5)
    assert lane.add_if_all_new(["a", "b", "c"])
    assert not lane.seen_or_add("d") and lane.seen_or_add("b")       # "d" goes into the open tail
    view = lane.view()
    before = window_ids(*view)
    assert before == ["a", "b", "c", "d"] and join_view(*view) == b"a\nb\nc\nd"
    assert not lane.seen_or_add("e") and not lane.seen_or_add("f")   # tail grows, "a" evicted
    assert lane.add_if_all_new(["g", "h"])                            # "b", "c" evicted
    assert lane.fifo == ["d", "e", "f", "g", "h"] and lane.ids == set(lane.fifo)
    assert window_ids(*view) == before                               # the view did not move
    assert not lane.add_if_all_new(["x", "h"]) and lane.fifo == ["d", "e", "f", "g", "h"]  # dup: unchanged
    assert lane.add_if_all_new(["p", "q", "r", "s", "t", "u"]) and lane.fifo == ["q", "r", "s", "t", "u"]


def test_reusing_snapshots_equal_fresh_ones_through_growth_and_wrap():
    """snapshot_parts(reuse=True) copies only rows written since the previous reusing snapshot (or precopy)
    into kept buffers and takes the id lists by length: its checkpoint bytes must equal a fresh snapshot's at
    every point — across pre-copies, new users, column growth, ring wrap-around, and while the state changes
    after it."""
    cfg = SequenceConfig(capacity=8, dedup_window=50, initial_users=4, initial_width=2)
    s = SequenceState(cfg)
    rng = np.random.default_rng(0)
    evs = _events(3000, n_users=60, seed=9)
    pos, pending = 0, []
    while pos < len(evs):
        k = int(rng.integers(1, 400))
        s.apply(evs[pos:pos + k], int(rng.integers(0, 3)))
        pos += k
        if rng.random() < 0.5:  # pre-copy some rows, then write more (some of them again)
            left = s.precopy(int(rng.integers(1, 30)))
            assert left == int(s._dirty[:s.num_users].sum())
            s.apply(_events(50, n_users=80, seed=pos + 1)[::3], 2)
        fresh = b"".join(SequenceState.encode_snapshot(s.snapshot_parts()))
        reused = s.snapshot_parts(reuse=True)
        assert b"".join(SequenceState.encode_snapshot(reused)) == fresh
        pending.append((reused, fresh))
        if len(pending) > 1:  # the previous reusing snapshot is released before the next one is taken
            pending.pop(0)
        more = [UserEvent(event_id=f"x{pos}-{j}", user_id=f"u{j}", item_id=f"new{pos}", type="click", ts=9 ** 9 + pos)
                for j in range(0, 70, 7)]
        s.apply(more, 0)  # the state moves on (new users and items too); the snapshot taken above must not
        assert b"".join(SequenceState.encode_snapshot(pending[-1][0])) == pending[-1][1]
    assert s.width == cfg.capacity and s.item.shape[0] > 4  # both dimensions grew, rings wrapped
    assert (s.head > cfg.capacity).any()
    restored = SequenceState.from_bytes(b"".join(SequenceState.encode_snapshot(s.snapshot_parts(reuse=True))), cfg)
    assert restored.snapshot() == s.snapshot()
