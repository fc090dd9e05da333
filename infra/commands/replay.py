"""``genrec replay``: stream a data set into Kafka in event-time order at a chosen rate."""

from __future__ import annotations

from infra.commands.topics import add_kafka_args, kafka_from_args


def register(sub) -> None:
    p = sub.add_parser("replay", help="stream a data set (synthetic world, MovieLens, a file) into Kafka",
                       description="Send a data set's catalog (item-events) and user events to their "
                                   "contract topics in event-time order, at --rate events/s (token bucket; "
                                   "0 = as fast as possible), with a progress bar. Creates missing topics.")
    add_kafka_args(p)
    p.add_argument("--source", default="synthetic",
                   help="synthetic | movielens | a file (CSV/TSV user,item,timestamp[,title] or SASRec text)")
    p.add_argument("--path", default=None, help="MovieLens-100K folder (default ../shared/data/ml-100k) or file")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (default 0: as fast as possible)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many user events")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic world")
    p.add_argument("--small", action="store_true", help="the small synthetic world (~25k events)")
    p.add_argument("--no-items", action="store_true", help="do not send the catalog (item-events)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def load_source(source: str, path: str | None, seed: int = 0, small: bool = False):
    """The :class:`ingest.datasets.Dataset` a ``--source`` names."""
    from ingest.datasets import load_dataset

    if source == "synthetic":
        from ingest.synthetic import SyntheticWorld, WorldConfig

        return SyntheticWorld(WorldConfig.small(seed) if small else WorldConfig(seed=seed)).dataset()
    if source in ("movielens", "ml100k"):
        return load_dataset("ml100k", **({"path": path} if path else {}))
    return load_dataset(path or source)


def run(args) -> int:
    from ingest.producer import EventProducer
    from ingest.replay import ReplayConfig, replay_dataset
    from ingest.topics import ensure_topics

    cfg = ReplayConfig(rate=args.rate, limit=args.limit, include_items=not args.no_items,
                       progress=not args.no_progress)
    kafka = kafka_from_args(args)
    ds = load_source(args.source, args.path, args.seed, args.small)
    print(f"data set {ds.name}: {len(ds.user_events)} user events, {len(ds.item_events)} item events")
    counts = ensure_topics(kafka)
    with EventProducer(kafka) as prod:
        stats = replay_dataset(ds, prod, cfg)
    print(f"sent {stats.user_events} user events and {stats.item_events} item events in {stats.elapsed_s:.1f} s "
          f"({stats.events_per_s:,.0f} events/s) to {kafka.bootstrap}; partitions: "
          + ", ".join(f"{kafka.topic(t)}={n}" for t, n in counts.items()))
    return 0
