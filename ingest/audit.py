"""The deployment auditor: did the pipeline lose or double anything? (``genrec audit``)

Checks, from the topics, the Parquet archive and (optionally) the client's own logs:

* ``archive`` — per archived topic, the archive holds every valid record of the topic below its resume
  offsets exactly once (by partition and offset), and nothing the topic does not hold;
* ``acked_events`` — every event id a producer saw acknowledged (``acked``) is in ``user-events`` (the
  archive when given) exactly once;
* ``served`` — no request id has two ``served`` records; with the client's log of requests answered
  200 (``answered``, taken as complete): each has exactly one ``served`` record and no ``served`` record
  exists for a request that was not answered;
* ``served`` with ``unknown`` — a request whose client never learnt its outcome (its connection died or
  timed out: the server may have logged the session before the answer was lost) may have a ``served``
  record without an answer; at most ``unknown`` such records are allowed (the server makes the request
  id, so the client cannot name them), the rest are violations;
* ``rewards`` — every ``served`` session whose event-time window has closed has exactly one ``rewards``
  record; no reward is duplicated or lacks its ``served`` record. A window counts as closed when
  ``served.ts + window`` is at or below the conservative watermark: the minimum over every input
  partition — each partition of ``served`` and each of ``user-events`` on its own, as a joiner tracks its
  sources — of its newest event time, minus the allowed lateness (a joiner's own watermark, over the
  sources it owns, is never below it). Later sessions are reported as pending, not checked;
* ``sequences`` — the live sequence shards' per-user state equals a fault-free replay of ``user-events``
  (every valid record, per partition in offset order, through :class:`actors.sequence_state.SequenceState`,
  the shards' own engine): same users, same stored events in the same order (:func:`replay_sequences`,
  :func:`check_sequences`);
* ``catalog`` — the item indexer's live catalog equals a fault-free replay of ``item-events`` by a fresh
  :class:`actors.item_indexer.ItemIndexer` (no checkpoint, same tokenizer): same items, same state, same
  semantic IDs (:func:`catalog_items`, :func:`check_catalog`).

The replay checks compare states, so they hold only once the live components have consumed the topics to
their ends (the caller drains first: the chaos harness, :mod:`infra.chaos`).

:func:`audit` is pure (records in, :class:`AuditReport` out); the topics are read by
:func:`ingest.topic_snapshot.read_topic_messages`, which writes nothing (the auditor only looks).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ingest.contract import REWARDS, SERVED, USER_EVENTS
from ingest.topic_snapshot import TopicMessage, read_topic_messages

#: How many example ids a violation keeps (the counts are complete).
EXAMPLES = 5


@dataclass
class Check:
    """One invariant: how many items were checked and which broke it (counts per kind, a few examples)."""

    name: str
    checked: int = 0
    violations: Counter = field(default_factory=Counter)
    examples: dict[str, list] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    def violate(self, kind: str, ids: Iterable) -> None:
        ids = list(ids)
        if ids:
            self.violations[kind] += len(ids)
            self.examples.setdefault(kind, []).extend(ids[: EXAMPLES - len(self.examples.get(kind, []))])

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {"checked": self.checked, "violations": dict(self.violations), "examples": self.examples,
                **({"notes": self.notes} if self.notes else {})}


@dataclass
class AuditReport:
    checks: list[Check]

    @property
    def violations(self) -> int:
        return sum(sum(c.violations.values()) for c in self.checks)

    def to_dict(self) -> dict:
        return {"violations": self.violations, "checks": {c.name: c.to_dict() for c in self.checks}}

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            state = "ok" if c.ok else "VIOLATED " + ", ".join(f"{k} {v:,}" for k, v in sorted(c.violations.items()))
            notes = "".join(f"; {k} {v:,}" for k, v in sorted(c.notes.items()))
            out.append(f"{c.name:<14} checked {c.checked:>9,}  {state}{notes}")
            for kind, ex in sorted(c.examples.items()):
                out.append(f"{'':<14}   {kind}: e.g. {', '.join(map(str, ex))}")
        out.append(f"audit: {self.violations:,} violations" if self.violations else "audit: no violations")
        return out


# ---- the checks (pure) -----------------------------------------------------------------------------

def check_archive(topic: str, messages: Sequence[TopicMessage], archived: Sequence[tuple[int, int]],
                  resume: Mapping[int, int]) -> Check:
    """The archive of ``topic`` (``archived``: its (partition, offset) pairs) against the topic's messages."""
    c = Check(f"archive:{topic}")
    counts = Counter(archived)
    c.violate("archived_twice", [f"{p}@{o}" for (p, o), n in sorted(counts.items()) if n > 1])
    valid = {(m.partition, m.offset) for m in messages if m.record is not None}
    due = {(p, o) for p, o in valid if o < resume.get(p, 0)}
    c.checked = len(due)
    c.violate("missing", [f"{p}@{o}" for p, o in sorted(due - counts.keys())])
    in_topic = {(m.partition, m.offset) for m in messages}
    c.violate("not_in_topic", [f"{p}@{o}" for p, o in sorted(counts.keys() - in_topic)])
    c.notes["not_yet_archived"] = len(valid) - len(due)
    return c


