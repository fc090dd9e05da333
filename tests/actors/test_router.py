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
