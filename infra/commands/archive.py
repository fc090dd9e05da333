"""``genrec archive``: write the contract topics to an exactly-once Parquet archive."""

from __future__ import annotations

import signal
import threading

from infra.commands.topics import add_kafka_args, kafka_from_args


def register(sub) -> None:
    p = sub.add_parser("archive", help="archive Kafka topics to Parquet (hive-partitioned, exactly once)",
                       description="Consume the contract topics and write them to ROOT/topic=T/date=D/*.parquet. "
                                   "Files are written to a temporary name, fsynced and renamed; the resume "
                                   "point comes from the durable files, so a restart after a crash neither "
                                   "loses nor duplicates events. Offsets are committed (group genrec-archive) "
                                   "after each durable flush, for lag tools. Runs until Ctrl-C/SIGTERM, or "
                                   "with --until-idle until it has caught up.")
    add_kafka_args(p)
    p.add_argument("--root", default=".genrec/archive", help="archive directory (default .genrec/archive)")
    p.add_argument("--topics", default=None,
                   help="comma-separated contract topics (default: all five)")
    p.add_argument("--max-rows", type=int, default=50_000, help="flush after this many buffered rows")
    p.add_argument("--flush-interval", type=float, default=5.0, help="flush at least every this many seconds")
    p.add_argument("--until-idle", action="store_true", help="stop once every topic is caught up")
    p.add_argument("--create-topics", action="store_true", help="create missing contract topics first")
    p.set_defaults(func=run)


def run(args) -> int:
    from ingest.archive import ALL_TOPICS, ArchiveConfig, Archiver
    from ingest.topics import ensure_topics

    topics = tuple(t.strip() for t in args.topics.split(",") if t.strip()) if args.topics else ALL_TOPICS
    cfg = ArchiveConfig(root=args.root, topics=topics, max_rows=args.max_rows,
                        flush_interval_s=args.flush_interval)
    kafka = kafka_from_args(args)
    if args.create_topics:
        ensure_topics(kafka)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Archiver(kafka, cfg) as arch:
        for t, a in arch.topics.items():
            if a.resumed_from:
                print(f"{t}: resuming from offsets {a.resumed_from}", flush=True)
        print(f"archiving {', '.join(topics)} from {kafka.bootstrap} into {cfg.root_path}", flush=True)
        stats = arch.run(stop, until_idle=args.until_idle)
    for t, s in stats.items():
        print(f"  {t:<14} consumed {s.consumed}, archived {s.rows} rows in {s.files} files, "
              f"dead-lettered {s.dead_lettered}")
    return 0