def check_acked(events: Iterable, acked: Iterable[str]) -> Check:
    """Every acknowledged event id is in ``events`` (user-events records) exactly once."""
    c = Check("acked_events")
    counts = Counter(e.event_id for e in events)
    acked = list(dict.fromkeys(acked))
    c.checked = len(acked)
    c.violate("lost", [a for a in acked if counts[a] == 0])
    c.violate("doubled", [a for a in acked if counts[a] > 1])
    return c


def check_served(served: Iterable, answered: Iterable[str] | None, unknown: int = 0) -> Check:
    """Unique ``served`` records; with ``answered``: one per answered request and none for the others, except
    at most ``unknown`` records of requests whose outcome the client never learnt (see the module docstring)."""
    c = Check("served")
    counts = Counter(s.request_id for s in served)
    c.checked = len(counts)
    c.violate("doubled", [r for r, n in counts.items() if n > 1])
    if answered is not None:
        answered = set(answered)
        c.checked = len(answered)
        c.violate("answered_without_served", sorted(answered - counts.keys()))
        extra = sorted(counts.keys() - answered)
        if unknown:
            c.notes["unknown_outcome_requests"] = unknown
            c.notes["served_of_unknown_outcome"] = min(len(extra), unknown)
        c.violate("served_without_answer", extra[unknown:] if len(extra) > unknown else [])
    return c


def watermark(served: Iterable[tuple[int, int]], events: Iterable[tuple[int, int]], lateness_ms: int) -> int | None:
    """Conservative watermark from ``(partition, event ts)`` pairs of both inputs: the slowest source (a
    partition of one topic), minus the lateness (see the module docstring)."""
    newest: dict[tuple[str, int], int] = {}
    for src, pairs in (("served", served), ("events", events)):
        for p, ts in pairs:
            newest[src, p] = max(newest.get((src, p), ts), ts)
    return min(newest.values()) - lateness_ms if newest else None


def check_rewards(served: Sequence, rewards: Iterable, wm: int | None, window_ms: int) -> Check:
    """One reward per closed served session, none doubled, none without its session."""
    c = Check("rewards")
    counts = Counter(r.request_id for r in rewards)
    by_id = {s.request_id: s for s in served}
    closed = [r for r, s in by_id.items() if wm is not None and s.ts + window_ms <= wm]
    c.checked = len(closed)
    c.violate("missing", [r for r in closed if counts[r] == 0])
    c.violate("doubled", [r for r, n in counts.items() if n > 1])
    c.violate("without_served", sorted(counts.keys() - by_id.keys()))
    c.notes["pending_windows"] = len(by_id) - len(closed)
    return c


