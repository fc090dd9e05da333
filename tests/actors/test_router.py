"""Router: deterministic user → shard map and merging per-shard answers."""

from __future__ import annotations

import numpy as np
import pytest

from actors.router import merge_histories, partitions_of_shard, shard_for_user
from actors.sequence_state import SequenceState
from ingest.contract import UserEvent
from ingest.partitioning import partition_for


def test_partitions_cover_each_exactly_once():
    for n_parts, n_shards in [(4, 1), (4, 2), (4, 4), (12, 5)]:
        owned = [p for s in range(n_shards) for p in partitions_of_shard(s, n_parts, n_shards)]
        assert sorted(owned) == list(range(n_parts))
    with pytest.raises(ValueError, match="num_shards=5 exceeds"):
        partitions_of_shard(0, 4, 5)


def test_shard_for_user_follows_the_kafka_partition():
    for u in (f"user-{i}" for i in range(200)):
        s = shard_for_user(u, 8, 3)
        assert partition_for(u, 8) in partitions_of_shard(s, 8, 3)


def test_merge_keeps_caller_order_and_item_ids():
    shards = [SequenceState(), SequenceState()]
    users = [f"u{i}" for i in range(10)]
    for i in range(200):
        u = users[i % 10]
        shards[i % 10 % 2].apply([UserEvent(event_id=f"e{i}", user_id=u, item_id=f"i{i % 13}",
                                            type="click", ts=i)])
    ask = ["u3", "u0", "zz", "u7", "u4"]
    parts = []
    for s in (0, 1):
        pos = [j for j, u in enumerate(ask) if u != "zz" and int(u[1:]) % 2 == s]
        parts.append((np.array(pos), shards[s].histories([ask[j] for j in pos])))
    m = merge_histories(parts, len(ask), None)
    for j, u in enumerate(ask):
        if u == "zz":
            assert m["lengths"][j] == 0 and not m["mask"][j].any()
            continue
        src = shards[int(u[1:]) % 2]
        n = m["lengths"][j]
        assert [m["item_ids"][k] for k in m["items"][j, :n]] == [e[0] for e in src.user_events(u)]
        assert m["last_ts"][j] == src.histories([u])["last_ts"][0]
    assert len(set(m["item_ids"])) == len(m["item_ids"])


def test_a_shard_that_does_not_answer_in_time_leaves_its_users_empty_not_the_read_failed(local_ray):
    """Real Ray actors holding real SequenceState; shard 1 is stalled (restarting, its node lost)."""
    import time

    import ray

    from actors.router import SequenceRouter

    @ray.remote(num_cpus=0)
    class Shard:
        def __init__(self, stall_s: float):
            self.state, self.stall_s = SequenceState(), stall_s

        def apply(self, events):
            self.state.apply(events)

        def histories(self, users, max_len=None):
            time.sleep(self.stall_s)
            return self.state.histories(users, max_len)

    n_parts, shards = 4, [Shard.remote(0.0), Shard.remote(3.0)]
    users = [f"user-{i}" for i in range(40)]
    for u in users:
        s = shard_for_user(u, n_parts, 2)
        ray.get(shards[s].apply.remote([UserEvent(event_id=f"e-{u}", user_id=u, item_id="i1", type="click", ts=1)]))
    router = SequenceRouter(shards, n_parts)
    t0 = time.monotonic()
    h = router.histories(users, 10, timeout_s=0.5, partial=True)
    assert time.monotonic() - t0 < 2.5                                       # did not wait for the stalled shard
    slow = [j for j, u in enumerate(users) if shard_for_user(u, n_parts, 2) == 1]
    assert slow and h["missing"].tolist() == slow
    assert all(h["lengths"][j] == 0 for j in slow)
    assert all(h["lengths"][j] == 1 for j in range(len(users)) if j not in slow)
    with pytest.raises(ray.exceptions.GetTimeoutError):                     # without partial: the caller decides
        router.histories(users, 10, timeout_s=0.5)
    empty = router.histories([], 10, timeout_s=0.5, partial=True)             # no users: no call, nothing missing
    assert empty["items"].shape == (0, 10) and empty["missing"].tolist() == []

