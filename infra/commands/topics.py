"""``genrec topics``: list the contract topics with partition counts, or create them.

Also holds :func:`kafka_from_args`, how the ingest commands (topics, replay,
archive) find the cluster: ``--bootstrap``, else ``kafka.bootstrap`` from
genrec.yaml / ``KAFKA_BOOTSTRAP``; the topic namespace from ``--namespace``,
else the config, else ``GENREC_TOPIC_NAMESPACE``.
"""

from __future__ import annotations

import os


def add_kafka_args(p) -> None:
    """The ``--bootstrap`` / ``--namespace`` options every ingest command takes."""
    p.add_argument("--bootstrap", default=None,
                   help="Kafka bootstrap host:port[,host:port] (default: KAFKA_BOOTSTRAP or genrec.yaml)")
    p.add_argument("--namespace", default=None,
                   help="prefix of the physical topic names (default: GENREC_TOPIC_NAMESPACE or none)")


def kafka_from_args(args):
    """A :class:`ingest.kafka_client.KafkaConfig` from the command line, config file and environment."""
    from infra.config import build, load_raw

    raw = dict(load_raw().get("kafka", {}))
    if args.bootstrap:
        raw["bootstrap"] = args.bootstrap
    if not raw.get("bootstrap"):
        raise ValueError("no Kafka broker given: pass --bootstrap host:port or set KAFKA_BOOTSTRAP "
                         "(run `genrec broker` for an embedded one)")
    if args.namespace is not None:
        raw["namespace"] = args.namespace
    elif not raw.get("namespace"):
        raw["namespace"] = os.environ.get("GENREC_TOPIC_NAMESPACE", "")
    return build("kafka", raw)


def parse_partitions(spec: str | None) -> dict[str, int]:
    """``user-events=8,served=4`` → ``{"user-events": 8, "served": 4}`` (contract topics only)."""
    from ingest.contract import topic_spec

    out: dict[str, int] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, _, n = part.partition("=")
        topic_spec(name.strip())
        try:
            out[name.strip()] = int(n)
        except ValueError:
            raise ValueError(f"--partitions entry {part!r} must be TOPIC=COUNT, e.g. user-events=8") from None
    return out


def register(sub) -> None:
    p = sub.add_parser("topics", help="list (or --create) the contract topics with their partition counts",
                       description="Show each contract topic (user-events, item-events, served, rewards, "
                                   "dead-letters) with its partition count at the broker; --create creates "
                                   "the missing ones (existing topics are left as they are).")
    add_kafka_args(p)
    p.add_argument("--create", action="store_true", help="create the contract topics that do not exist")
    p.add_argument("--partitions", default=None, metavar="TOPIC=N[,...]",
                   help="partition counts for --create, e.g. user-events=8,served=4 "
                        "(default: the topics section of genrec.yaml, else built-in defaults)")
    p.set_defaults(func=run)


def run(args) -> int:
    from infra.config import load
    from ingest.contract import TOPICS
    from ingest.topics import TopicsConfig, ensure_topics, existing_topics, partition_count

    kafka = kafka_from_args(args)
    if args.create:
        base = load().get("topics") or TopicsConfig()
        overrides = parse_partitions(args.partitions)
        cfg = TopicsConfig(partitions={**base.partitions, **overrides}, replication=base.replication)
        counts = ensure_topics(kafka, cfg)
    else:
        have = existing_topics(kafka)
        counts = {t: partition_count(kafka, kafka.topic(t)) if kafka.topic(t) in have else 0 for t in TOPICS}
    print(f"broker {kafka.bootstrap}" + (f", namespace {kafka.namespace!r}" if kafka.namespace else ""))
    for t in TOPICS:
        n = counts.get(t, 0)
        print(f"  {kafka.topic(t):<40} {n if n else 'missing'}" + (" partitions" if n else ""))
    return 0