def replay_sequences(messages: Sequence[TopicMessage], config,
                     upto: Mapping[int, int] | None = None) -> dict[str, list[tuple[str, str, int, int]]]:
    """The fault-free state of the sequence shards: every valid ``user-events`` record, partition by partition in
    offset order, applied to one :class:`~actors.sequence_state.SequenceState` (lane = partition, as a shard
    applies it); returns its :meth:`~actors.sequence_state.SequenceState.snapshot`. ``upto``: per partition, the
    offset to stop before (a checkpoint's offsets; partitions not in it are left out)."""
    from actors.sequence_state import SequenceState

    state = SequenceState(config)
    parts: dict[int, list[TopicMessage]] = {}
    for m in messages:
        if upto is not None and m.offset >= upto.get(m.partition, 0):
            continue
        if m.record is not None:
            parts.setdefault(m.partition, []).append(m)
    for p, msgs in sorted(parts.items()):
        msgs.sort(key=lambda m: m.offset)
        state.apply([m.record for m in msgs], p)
    return state.snapshot()


def check_sequences(replayed: Mapping[str, list], live: Mapping[str, list]) -> Check:
    """Per user, the live shards' stored events (``live``: user -> [(item, type, ts, watch_ms)]) against the
    replay's: a user only one side has, or whose events differ, is a violation."""
    c = Check("sequences")
    c.checked = len(replayed)
    c.violate("missing_user", sorted(replayed.keys() - live.keys()))
    c.violate("extra_user", sorted(live.keys() - replayed.keys()))
    c.violate("differs", sorted(u for u in replayed.keys() & live.keys()
                                if [tuple(e) for e in replayed[u]] != [tuple(e) for e in live[u]]))
    c.notes["events"] = sum(len(v) for v in replayed.values())
    return c


def catalog_items(catalog) -> dict[str, tuple[str, tuple[int, ...] | None]]:
    """``{item_id: (state, SID)}`` of a :class:`models.sid.catalog.Catalog` (every item it ever indexed)."""
    out = {}
    for i in range(catalog.num_indexed):
        item = catalog.item_id(i)
        sid = catalog.sid_of(item)
        out[item] = (catalog.state_of(item)[0], None if sid is None else tuple(int(x) for x in sid))
    return out


def check_catalog(replayed: Mapping[str, tuple], live: Mapping[str, tuple]) -> Check:
    """The live indexer's catalog (``catalog_items``) against the replay's: same items, states and SIDs."""
    c = Check("catalog")
    c.checked = len(replayed)
    c.violate("missing_item", sorted(replayed.keys() - live.keys()))
    c.violate("extra_item", sorted(live.keys() - replayed.keys()))
    both = replayed.keys() & live.keys()
    c.violate("state_differs", sorted(i for i in both if replayed[i][0] != live[i][0]))
    c.violate("sid_differs", sorted(i for i in both if replayed[i][0] == live[i][0] and replayed[i][1] != live[i][1]))
    c.notes["live_items"] = sum(1 for s, _ in replayed.values() if s == "live")
    return c


def audit(*, served: Sequence[TopicMessage], events: Sequence[TopicMessage], rewards: Sequence[TopicMessage],
          window_ms: int, lateness_ms: int, archives: Mapping[str, tuple[Sequence[TopicMessage], list, dict]] = {},
          acked: Iterable[str] | None = None, answered: Iterable[str] | None = None,
          archived_events: Sequence | None = None, unknown: int = 0,
          sequences: tuple[Mapping, Mapping] | None = None,
          catalog: tuple[Mapping, Mapping] | None = None) -> AuditReport:
    """Every check over what was read (``archives``: topic → (its messages, archived (p, o), resume offsets);
    ``sequences`` / ``catalog``: (replayed, live) states for :func:`check_sequences` / :func:`check_catalog`)."""
    recs = lambda msgs: [m.record for m in msgs if m.record is not None]  # noqa: E731
    checks = [check_archive(t, msgs, arch, resume) for t, (msgs, arch, resume) in sorted(archives.items())]
    if acked is not None:
        checks.append(check_acked(archived_events if archived_events is not None else recs(events), acked))
    served_recs = recs(served)
    checks.append(check_served(served_recs, answered, unknown))
    wm = watermark([(m.partition, m.record.ts) for m in served if m.record is not None],
                   [(m.partition, m.record.ts) for m in events if m.record is not None], lateness_ms)
    checks.append(check_rewards(served_recs, recs(rewards), wm, window_ms))
    if sequences is not None:
        checks.append(check_sequences(*sequences))
    if catalog is not None:
        checks.append(check_catalog(*catalog))
    return AuditReport(checks)


