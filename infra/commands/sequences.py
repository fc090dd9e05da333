"""``genrec sequences``: run the sequence shards (Ray actors) under their supervisor and print status."""

from __future__ import annotations

import time

from infra.commands.ray_local import init_ray, run_supervised
from infra.commands.topics import add_kafka_args, kafka_from_args


def register(sub) -> None:
    p = sub.add_parser("sequences", help="run the per-user sequence shards (Ray actors) and print their status",
                       description="Start one Ray actor per group of user-events partitions; each folds its "
                                   "partitions into per-user ring buffers, checkpoints state + offsets "
                                   "atomically and commits offsets to Kafka. Prints lag, events/s, freshness "
                                   "and checkpoint age per shard every --interval seconds until Ctrl-C.")
    add_kafka_args(p)
    p.add_argument("--checkpoint-dir", default=".genrec/sequences",
                   help="checkpoint directory: a local path or a pyarrow URI such as s3://bucket/dir "
                        "(default .genrec/sequences)")
    p.add_argument("--shards", type=int, default=None, help="number of shard actors (default: one per partition)")
    p.add_argument("--capacity", type=int, default=256, help="events kept per user (default 256)")
    p.add_argument("--every-events", type=int, default=50_000, help="checkpoint after this many events")
    p.add_argument("--every-s", type=float, default=5.0, help="... or after this many seconds")
    p.add_argument("--group-id", default="genrec-sequences", help="Kafka group for committed offsets (lag)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between status prints")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = until Ctrl-C)")
    p.add_argument("--users", default="", help="comma-separated user ids whose sequences to print each time")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--json", action="store_true", help="print status as JSON lines instead of a table")
    p.set_defaults(func=run)


def describe_user(h: dict, b: int, user_id: str, now_ms: float | None = None, last: int = 6) -> str:
    """One line: the user's newest events (type:item) and how fresh the newest is."""
    n = int(h["lengths"][b])
    if n == 0:
        return f"{user_id:>10}: (no events yet)"
    names = h["event_types"]
    cells = [f"{names[h['event_type'][b, j]]}:{h['item_ids'][h['items'][b, j]]}" for j in range(max(0, n - last), n)]
    age = "" if now_ms is None else f"  newest {max(0.0, now_ms - float(h['last_ts'][b])):.0f} ms ago"
    return f"{user_id:>10}: [{int(h['total'][b])} events] … " + " → ".join(cells) + age


def run(args) -> int:
    from actors.checkpoint import CheckpointConfig
    from actors.sequence_state import SequenceConfig
    from actors.supervisor import SequenceSupervisor, SupervisorConfig, format_status

    kafka = kafka_from_args(args)
    cfg = SupervisorConfig(
        kafka=kafka, num_shards=args.shards, group_id=args.group_id,
        checkpoint=CheckpointConfig(uri=args.checkpoint_dir, every_events=args.every_events, every_s=args.every_s),
        sequence=SequenceConfig(capacity=args.capacity))
    init_ray(args.ray_address, args.num_cpus)
    users = [u for u in args.users.split(",") if u]
    sup = SequenceSupervisor(cfg).start()

    def show_users() -> None:
        h = sup.histories(users)
        for b, u in enumerate(users):
            print("  " + describe_user(h, b, u, time.time() * 1000), flush=True)

    return run_supervised(
        sup, args,
        banner=lambda s: (f"{len(s.shards)} sequence shard(s) over {s.num_partitions} partitions of "
                          f"{kafka.topic(cfg.topic)}; checkpoints in {args.checkpoint_dir}"),
        line=format_status, stopped="sequence shards stopped (final checkpoints written)",
        extra=show_users if users else None)
