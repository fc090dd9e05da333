"""User → partition → shard: the deterministic map any process can compute, and a batched reader.

Partition ``p`` of ``user-events`` belongs to shard ``p % num_shards``; a
user's partition is Kafka's default murmur2 partition of its key
(:func:`ingest.partitioning.partition_for`). So serving, tools and tests find
the shard of a user without asking anyone.

:class:`SequenceRouter` splits a batch of users by shard, calls every shard's
``histories()`` in parallel (one Ray call per shard) and stitches the answers
back into the caller's order with one shared item vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ingest.partitioning import partition_for


def shard_for_partition(partition: int, num_shards: int) -> int:
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1")
    return partition % num_shards


def partitions_of_shard(shard: int, num_partitions: int, num_shards: int) -> tuple[int, ...]:
    """The partitions shard ``shard`` owns (round-robin)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard} must be in [0, num_shards={num_shards})")
    if num_shards > num_partitions:
        raise ValueError(f"num_shards={num_shards} exceeds num_partitions={num_partitions}; "
                         "a shard without partitions would idle — use at most one shard per partition")
    return tuple(p for p in range(num_partitions) if p % num_shards == shard)


def shard_for_user(user_id: str, num_partitions: int, num_shards: int) -> int:
    """The shard that holds ``user_id``'s sequence."""
    return shard_for_partition(partition_for(user_id, num_partitions), num_shards)


def merge_histories(parts: list[tuple[np.ndarray, dict]], batch_size: int, max_len: int | None) -> dict:
    """Stitch per-shard ``histories()`` answers into one batch.

    ``parts``: ``(positions [b_i], answer)`` per shard, where ``positions`` are
    the rows of the caller's batch that shard answered. The result has the
    same keys as :meth:`actors.sequence_state.SequenceState.histories`.
    """
    t = max_len if max_len is not None else max((a["items"].shape[1] for _, a in parts), default=0)
    out = {
        "items": np.full((batch_size, t), -1, np.int32),
        "event_type": np.full((batch_size, t), -1, np.int8),
        "ts": np.zeros((batch_size, t), np.int64),
        "watch_ms": np.full((batch_size, t), -1, np.int32),
        "sid_slot": np.full((batch_size, t), -1, np.int32),
        "mask": np.zeros((batch_size, t), bool),
        "lengths": np.zeros(batch_size, np.int32),
        "last_ts": np.full(batch_size, -1, np.int64),
        "total": np.zeros(batch_size, np.int64),
    }
    vocab: dict[str, int] = {}
    event_types = ()
    for pos, a in parts:
        event_types = a["event_types"]
        remap = np.fromiter((vocab.setdefault(i, len(vocab)) for i in a["item_ids"]), np.int32,
                            len(a["item_ids"]))
        w = a["items"].shape[1]
        items = a["items"]
        out["items"][pos, :w] = np.where(items >= 0, remap[np.maximum(items, 0)] if len(remap) else -1, -1)
        for k in ("event_type", "ts", "watch_ms", "sid_slot", "mask"):
            out[k][pos, :w] = a[k]
        for k in ("lengths", "last_ts", "total"):
            out[k][pos] = a[k]
    out["item_ids"] = list(vocab)
    out["event_types"] = event_types
    return out


class SequenceRouter:
    """Batched reads across shard actors: ``histories(user_ids)`` in the caller's order."""

    def __init__(self, shards: Sequence, num_partitions: int):
        if not shards:
            raise ValueError("SequenceRouter needs at least one shard handle")
        self.shards = list(shards)
        self.num_partitions = num_partitions
        self._cache: dict[str, int] = {}

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    @classmethod
    def from_spec(cls, spec: dict) -> "SequenceRouter":
        """A router over running shards found by name — e.g. inside a Ray Serve replica.

        ``spec`` is :meth:`actors.supervisor.SequenceSupervisor.router_spec`:
        ``{"names": [...], "namespace": str | None, "num_partitions": int}``
        (plain data, so it travels in a deployment's init args or a YAML file).
        """
        import ray

        shards = [ray.get_actor(n, namespace=spec.get("namespace")) for n in spec["names"]]
        return cls(shards, int(spec["num_partitions"]))

    def shard_of(self, user_id: str) -> int:
        s = self._cache.get(user_id)
        if s is None:
            s = shard_for_user(user_id, self.num_partitions, self.num_shards)
            if len(self._cache) < 1_000_000:
                self._cache[user_id] = s
        return s

    def histories(self, user_ids: Sequence[str], max_len: int | None = None, timeout_s: float = 30.0,
                  partial: bool = False) -> dict:
        """One Ray call per shard that holds any of ``user_ids``; answers merged in order.

        ``partial``: a shard that has not answered within ``timeout_s`` (killed and restarting, its node
        lost) leaves its users' rows empty instead of raising; ``missing`` [m] lists those rows. Without it a
        late shard raises ``GetTimeoutError``.
        """
        import ray

        user_ids = list(user_ids)
        groups: dict[int, list[int]] = {}
        for i, u in enumerate(user_ids):
            groups.setdefault(self.shard_of(u), []).append(i)
        refs = {s: self.shards[s].histories.remote([user_ids[i] for i in idx], max_len)
                for s, idx in groups.items()}
        if not partial:
            answers = ray.get(list(refs.values()), timeout=timeout_s)
            parts = [(np.asarray(groups[s], np.int64), a) for s, a in zip(refs, answers)]
            return merge_histories(parts, len(user_ids), max_len)
        ready = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)[0] if refs else []
        ready_ids = {r.hex() for r in ready}
        parts, missing = [], []
        for s, ref in refs.items():
            answer = None
            if ref.hex() in ready_ids:
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayActorError:
                    answer = None        # the shard died under the call: its users count as missing
            if answer is None:
                missing.extend(groups[s])
            else:
                parts.append((np.asarray(groups[s], np.int64), answer))
        out = merge_histories(parts, len(user_ids), max_len)
        out["missing"] = np.asarray(sorted(missing), np.int64)
        return out