# ---- reading ---------------------------------------------------------------------------------------

def replay_catalog(kafka, tokenizer, config=None, timeout_s: float = 60.0):
    """The fault-free catalog: a fresh :class:`~actors.item_indexer.ItemIndexer` (no checkpoint, a group of its
    own, the live indexer's ``tokenizer`` and settings) reads ``item-events`` from the beginning to its end.
    (It dead-letters an invalid item as the live one did: the chaos run sends none.)"""
    import uuid
    from dataclasses import replace

    from actors.item_indexer import ItemIndexer, ItemIndexerConfig

    cfg = replace(config or ItemIndexerConfig(), name=f"audit-replay-{uuid.uuid4().hex[:8]}", checkpoint_uri="")
    idx = ItemIndexer(kafka, tokenizer, cfg)
    try:
        idx.run_until_caught_up(timeout_s)
        return idx.catalog
    finally:
        idx.close(checkpoint=False)


def checkpointed_sequences(uri: str, physical_topic: str, config, group_id: str = "genrec-sequences"
                           ) -> tuple[dict[str, list], dict[int, int]]:
    """Every shard checkpoint of ``physical_topic`` in the store at ``uri``: (user -> events, partition -> offset)."""
    from actors.checkpoint import CheckpointStore
    from actors.sequence_state import SequenceState

    store = CheckpointStore(uri)
    users: dict[str, list] = {}
    offsets: dict[int, int] = {}
    for name in store.names():
        if not name.startswith(f"{group_id}.{physical_topic}.shard-"):
            continue
        loaded = store.load(name)
        if loaded is None:
            continue
        payload, offs = loaded
        users.update(SequenceState.from_bytes(payload, config).snapshot())
        offsets.update({int(p): int(o) for p, o in offs.items()})
    return users, offsets


def read_and_audit(kafka, *, window_ms: int, lateness_ms: int, archive: str | None = None,
                   acked: Iterable[str] | None = None, answered: Iterable[str] | None = None,
                   timeout_s: float = 60.0, unknown: int = 0, sequence_config=None,
                   live_sequences: Mapping[str, list] | None = None, sequences_upto: Mapping[int, int] | None = None,
                   live_catalog=None, tokenizer=None, indexer_config=None) -> AuditReport:
    """Read ``served``, ``user-events``, ``rewards`` (and the archive of every archived topic) and audit them.

    ``live_sequences`` (user -> events, from the shards or their checkpoints; ``sequences_upto``: the offsets
    that state reflects, None = the topics' ends) adds the sequences replay check; ``live_catalog`` (a
    :class:`models.sid.catalog.Catalog`, with the indexer's ``tokenizer`` and ``indexer_config``) the catalog one.
    """
    from ingest import archive as arch

    topics = {t: read_topic_messages(kafka, t, timeout_s) for t in (SERVED, USER_EVENTS, REWARDS)}
    archives, archived_events = {}, None
    if archive:
        for t, msgs in topics.items():
            resume = arch.resume_offsets(archive, t)
            if not resume:
                continue
            table = arch.read_archive(archive, t, columns=["kafka_partition", "kafka_offset"])
            pairs = list(zip(table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist()))
            archives[t] = (msgs, pairs, resume)
        if USER_EVENTS in archives:
            archived_events = arch.read_records(archive, USER_EVENTS)
    sequences = catalog = None
    if live_sequences is not None:
        from actors.sequence_state import SequenceConfig

        replayed = replay_sequences(topics[USER_EVENTS], sequence_config or SequenceConfig(), sequences_upto)
        sequences = (replayed, live_sequences)
    if live_catalog is not None:
        replayed_cat = replay_catalog(kafka, tokenizer, indexer_config, timeout_s)
        catalog = (catalog_items(replayed_cat), catalog_items(live_catalog))
    return audit(served=topics[SERVED], events=topics[USER_EVENTS], rewards=topics[REWARDS], window_ms=window_ms,
                 lateness_ms=lateness_ms, archives=archives, acked=acked, answered=answered,
                 archived_events=archived_events, unknown=unknown, sequences=sequences, catalog=catalog)
