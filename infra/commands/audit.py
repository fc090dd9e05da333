"""``genrec audit``: check a deployment's invariants from its topics and archive; non-zero on any violation."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "audit", help="did the pipeline lose or double anything? (topics, archive, client logs)",
        description="Reads served, user-events and rewards from Kafka (and the Parquet archive when given) and "
                    "checks: the archive holds each topic record below its resume offsets exactly once; every "
                    "acknowledged event id is in user-events exactly once (--acked); no request has two served "
                    "records, and with --answered every request answered 200 has exactly one and no other "
                    "request has any; every served session whose reward window closed has exactly one rewards "
                    "record; with --sequences-checkpoint, the sequence shards' checkpointed state equals a fault-free replay "
                    "of user-events up to the checkpoints' offsets. Prints counts per invariant; exit status 1 on "
                    "any violation.")
    p.add_argument("--bootstrap", default=None, help="Kafka host:port (default: genrec.yaml kafka / KAFKA_BOOTSTRAP)")
    p.add_argument("--namespace", default=None, help="topic-name prefix (kafka.namespace)")
    p.add_argument("--archive", default=None, metavar="DIR", help="the Parquet archive root to check too")
    p.add_argument("--acked", default=None, metavar="FILE",
                   help="event ids the producers saw acknowledged, one per line")
    p.add_argument("--answered", default=None, metavar="FILE",
                   help="request ids answered with 200, one per line (taken as the complete client log)")
    p.add_argument("--unknown", type=int, default=0, metavar="N",
                   help="requests whose outcome the client never learnt (connection died / timed out): up to N "
                        "served records without an answer are allowed")
    p.add_argument("--sequences-checkpoint", default=None, metavar="URI",
                   help="the sequence shards' checkpoint store: check its state against a replay of user-events")
    p.add_argument("--sequence-capacity", type=int, default=None,
                   help="the shards' ring-buffer capacity (sequences.capacity; must match the shards')")
    p.add_argument("--dedup-window", type=int, default=None,
                   help="the shards' de-duplication window (sequences.dedup_window; must match the shards')")
    p.add_argument("--window-s", type=float, default=None, help="reward window (default: rewards.window_s)")
    p.add_argument("--lateness-s", type=float, default=None,
                   help="allowed lateness (default: rewards.allowed_lateness_s)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="bound on reading each topic")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=run)


def _ids(path: str | None) -> list[str] | None:
    if not path:
        return None
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def run(args) -> int:
    from dataclasses import replace

    from infra import config
    from ingest.audit import read_and_audit

    cfgs = config.load(None, only=("kafka", "rewards"))
    kafka, rewards = cfgs["kafka"], cfgs["rewards"]
    if args.bootstrap:
        kafka = replace(kafka, bootstrap=args.bootstrap)
    if args.namespace is not None:
        kafka = replace(kafka, namespace=args.namespace)
    window_s = rewards.window_s if args.window_s is None else args.window_s
    lateness_s = rewards.allowed_lateness_s if args.lateness_s is None else args.lateness_s
    seq_kwargs = {}
    if args.sequences_checkpoint:
        from actors.sequence_state import SequenceConfig
        from ingest.audit import checkpointed_sequences
        from ingest.contract import USER_EVENTS

        fields = {k: v for k, v in (("capacity", args.sequence_capacity), ("dedup_window", args.dedup_window))
                  if v is not None}
        seq_cfg = SequenceConfig(**fields)
        live, upto = checkpointed_sequences(args.sequences_checkpoint, kafka.topic(USER_EVENTS), seq_cfg)
        if not upto:
            raise SystemExit(f"no sequence shard checkpoint of {kafka.topic(USER_EVENTS)} in "
                             f"{args.sequences_checkpoint}; give the shards' checkpoint directory")
        seq_kwargs = {"sequence_config": seq_cfg, "live_sequences": live, "sequences_upto": upto}
    report = read_and_audit(kafka, window_ms=int(window_s * 1000), lateness_ms=int(lateness_s * 1000),
                            archive=args.archive, acked=_ids(args.acked), answered=_ids(args.answered),
                            timeout_s=args.timeout_s, unknown=args.unknown, **seq_kwargs)
    print(json.dumps(report.to_dict(), indent=2) if args.json else "\n".join(report.lines()))
    return 1 if report.violations else 0
