"""Demo part (issue 2): contract topics, the synthetic world replayed into Kafka, dead letters, archive.

Creates the contract topics, replays the head of the synthetic world (catalog
upserts and user events in event-time order), injects a few malformed
messages, runs the exactly-once Parquet archiver until it has caught up and
reads the archive back. Leaves ``ctx.state["archive_root"]`` (the archive
directory) and ``ctx.state["replayed_user_events"]`` for later parts.
"""

from __future__ import annotations

import json
import time

TITLE = "Ingest: topics, replay of the synthetic world, dead letters, Parquet archive"


def run(ctx) -> None:
    from ingest.archive import ArchiveConfig, Archiver, read_archive, read_records, scan
    from ingest.contract import DEAD_LETTERS, ITEM_EVENTS, USER_EVENTS
    from ingest.producer import EventProducer
    from ingest.replay import ReplayConfig, replay_dataset
    from ingest.topics import ensure_topics

    counts = ensure_topics(ctx.kafka)
    ctx.say("topics (partitions): " + ", ".join(f"{ctx.kafka.topic(t)}={n}" for t, n in counts.items()))

    ds = ctx.world.dataset()
    n = min(len(ds.user_events) // 2, 8_000 if ctx.quick else 30_000)
    head = ds.head(n)
    ctx.say(f"replaying {len(head.user_events):,} user events and {len(head.item_events):,} catalog upserts "
            f"of {ds.name} in event-time order (as fast as possible)")
    bad = [
        (b"{not json at all", "malformed JSON"),
        (json.dumps({"event_id": "b1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": "soon"}).encode(),
         "wrong type"),
        (json.dumps({"event_id": "b2", "user_id": "u1", "type": "click", "ts": 1}).encode(), "missing field"),
        (json.dumps({"event_id": "b3", "user_id": "u1", "item_id": "i1", "type": "teleport", "ts": 1}).encode(),
         "unknown event type"),
        (b'{"event_id": "' + b"x" * (2 << 20) + b'"}', "oversized (2 MiB)"),
    ]
    with EventProducer(ctx.kafka) as prod:
        stats = replay_dataset(head, prod, ReplayConfig(progress=False))
        for raw, _ in bad:
            prod.send_raw(USER_EVENTS, b"u1", raw)
    ctx.say(f"replayed {stats.sent:,} events in {stats.elapsed_s:.1f} s: {stats.events_per_s:,.0f} events/s "
            f"(acks=all); injected {len(bad)} bad messages: " + ", ".join(why for _, why in bad))

    root = ctx.workdir / "archive"
    cfg = ArchiveConfig(root=str(root), topics=(USER_EVENTS, ITEM_EVENTS, DEAD_LETTERS), max_rows=20_000,
                        flush_interval_s=2.0)
    t0 = time.perf_counter()
    with Archiver(ctx.kafka, cfg) as arch:
        res = arch.run(until_idle=True, timeout_s=120)
    dt = time.perf_counter() - t0
    consumed = sum(s.consumed for s in res.values())
    ctx.say(f"archived in {dt:.1f} s ({consumed / dt:,.0f} messages/s through decode + validate + Parquet):")
    for t, s in res.items():
        ctx.say(f"  {t:<13} consumed {s.consumed:>7,}  valid rows {s.rows:>7,}  dead-lettered "
                f"{s.dead_lettered}  files {s.files}")
    ue = read_archive(root, USER_EVENTS, columns=["event_id"])
    ids = ue.column("event_id").to_pylist()
    ok = len(ids) == len(set(ids)) == len(head.user_events)
    ctx.say(f"read back: {len(ids):,} user events ({'each exactly once' if ok else 'MISMATCH'}), "
            f"{read_archive(root, ITEM_EVENTS).num_rows:,} item events")
    letters = read_records(root, DEAD_LETTERS)
    ctx.say(f"dead letters ({len(letters)}):")
    for l in letters:
        ctx.say(f"  {l.source_topic}[{l.partition}]@{l.offset}: {l.error[:110]}")
    files = [f for t in cfg.topics for f in scan(root, t)]
    dates = sorted({f.date for f in files})
    ctx.say(f"Parquet files written: {len(files)} under {root} (topic=/date= partitions, dates "
            f"{dates[0] if dates else '-'} .. {dates[-1] if dates else '-'}); e.g. "
            f"{files[0].path.relative_to(root) if files else '-'}")
    if not ok:
        raise RuntimeError("the archive does not hold every replayed user event exactly once")
    ctx.state["archive_root"] = str(root)
    ctx.state["replayed_user_events"] = len(head.user_events)
