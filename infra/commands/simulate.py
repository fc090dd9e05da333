"""``genrec simulate``: closed-loop traffic from the synthetic world's users against a running genrec app.

The engine is :mod:`serving.simulator` (open-loop Poisson arrivals over ``httpx``); this module parses
flags, builds the world (the ``world`` section of genrec.yaml, or ``--small`` as ``genrec replay``
does), prints a progress line and the summary, and writes the client logs ``genrec audit`` reads.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Simulated users of the synthetic world request sessions from a running genrec app (POST /v1/recommend)
and answer each one with the events the world's user model produces (clicks, watches, likes, skips, ...,
each with the session's request_id and the item's position), sent back through POST /v1/events (what a
real client does; --events kafka produces them to user-events instead). The reward joiners
(`genrec rewards`) then join them with the served records into one reward per session.

Arrivals are an open-loop Poisson process at --rate per second for --duration seconds; each is one of
--users users drawn by the world's activity levels. At most --concurrency sessions (a request, then the
post of its events) are in flight: an arrival beyond that is skipped and counted, never delayed. Latency is measured from the scheduled arrival.

The app must serve this world's catalog and users: e.g. `genrec replay --source synthetic` (same --small
and seed) into the app's Kafka before `genrec serve`. Event times are the simulator's wall clock at the
answer, the clock of the served records: a remote app's clock must agree within rewards.allowed_lateness_s.

Exit status: 0 when at least one request was answered 200, 1 when none was, 2 on bad arguments or an
unreachable URL."""

EXAMPLES = """\
examples:
  genrec simulate --url http://127.0.0.1:8000 --users 200 --rate 5 --duration 60
  genrec simulate --url http://127.0.0.1:8000 --rate 20 --duration 300 --json > run.json
  genrec simulate --url http://127.0.0.1:8000 --answered answered.txt --acked acked.txt && \\
      genrec audit --answered answered.txt --acked acked.txt"""


def register(sub) -> None:
    from infra.commands.topics import add_kafka_args

    p = sub.add_parser("simulate", help="closed-loop simulated users against a running app over HTTP: "
                                        "sessions requested, answered with events; summary per arm",
                       description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="base URL of the genrec app (what `genrec serve` printed), "
                                                "e.g. http://127.0.0.1:8000")
    p.add_argument("--users", type=int, default=100, help="simulated users, drawn from the world (default 100)")
    p.add_argument("--rate", type=float, default=5.0, help="mean requests a second, Poisson arrivals (default 5)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals (default 30)")
    p.add_argument("--k", type=int, default=10, help="items per requested session (default 10)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="sessions in flight at most; arrivals beyond it are skipped (default 64)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")
    p.add_argument("--events", choices=("http", "kafka", "none"), default="http",
                   help="where the users' events go: http = POST /v1/events of the same app (default, what a "
                        "client does); kafka = produced to user-events (needs --bootstrap); none = not sent")
    add_kafka_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the arrivals and user draws (default 0)")
    p.add_argument("--world-seed", type=int, default=None, help="seed of the synthetic world (default: world.seed "
                                                               "of genrec.yaml)")
    p.add_argument("--small", action="store_true", help="the small synthetic world (as `genrec replay --small`)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--answered", default=None, metavar="FILE",
                   help="write the request ids answered 200, one per line (for `genrec audit --answered`)")
    p.add_argument("--acked", default=None, metavar="FILE",
                   help="write the event ids the ingestion path acknowledged (for `genrec audit --acked`)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress line on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=run)


def world_from_args(args):
    """The :class:`ingest.synthetic.SyntheticWorld` of ``--small`` / ``--world-seed`` / genrec.yaml ``world``."""
    from dataclasses import replace

    from infra.config import load
    from ingest.synthetic import SyntheticWorld, WorldConfig

    if args.small:
        cfg = WorldConfig.small(args.world_seed or 0)
    else:
        cfg = load(only=("world",))["world"]
        if args.world_seed is not None:
            cfg = replace(cfg, seed=args.world_seed)
    return SyntheticWorld(cfg)


def config_from_args(args):
    """The :class:`serving.simulator.SimulatorConfig` of the flags (validated: a bad value raises ValueError)."""
    from serving.simulator import SimulatorConfig

    kafka = None
    if args.events == "kafka":
        from infra.commands.topics import kafka_from_args

        kafka = kafka_from_args(args)
    return SimulatorConfig(url=args.url, users=args.users, rate=args.rate, duration_s=args.duration, k=args.k,
                           concurrency=args.concurrency, timeout_s=args.timeout, events=args.events, kafka=kafka,
                           seed=args.seed, keep_sessions=bool(args.answered or args.acked))


def run(args) -> int:
    from serving.simulator import run_simulation

    cfg = config_from_args(args)        # before the world is built: bad flags fail at once
    world = world_from_args(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if not args.json:
        print(f"simulating {cfg.users} users of a world of {len(world.user_ids):,} users and "
              f"{len(world.item_ids):,} items against {cfg.base_url}: {cfg.rate:g} requests/s for "
              f"{cfg.duration_s:g} s, k={cfg.k}, events via {cfg.events}", flush=True)
    summary = run_simulation(cfg, world, progress=progress)
    for path, ids in ((args.answered, summary.answered_request_ids), (args.acked, summary.acked_event_ids)):
        if path:
            with open(path, "w") as f:
                f.writelines(f"{i}\n" for i in ids())
    print(summary.to_json() if args.json else "\n".join(summary.lines()))
    if not summary.ok:
        print("genrec simulate: no request was answered 200 (see the status counts and errors above)",
              file=sys.stderr)
        return 1
    return 0
